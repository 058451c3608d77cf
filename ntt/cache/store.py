"""The candidate cache's store: bank-independent work per image, on disk, keyed by everything it depends on.

An entry is one safetensors file (arrays + a JSON header; never a pickle) named by its key, the sha256 of a
canonical JSON of what the work depends on: the image's bytes (its content, not its path), the models and the
fingerprints of their weights, the input sizes and the prompt settings. The key is also stored in the entry,
so a renamed or foreign file is a miss, never a wrong reuse, and so is a checksum of its arrays, so a flipped
byte is a miss, never a silent change. An unusable entry (truncated, corrupt, foreign, of another format) is a
miss that is removed with one warning. Entries are written atomically (``AtomicWriter``: a killed writer leaves
only a temp file, never an entry), and the least recently used ones are evicted past the size limit.

Several processes may share one store: any entry may vanish at any moment (another process evicted it), so
every file operation treats a vanished entry as a miss, never as an error.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ntt.io.atomic import file_sha256, write_bytes_atomic

log = logging.getLogger(__name__)

FORMAT = "ntt-candidates-2"  # 2: a checksum of the arrays in every entry
DEFAULT_LIMIT_MB = 4096
SUFFIX = ".safetensors"


def cache_root() -> Path:
    """``$NTT_CACHE_DIR/candidates`` (default ``~/.cache/ntt/candidates``), beside the checkpoints."""
    root = os.environ.get("NTT_CACHE_DIR") or Path.home() / ".cache" / "ntt"
    return Path(root) / "candidates"


def entry_key(**parts: Any) -> str:
    """The key of an entry: sha256 of the canonical JSON of ``parts`` (image digest, models, sizes, prompts)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def image_digest(path: str | Path) -> str:
    """sha256 of an image file's bytes: the same picture under another name is the same entry."""
    return file_sha256(path)


def _env_limit_mb() -> float:
    """``$NTT_CACHE_LIMIT_MB``, else ``DEFAULT_LIMIT_MB``; a value that is not a finite number >= 0 is an error
    that names the variable."""
    text = os.environ.get("NTT_CACHE_LIMIT_MB", "").strip()
    if not text:
        return DEFAULT_LIMIT_MB
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"NTT_CACHE_LIMIT_MB must be a number of megabytes >= 0, got {text!r}")
    return value


def arrays_checksum(arrays: dict[str, np.ndarray]) -> str:
    """sha256 (hex) over each array's name, dtype, shape and bytes, in name order.

    The bytes' length follows from the dtype and shape, so the concatenation is unambiguous."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(json.dumps([name, array.dtype.str, list(array.shape)]).encode())
        digest.update(array.reshape(-1).view(np.uint8))
    return digest.hexdigest()


class CandidateStore:
    """Entries of ``{name: array}`` under ``root``, at most ``limit_mb`` megabytes in all (LRU eviction).

    Args:
        root: the folder (default ``cache_root()``).
        limit_mb: the size limit (default ``$NTT_CACHE_LIMIT_MB``, else 4096).
    """

    def __init__(self, root: str | Path | None = None, limit_mb: float | None = None):
        self.root = Path(root) if root is not None else cache_root()
        self.limit_bytes = int(1e6 * (limit_mb if limit_mb is not None else _env_limit_mb()))

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}{SUFFIX}"

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        """The entry's arrays (writable, as they were put), or None (a miss).

        An entry that is missing or vanishes meanwhile is a plain miss. A truncated, corrupt, foreign or
        older-format entry is removed, with one warning, and is a miss."""
        path = self.path(key)
        try:
            data = path.read_bytes()  # one open: another process may remove or replace the file at any moment
        except FileNotFoundError:
            return None
        except OSError as err:
            return self._discard(path, f"unreadable: {err.strerror or err}")
        try:
            arrays = _decode(data, key)
        except Exception as err:  # noqa: BLE001 - any unusable entry is rebuilt, never trusted
            return self._discard(path, err)
        _touch(path)
        return arrays

    def put(self, key: str, arrays: dict[str, np.ndarray]) -> Path:
        """Store an entry (atomically), then evict the least recently used entries past the limit.

        Raises:
            OSError: the entry cannot be written (e.g. the disk is full); nothing else, whatever other
                processes do to the store meanwhile.
        """
        path = self._write(self.path(key), _encode(key, arrays))
        self.evict()
        return path

    def remove(self, key: str) -> bool:
        """Remove an entry (e.g. one its reader could not use); False when it was not there."""
        return _unlink(self.path(key))

    def entries(self) -> list[Path]:
        """The entry files (a writer's temp file is hidden and ends in .tmp: never an entry)."""
        return [
            Path(item.path)
            for shard in _scan(self.root)
            if len(shard.name) == 2
            for item in _scan(shard.path)
            if item.name.endswith(SUFFIX) and not item.name.startswith(".")
        ]

    def info(self) -> dict[str, Any]:
        """``root``, ``entries``, ``bytes`` and ``limit_bytes``."""
        found = self._stats()
        used = sum(stat.st_size for _, stat in found)
        return {"root": str(self.root), "entries": len(found), "bytes": used, "limit_bytes": self.limit_bytes}

    def evict(self) -> int:
        """Remove least recently used entries until the store fits its limit; returns how many were removed."""
        found = sorted(self._stats(), key=lambda item: item[1].st_mtime)
        used = sum(stat.st_size for _, stat in found)
        removed = 0
        for path, stat in found:
            if used <= self.limit_bytes:
                break
            removed += _unlink(path)
            used -= stat.st_size  # gone either way: removed here or by another process
        return removed

    def clear(self) -> dict[str, int]:
        """Remove every entry; returns how many and how many bytes were freed (by this call)."""
        freed = [stat.st_size for path, stat in self._stats() if _unlink(path)]
        return {"entries": len(freed), "bytes": sum(freed)}

    def _stats(self) -> list[tuple[Path, os.stat_result]]:
        """Each entry with its ``stat``; one removed meanwhile (by another process) is left out."""
        found = []
        for path in self.entries():
            try:
                found.append((path, path.stat()))
            except OSError:
                continue
        return found

    def _discard(self, path: Path, reason) -> None:
        log.warning("candidate cache: ignoring and removing %s (%s)", path, reason)
        _unlink(path)
        return None

    @staticmethod
    def _write(path: Path, data: bytes) -> Path:
        """Write atomically; once more when a folder or file vanished meanwhile (a clearing or evicting process
        removed it between the writer's steps)."""
        try:
            return write_bytes_atomic(path, data)
        except OSError as err:
            if err.errno != errno.ENOENT:
                raise
            return write_bytes_atomic(path, data)


def _encode(key: str, arrays: dict[str, np.ndarray]) -> bytes:
    """An entry's bytes: the arrays, with the format, the key and the arrays' checksum in the header."""
    from safetensors.numpy import save

    arrays = {name: np.ascontiguousarray(value) for name, value in arrays.items()}
    return save(arrays, metadata={"format": FORMAT, "key": key, "sha256": arrays_checksum(arrays)})


def _decode(data: bytes, key: str) -> dict[str, np.ndarray]:
    """The arrays of an entry's bytes, verified.

    Raises:
        ValueError: a truncated or malformed file, another format, another key, or arrays that do not match
            their checksum.
    """
    from safetensors.numpy import load

    try:
        loaded = load(data)
    except Exception as err:  # noqa: BLE001 - safetensors' own error type
        raise ValueError(f"truncated or malformed: {err}") from err
    arrays = {name: array.copy() for name, array in loaded.items()}  # copies: writable, like a fresh result
    meta = _metadata(data)
    if meta.get("format") != FORMAT:
        raise ValueError(f"format {meta.get('format')!r}, not {FORMAT!r}: written by another (older?) ntt")
    if meta.get("key") != key:
        raise ValueError("not this entry (another key: a renamed, foreign or corrupt file)")
    if meta.get("sha256") != arrays_checksum(arrays):
        raise ValueError("corrupt: its arrays do not match their checksum")
    return arrays


def _metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's bytes (already validated by ``load``)."""
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + size]).get("__metadata__") or {}


def _touch(path: Path) -> None:
    """Mark an entry recently used (evicted last)."""
    try:
        os.utime(path)
    except OSError:  # evicted meanwhile by another process, or a read-only store: the arrays are verified anyway
        pass


def _unlink(path: Path) -> bool:
    """Remove a file; False when it was already gone (or cannot be removed, e.g. a read-only store)."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as err:
        log.debug("candidate cache: cannot remove %s (%s)", path, err)
        return False
    return True


def _scan(folder: str | Path) -> list[os.DirEntry]:
    """A folder's items; none when it is missing, vanished meanwhile, or unreadable."""
    try:
        with os.scandir(folder) as items:
            return list(items)
    except OSError:
        return []
