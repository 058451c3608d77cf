"""Checks on the files a command will write, made before any work starts."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path


class OutputPathError(ValueError):
    """An output path cannot be written as asked; the message says why."""


def check_output(output: str | Path, inputs: Iterable[str | Path | None] = (), what: str = "output") -> Path:
    """Refuse an output that is one of the command's inputs, is a directory, a pipe or a device, a symlink loop,
    or lies under a file. (An output that is a link to a file is written through: the file is replaced, the
    link stays.)

    Args:
        inputs: the files the command reads (None entries are ignored); writing over one would destroy it.
    Raises:
        OutputPathError: with the reason, before anything is computed or written.
    """
    out = Path(output)
    if not str(output).strip():
        raise OutputPathError(f"{what}: the path is empty; give a file name")
    _check_kind(out, what)
    target = _real(out)
    for src in inputs:
        if src is not None and _same_file(out, target, Path(src)):
            raise OutputPathError(f"{what} {out} is also an input of this command: refusing to overwrite it")
    for parent in Path(target).absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputPathError(f"{what} {out} cannot be created: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise OutputPathError(f"{what} {out} cannot be created: {parent} is not writable")
            break
    return out


def _check_kind(out: Path, what: str) -> None:
    """An existing output must be a regular file (or a link to one): a folder, a pipe or a device would be
    replaced by a plain file (as root, ``-o /dev/null`` would replace the system's ``/dev/null``)."""
    try:
        mode = out.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return  # new (or a link to a file still to be made); under a file: said below
    except OSError as err:
        reason = "a symlink loop" if "symbolic links" in str(err) else err.strerror
        raise OutputPathError(f"{what} {out} cannot be written: {reason}") from None
    if stat.S_ISDIR(mode):
        raise OutputPathError(f"{what} {out} is a directory: give a file name")
    if not stat.S_ISREG(mode):
        raise OutputPathError(f"{what} {out} is not a regular file (a pipe, socket or device): refusing to replace it")


def _real(path: Path) -> str:
    return os.path.realpath(path)  # never raises, not even on a symlink loop (unlike Path.resolve)


def _same_file(out: Path, out_real: str, src: Path) -> bool:
    try:
        if out.exists() and src.exists():
            return os.path.samefile(out, src)
    except OSError:
        pass
    return out_real == _real(src)
