"""Atomic file writes: every file ntt writes (banks, results, sidecars, metrics) goes through ``AtomicWriter``.

The data goes to a temp file beside the target, is flushed to disk, and is renamed over the target, so a
crash or a full disk leaves either the old file or the new one, never half. The new file gets the
permissions a plain ``open()`` would give (the target's own mode when it exists, else 0666 less the umask),
so a background worker of another user can read what was written. Temp files left by a killed run (their
process is gone) are removed by the next write of the same target.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import time
import uuid
from pathlib import Path

log = logging.getLogger(__name__)
_LEGACY_STALE_S = 3600  # temp files of older ntt versions carry no pid: removed once an hour old


class AtomicWriter:
    """A binary file written to a temp file and renamed over ``path`` by ``commit`` (or on a clean ``with`` exit).

    ``sha256`` is the digest of everything written so far (results and their sidecar are paired by it).

    Raises:
        OSError: the folder cannot be created or written (e.g. the disk is full); the message names the
            target and says the previous file is intact. ``errno`` is kept.
    """

    def __init__(self, path: str | Path):
        path = Path(path)
        # A link is written through: its file is replaced and the link stays (renaming over it would replace
        # the link itself with a file and leave the file it names stale).
        self.path = Path(os.path.realpath(path)) if path.is_symlink() else path
        _guarded(self.path, lambda: self.path.parent.mkdir(parents=True, exist_ok=True))
        remove_stale_temps(self.path)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        self._fd = _guarded(self.path, lambda: os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        self._digest = hashlib.sha256()

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def write(self, data: bytes) -> None:
        self._digest.update(data)
        view = memoryview(data)
        while view:
            written = self._write_chunk(view)
            view = view[written:]

    def _write_chunk(self, view: memoryview) -> int:
        try:
            return os.write(self._fd, view)
        except OSError as err:
            self.abort()
            raise _explained(self.path, err) from err

    def flush(self) -> None:
        """Make what was written durable under the temp name (the target is untouched): after this, ``commit``
        needs no more disk space, so several files can be made ready first and then renamed together."""
        try:
            os.fsync(self._fd)
        except OSError as err:
            self.abort()
            raise _explained(self.path, err) from err

    def commit(self) -> Path:
        """Flush, fsync and rename over the target (keeping the target's permissions when it exists)."""
        try:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            if self.path.exists():
                os.chmod(self.tmp, self.path.stat().st_mode & 0o7777)
            os.replace(self.tmp, self.path)
        except OSError as err:
            self.abort()
            raise _explained(self.path, err) from err
        return self.path

    def abort(self) -> None:
        """Drop the temp file; the target is left as it was."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self.tmp.exists():
            self.tmp.unlink()

    def __enter__(self) -> AtomicWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so a crash leaves either the old file or the new one, never half."""
    with AtomicWriter(path) as out:
        out.write(data)
    return Path(path)


def file_sha256(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def remove_stale_temps(path: Path) -> None:
    """Remove temp files of ``path`` whose writing process no longer exists (a killed run's leftovers)."""
    if not path.parent.is_dir():
        return
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        middle = tmp.name[len(path.name) + 2 : -len(".tmp")]
        pid = middle.split(".")[0]
        if pid.isdigit() and "." in middle:
            stale = not _alive(int(pid))
        else:  # an older ntt's random temp name
            stale = time.time() - tmp.stat().st_mtime > _LEGACY_STALE_S
        if stale:
            log.info("removing %s, left by a run that was killed", tmp)
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _guarded(path: Path, action):
    try:
        return action()
    except OSError as err:
        raise _explained(path, err) from err


def _explained(path: Path, err: OSError) -> OSError:
    reason = "the disk is full" if err.errno == errno.ENOSPC else (err.strerror or str(err))
    return OSError(err.errno, f"cannot write {path}: {reason} (the previous file, if any, is intact)")
