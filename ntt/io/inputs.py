"""Checks on the files a command reads, made before they are opened: a folder, a pipe or a device given where
a file is expected must be named as such, never read (a pipe blocks the reader forever, ``/dev/zero`` never
ends), and a broken link or a symlink loop must not be reported as a missing file."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


class InputFileError(ValueError):
    """A path given as an input file is not a readable regular file; ``str(err)`` names it and says why."""


def regular_file(path: str | Path, what: str = "file") -> Path:
    """``path`` as a ``Path`` when it is an existing regular file (links followed), else ``InputFileError``.

    Args:
        what: what the file is for, in the message ("bank file", "checkpoint", ...).
    Raises:
        InputFileError: missing, a broken link, a symlink loop, a folder, a pipe, socket or device, or a
            name no file system accepts; FileNotFoundError (also an OSError) for a plain missing file.
    """
    text = str(path)
    local = Path(text)
    try:
        info = local.stat()
    except OSError as err:
        reason = missing_reason(local, err)
        if reason == "file not found":
            raise FileNotFoundError(errno.ENOENT, f"{local}: {what} not found") from None
        raise InputFileError(f"{local}: {what}: {reason}") from None
    except ValueError as err:  # a NUL byte in the name
        raise InputFileError(f"{text!r}: not a valid path ({err})") from None
    if stat.S_ISDIR(info.st_mode):
        raise InputFileError(f"{local}: is a directory, not a {what}")
    if not stat.S_ISREG(info.st_mode):
        raise InputFileError(f"{local}: not a regular file (a pipe, socket or device), not read as a {what}")
    return local


def missing_reason(path: Path, err: OSError) -> str:
    """Why ``stat`` failed on ``path``, as a user would say it."""
    if err.errno == errno.ELOOP:
        return "symlink loop (the link leads back to itself)"
    if err.errno == errno.ENOENT and path.is_symlink():
        return f"broken symlink (it points to {os.readlink(path)}, which does not exist)"
    if err.errno == errno.ENOENT:
        return "file not found"
    if err.errno == errno.ENOTDIR:
        return "file not found (a part of the path is a file, not a folder)"
    if err.errno == errno.EACCES:
        return "permission denied"
    if err.errno == errno.ENAMETOOLONG:
        return "file name too long"
    return f"cannot be read ({err.strerror or err})"
