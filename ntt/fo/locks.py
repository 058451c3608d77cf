"""Serialising dataset-schema changes between processes.

FiftyOne saves a dataset's field list as a whole (``$set`` of the list), so two processes adding fields to
one dataset at once can drop each other's field from the schema. Every schema change ntt makes (declaring
an output field, recording its bank, registering a bank run) runs under this lock after reloading the
dataset, so concurrent ntt runs on one machine keep every field. (Processes on different machines are not
covered: use different datasets, or declare the fields first.)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from pathlib import Path


def _lock_path(dataset_name: str) -> Path:
    root = Path(os.environ.get("NTT_BANK_DIR") or Path.home() / ".cache" / "ntt" / "banks") / ".locks"
    root.mkdir(parents=True, exist_ok=True)
    return root / (re.sub(r"[^A-Za-z0-9_.-]", "_", dataset_name) + ".lock")


@contextlib.contextmanager
def schema_lock(dataset):
    """Hold an exclusive per-dataset file lock and reload the dataset, so the schema is fresh inside."""
    with open(_lock_path(dataset.name), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            dataset.reload()
            yield dataset
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
