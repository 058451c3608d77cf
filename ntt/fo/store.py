"""Where bank files live, so that no two banks can ever share one.

Each dataset has its own folder, named by the dataset's database id (two names that look alike, or a renamed
dataset, never share or lose a folder); each bank version is a new uuid-named file in it, recorded in the bank's
run. A file is removed only once no bank record anywhere (a cloned dataset copies its runs), nor an unfinished
sharded run, points at it. Records that travel to other machines name a file relative to the bank root
(``bank_file_key``), so a machine that mounts the bank folder at another path still finds it (``locate_bank_file``).
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from pathlib import Path

from filelock import FileLock

SUFFIX = ".safetensors"
_DATASET_ID = re.compile(r"[0-9a-f]{24}")  # a dataset's folder: its database id (an ObjectId in hex)


def bank_root() -> Path:
    """``$NTT_BANK_DIR``, default ``~/.cache/ntt/banks``."""
    return Path(os.environ.get("NTT_BANK_DIR") or Path.home() / ".cache" / "ntt" / "banks")


def dataset_of(coll):
    """The ``fo.Dataset`` of a dataset or view: the one that holds its runs (banks), schema and samples.

    This, ``dataset_key`` and ``refresh_run`` are the only places ntt reads private FiftyOne attributes. FiftyOne
    1.22 has no public accessor for a view's dataset: views expose only ``dataset_name``, and ``fo.load_dataset(name)``
    writes the dataset's last-loaded time on every call (forms would do that on every keystroke) and returns
    another instance when FiftyOne's singleton cache is off.
    """
    return coll._root_dataset


def dataset_key(coll) -> str:
    """The id of the collection's dataset: unique, and unchanged by renames.

    FiftyOne 1.22 has no public accessor for it (its own operators read ``_doc.id`` as well).
    """
    return str(dataset_of(coll)._doc.id)


def bank_dir(coll) -> Path:
    """The folder of the bank files (and the schema lock) of the collection's dataset."""
    return bank_root() / dataset_key(coll)


def new_bank_path(coll) -> Path:
    """A file name no other bank has: a bank version is never written over another one."""
    return bank_dir(coll) / f"{uuid.uuid4().hex}{SUFFIX}"


def bank_file_key(path: str | Path) -> str:
    """How a record names a bank file so that any machine finds it: its path relative to the bank root, as a
    posix string (``<dataset id>/<uuid>.safetensors``); a file outside the root by its absolute path."""
    path = Path(path).absolute()
    try:
        return path.resolve().relative_to(bank_root().resolve()).as_posix()
    except ValueError:
        return str(path)


def locate_bank_file(key: str | Path) -> Path:
    """The bank file a key (``bank_file_key``, or a recorded absolute path) names on this machine.

    A relative key lies under this machine's bank root. An absolute path that exists is taken as is; one that
    does not, but ends in ``<dataset id>/<file>``, is looked for under this machine's root: the bank folder
    may be mounted at another path here (another ``NTT_BANK_DIR``) than where the file was written.
    """
    path = Path(key)
    if not path.is_absolute():
        return bank_root() / path
    if path.exists() or not _DATASET_ID.fullmatch(path.parent.name):
        return path
    return bank_root() / path.parent.name / path.name


def release(path: str | Path, records: int) -> bool:
    """Remove a bank file unless ``records`` records (bank runs, unfinished sharded runs) still point at it, and
    only if it lies under the bank root (a file elsewhere is the user's). Returns whether it was removed."""
    path = Path(path)
    if records or path.suffix != SUFFIX or not path.is_file():
        return False
    if not path.resolve().is_relative_to(bank_root().resolve()):
        return False
    path.unlink(missing_ok=True)
    return True


def refresh_run(dataset, key: str) -> None:
    """Make ``dataset``'s FiftyOne readers (``get_run_info``, ``load_run_results``, ``rename_run``...) see run
    ``key`` as the database holds it, after ntt updated the run's document directly (a conditional update,
    which FiftyOne has no call for). ``Dataset.reload`` re-reads the run documents but keeps the cached results
    (FiftyOne 1.22 has no public way to drop one)."""
    dataset.reload()
    dataset._run_cache.pop(key, None)


@contextlib.contextmanager
def schema_lock(dataset):
    """Hold an exclusive per-dataset file lock and reload the dataset, so its schema is fresh inside.

    FiftyOne saves a dataset's field list as a whole (``$set`` of the list), so two processes adding
    fields to one dataset at once can drop each other's field. Every schema change ntt makes (declaring
    an output field, recording its bank, registering, renaming or deleting a bank run) runs under this
    lock, so concurrent ntt runs on one machine keep every field (processes on different machines are not
    covered). ``filelock`` works on Windows too.
    """
    folder = bank_dir(dataset)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / ".schema.lock")):
        dataset.reload()
        yield dataset
