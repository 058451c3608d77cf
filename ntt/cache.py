"""The candidate cache's store: bank-independent work per image, on disk, keyed by everything it depends on.

An entry is one safetensors file (arrays + a JSON header; never a pickle) named by its key, the sha256 of a
canonical JSON of what the work depends on: the image's bytes (its content, not its path), the models and the
fingerprints of their weights, the input sizes and the prompt settings. The key is also stored in the entry,
so a renamed or foreign file is a miss, never a wrong reuse; an unreadable entry is a miss that is removed
with a warning. Entries are written atomically (``AtomicWriter``: a killed writer leaves only a temp file,
never an entry), and the least recently used ones are evicted past the size limit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import file_sha256, write_bytes_atomic

log = logging.getLogger(__name__)

FORMAT = "ntt-candidates-1"
DEFAULT_LIMIT_MB = 4096


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


class CandidateStore:
    """Entries of ``{name: array}`` under ``root``, at most ``limit_mb`` megabytes in all (LRU eviction).

    Args:
        root: the folder (default ``cache_root()``).
        limit_mb: the size limit (default ``$NTT_CACHE_LIMIT_MB``, else 4096).
    """

    def __init__(self, root: str | Path | None = None, limit_mb: float | None = None):
        self.root = Path(root) if root is not None else cache_root()
        env_limit = os.environ.get("NTT_CACHE_LIMIT_MB")
        self.limit_bytes = int(1e6 * (limit_mb if limit_mb is not None else float(env_limit or DEFAULT_LIMIT_MB)))

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        """The entry's arrays, or None (a miss). A truncated, foreign or unreadable entry is removed, with a
        warning, and is a miss."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            arrays, meta = _read(path)
            if meta.get("format") != FORMAT or meta.get("key") != key:
                raise ValueError("not this entry (another key or format)")
        except Exception as err:  # noqa: BLE001 - any unusable entry is rebuilt, never trusted
            log.warning("candidate cache: ignoring and removing %s (%s)", path, err)
            path.unlink(missing_ok=True)
            return None
        os.utime(path)  # recently used: evicted last
        return arrays

    def put(self, key: str, arrays: dict[str, np.ndarray]) -> Path:
        """Store an entry (atomically), then evict the least recently used entries past the limit."""
        from safetensors.numpy import save

        data = save({k: np.ascontiguousarray(v) for k, v in arrays.items()}, metadata={"format": FORMAT, "key": key})
        path = write_bytes_atomic(self.path(key), data)
        self.evict()
        return path

    def entries(self) -> list[Path]:
        return list(self.root.glob("??/*.safetensors"))  # a writer's temp file ends in .tmp: never an entry

    def info(self) -> dict[str, Any]:
        """``root``, ``entries``, ``bytes`` and ``limit_bytes``."""
        files = self.entries()
        used = sum(p.stat().st_size for p in files)
        return {"root": str(self.root), "entries": len(files), "bytes": used, "limit_bytes": self.limit_bytes}

    def evict(self) -> int:
        """Remove least recently used entries until the store fits its limit; returns how many were removed."""
        files = sorted(self.entries(), key=lambda p: p.stat().st_mtime)
        used = sum(p.stat().st_size for p in files)
        removed = 0
        while files and used > self.limit_bytes:
            oldest = files.pop(0)
            used -= oldest.stat().st_size
            oldest.unlink(missing_ok=True)
            removed += 1
        return removed

    def clear(self) -> dict[str, int]:
        """Remove every entry; returns how many and how many bytes were freed."""
        files = self.entries()
        freed = sum(p.stat().st_size for p in files)
        for path in files:
            path.unlink(missing_ok=True)
        return {"entries": len(files), "bytes": freed}


def _read(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
        return {name: f.get_tensor(name) for name in f.keys()}, meta
