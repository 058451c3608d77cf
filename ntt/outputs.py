"""Checks on the files a command will write, made before any work starts."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


class OutputPathError(ValueError):
    """An output path cannot be written as asked; the message says why."""


def check_output(output: str | Path, inputs: Iterable[str | Path | None] = (), what: str = "output") -> Path:
    """Refuse an output that is one of the command's inputs, is a directory, or lies under a file.

    Args:
        inputs: the files the command reads (None entries are ignored); writing over one would destroy it.
    Raises:
        OutputPathError: with the reason, before anything is computed or written.
    """
    out = Path(output)
    for src in inputs:
        if src is not None and _same_file(out, Path(src)):
            raise OutputPathError(f"{what} {out} is also an input of this command: refusing to overwrite it")
    if out.is_dir():
        raise OutputPathError(f"{what} {out} is a directory: give a file name")
    for parent in out.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputPathError(f"{what} {out} cannot be created: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise OutputPathError(f"{what} {out} cannot be created: {parent} is not writable")
            break
    return out


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()
