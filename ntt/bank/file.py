"""Changing a bank file in place without losing another command's change.

``ntt bank add`` reads a bank, spends minutes encoding references, then writes the bank back: two such commands
started together would each write the bank they read plus their own shots, and the last one to finish would erase
the other's. ``update_bank_file`` serialises the read-change-write: under an exclusive lock on a lock file beside
the bank it reads the bank as it is now, applies the change to that, and writes the result atomically.

The lock is ``fcntl.flock`` on ``.<bank file name>.lock`` in the bank's folder. The kernel releases it when its
holder exits, however it exits (even ``kill -9``), so a lock file left behind is harmless: only a held lock
blocks, never the file's existence. The lock file is never removed (removing it would let two writers lock two
different files).

A change computed from the bank as it was read (thresholds calibrated on its shots) must not be applied to a bank
that changed meanwhile: pass the ``file_digest`` of the bank that was read, and the update is refused if the file
is no longer that one.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ntt.bank.memory import BankError, MemoryBank
from ntt.io.atomic import file_sha256

try:
    import fcntl
except ImportError:  # not a POSIX system: no lock (a lost update stays possible there)
    fcntl = None

LOCK_WAIT_S = 120.0  # a lock is held only while a bank is read, changed and written: seconds at most
_POLL_S = 0.05


def update_bank_file(
    path: str | Path,
    change: Callable[[MemoryBank], MemoryBank],
    read_digest: str | None = None,
    output: str | Path | None = None,
    wait_s: float = LOCK_WAIT_S,
) -> MemoryBank:
    """Apply ``change`` to the bank file at ``path`` as it is now and write the result, one writer at a time.

    Args:
        path: the bank file to read (and, without ``output``, to write).
        change: the bank as it is now -> the bank to write. Called under the lock: keep it quick (do slow work,
            such as encoding references, before). An exception it raises leaves the file untouched.
        read_digest: ``MemoryBank.file_digest`` of the bank the change was computed from; when given and the
            file is no longer that one, nothing is written.
        output: write the result here instead (``-o``); the lock taken is the output's.
        wait_s: how long to wait for another command's lock before giving up.
    Returns:
        the bank written (its ``file_digest`` is the new file's).
    Raises:
        BankError: the bank changed since it was read (with ``read_digest``), another command held the lock for
            more than ``wait_s``, or the bank file is invalid.
        OSError: the lock file or the bank cannot be written.
    """
    path = Path(path)
    target = Path(output) if output is not None else path
    with bank_lock(target, wait_s):
        current = MemoryBank.load(path)
        if read_digest is not None and current.file_digest != read_digest:
            raise BankError(
                f"{path}: the bank changed while this command ran (another command wrote it); nothing was written: "
                "run it again"
            )
        changed = change(current)
        changed.save(target)
    return changed


def file_digest(path: str | Path) -> str:
    """sha256 (hex) of a bank file's bytes, as ``MemoryBank.load`` records it in ``file_digest``."""
    return file_sha256(path)


def lock_path(path: str | Path) -> Path:
    """The lock file of a bank file: ``.<name>.lock`` in the same folder, links resolved (two names of one file
    share its lock)."""
    path = Path(os.path.realpath(path))
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def bank_lock(path: str | Path, wait_s: float = LOCK_WAIT_S) -> Iterator[Path]:
    """Hold the exclusive lock of the bank file ``path`` (its folder is created if missing).

    Raises:
        BankError: another process held it for more than ``wait_s`` seconds.
        OSError: the lock file cannot be created (e.g. a read-only folder).
    """
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        _acquire(fd, lock, wait_s)
        yield lock
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def _acquire(fd: int, lock: Path, wait_s: float) -> None:
    """Take the exclusive flock on ``fd``, polling (a blocking call could not give up after ``wait_s``)."""
    if fcntl is None:
        return
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise BankError(
                    f"another ntt command has been writing this bank for over {wait_s:.0f} s (it holds {lock}); "
                    "try again when it is done"
                ) from None
            time.sleep(_POLL_S)
