"""Named memory banks stored with a dataset: a FiftyOne custom run (config, classes, shot provenance)
plus the bank file on disk (``$NTT_BANK_DIR``, default ``~/.cache/ntt/banks/<dataset>/<name>.safetensors``)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from pathlib import Path
from typing import Any

from ..bank import MemoryBank
from ..config import NTTConfig, make_config
from ..references import build_bank as build_memory_bank
from .references import DEFAULT_TAG, NTTFiftyOneError, collect_references

RUN_TYPE = "ntt_bank"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def bank_dir(dataset_name: str) -> Path:
    """Folder of a dataset's bank files (``$NTT_BANK_DIR/<dataset>``, default ~/.cache/ntt/banks)."""
    root = Path(os.environ.get("NTT_BANK_DIR") or Path.home() / ".cache" / "ntt" / "banks")
    return root / re.sub(r"[^A-Za-z0-9_.-]", "_", dataset_name)


@contextlib.contextmanager
def schema_lock(dataset):
    """Hold an exclusive per-dataset file lock and reload the dataset, so its schema is fresh inside.

    FiftyOne saves a dataset's field list as a whole (``$set`` of the list), so two processes adding
    fields to one dataset at once can drop each other's field. Every schema change ntt makes (declaring
    an output field, recording its bank, registering a bank run) runs under this lock, so concurrent ntt
    runs on one machine keep every field (processes on different machines are not covered).
    """
    folder = bank_dir(dataset.name)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".schema.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            dataset.reload()
            yield dataset
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_bank_name(name: str) -> str:
    """Bank names are run keys: letters, digits and underscores (so a name can never escape its folder)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise NTTFiftyOneError(f"invalid bank name {name!r}: use letters, digits and underscores")
    return name


def list_banks(coll) -> list[str]:
    """Names of the banks stored with the collection's dataset."""
    return sorted(coll._dataset.list_runs(ntt_type=RUN_TYPE))


def _require(coll, name: str) -> None:
    if name not in list_banks(coll):
        known = ", ".join(list_banks(coll)) or "none"
        raise NTTFiftyOneError(f"no bank named {name!r} on dataset {coll._dataset.name!r} (banks: {known})")


def get_bank_info(coll, name: str) -> dict[str, Any]:
    """The stored description of a bank: classes, shots per class, encoder, label field, tag, file, time."""
    _require(coll, name)
    info = coll._dataset.get_run_info(name)
    data = {k: v for k, v in info.config.serialize().items() if k not in ("type", "method", "cls")}
    data["name"] = name
    data["timestamp"] = str(info.timestamp)
    return data


def load_bank(coll, name: str) -> MemoryBank:
    """Load the bank file of a named bank."""
    path = Path(get_bank_info(coll, name)["bank_path"])
    if not path.is_file():
        raise NTTFiftyOneError(f"bank {name!r}: its file {path} is missing; rebuild the bank")
    bank = MemoryBank.load(path)
    bank.info["name"] = name
    return bank


def build_bank(
    coll,
    name: str,
    label_field: str,
    tag: str = DEFAULT_TAG,
    preset: str = "paper",
    config: NTTConfig | dict | None = None,
    device: str | None = None,
    overwrite: bool = False,
    progress=None,
) -> MemoryBank:
    """Build a named bank from the reference instances of ``coll`` and store it with the dataset.

    Args:
        coll: a dataset or view; its reference samples/labels (see ``mark_references``) are the shots.
        name: the bank's name (a run key: letters, digits, underscores).
        label_field: the ``Detections`` field holding the reference instances (masks, or boxes only).
        preset / config / device: model settings: a preset name, then an ``NTTConfig`` (used as is) or a
            dict of per-section overrides such as ``{"model": {"dtype": "bf16"}}``.
        overwrite: replace an existing bank of that name.
        progress: optional callback ``(fraction, label)``.
    """
    check_bank_name(name)
    if name in list_banks(coll) and not overwrite:
        raise NTTFiftyOneError(f"a bank named {name!r} exists; pass overwrite=True to replace it")
    cfg = make_config(preset, config, device)
    refs = collect_references(coll, label_field, tag)
    bank = build_memory_bank(refs, cfg, progress=progress)
    _store(coll._dataset, name, bank, label_field, tag, cfg, overwrite=True)
    return bank


def add_references(coll, name: str, label_field: str | None = None, tag: str = DEFAULT_TAG, progress=None):
    """Add the reference instances of ``coll`` to an existing bank (the other shots are not recomputed;
    shots already in the bank are skipped). Returns the updated bank."""
    info = get_bank_info(coll, name)
    bank = load_bank(coll, name)
    cfg = NTTConfig.from_dict(info["config"])
    field = label_field or info["label_field"]
    refs = collect_references(coll, field, tag, class_ids=dict(zip(bank.class_names, bank.class_ids)))
    merged = bank.add(build_memory_bank(refs, cfg, progress=progress))
    _store(coll._dataset, name, merged, field, tag, cfg, overwrite=True)
    return merged


def rename_bank(coll, name: str, new_name: str) -> None:
    """Rename a bank (its file keeps its path)."""
    _require(coll, name)
    check_bank_name(new_name)
    if new_name in list_banks(coll):
        raise NTTFiftyOneError(f"a bank named {new_name!r} exists already")
    coll._dataset.rename_run(name, new_name)


def delete_bank(coll, name: str, delete_file: bool = True) -> None:
    """Delete a bank from the dataset and, by default, its file."""
    path = Path(get_bank_info(coll, name)["bank_path"])
    coll._dataset.delete_run(name)
    if delete_file and path.is_file() and path.parent == bank_dir(coll._dataset.name):
        path.unlink()


def _store(dataset, name: str, bank: MemoryBank, label_field: str, tag: str, cfg: NTTConfig, overwrite: bool):
    path = bank.save(bank_dir(dataset.name) / f"{name}.safetensors")
    config = dataset.init_run(
        ntt_type=RUN_TYPE,
        bank_path=str(path),
        label_field=label_field,
        tag=tag,
        classes=bank.class_names,
        class_ids=bank.class_ids,
        shots_per_class=bank.shots_per_class(),
        num_shots=len(bank.shots),
        encoder=bank.encoder,
        config=cfg.to_dict(),
    )
    with schema_lock(dataset):
        dataset.register_run(name, config, overwrite=overwrite)
        dataset.save_run_results(name, dataset.init_run_results(name, shots=bank.shots))
    bank.info["name"] = name
