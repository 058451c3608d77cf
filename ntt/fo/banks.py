"""Named memory banks stored with a dataset: a FiftyOne custom run (config, classes, shot provenance)
plus the bank file on disk (``$NTT_BANK_DIR/<dataset id>/<uuid>.safetensors``, see ``store``)."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..bank import BankError, MemoryBank
from ..bank_encoder import build_bank_steps as memory_bank_steps
from ..config import NTTConfig, get_config
from ..steps import Step, Steps, drive, signature_of
from ..types import Progress
from . import store
from .checks import check_device, check_weights, settings_here, shot_sample_ids
from .references import DEFAULT_TAG, NTTFiftyOneError, collect_references
from .store import bank_dir, dataset_of, schema_lock  # noqa: F401 - re-exported: a dataset's bank folder and lock

log = logging.getLogger(__name__)
RUN_TYPE = "ntt_bank"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_bank_name(name: str) -> str:
    """Bank names are run keys: letters, digits and underscores (so a name can never escape its folder)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise NTTFiftyOneError(f"invalid bank name {name!r}: use letters, digits and underscores")
    return name


def list_banks(coll) -> list[str]:
    """Names of the banks stored with the collection's dataset."""
    return sorted(coll.list_runs(ntt_type=RUN_TYPE))


def _require(coll, name: str) -> None:
    if name not in list_banks(coll):
        known = ", ".join(list_banks(coll)) or "none"
        raise NTTFiftyOneError(f"no bank named {name!r} on dataset {dataset_of(coll).name!r} (banks: {known})")


def _check_free(coll, name: str, overwrite: bool) -> None:
    """A new bank may not replace another run (not ours), nor a bank unless ``overwrite``."""
    check_bank_name(name)
    if name in coll.list_runs() and name not in list_banks(coll):
        raise NTTFiftyOneError(f"{name!r} is a run of this dataset that is not an NTT bank: choose another name")
    if name in list_banks(coll) and not overwrite:
        raise NTTFiftyOneError(f"a bank named {name!r} exists; pass overwrite=True to replace it")


def get_bank_info(coll, name: str) -> dict[str, Any]:
    """The stored description of a bank: classes, shots per class, encoder, label field, tag, file, time."""
    _require(coll, name)
    info = coll.get_run_info(name)
    data = {k: v for k, v in info.config.serialize().items() if k not in ("type", "method", "cls")}
    data["name"] = name
    data["timestamp"] = str(info.timestamp)
    return data


def load_bank(coll, name: str) -> MemoryBank:
    """Load and verify the file of a named bank.

    Raises:
        NTTFiftyOneError: the file is missing, unreadable, corrupted, or holds another bank.
    """
    info = get_bank_info(coll, name)
    path = Path(info["bank_path"])
    if not path.is_file():
        raise NTTFiftyOneError(f"bank {name!r}: its file {path} is missing; rebuild the bank")
    try:
        bank = MemoryBank.load(path)
    except BankError as err:
        raise NTTFiftyOneError(f"bank {name!r}: {err}; rebuild the bank") from err
    if info.get("fingerprint") not in (None, bank.fingerprint):
        raise NTTFiftyOneError(f"bank {name!r}: its file {path} holds another bank's content; rebuild the bank")
    bank.info["name"] = name
    return bank


def build_bank_steps(
    coll,
    name: str,
    label_field: str,
    tag: str = DEFAULT_TAG,
    preset: str = "paper",
    config: NTTConfig | dict | None = None,
    device: str | None = None,
    overwrite: bool = False,
    classes: Sequence[str] | None = None,
) -> Steps[MemoryBank]:
    """``build_bank`` as a generator (same arguments, checked at the first step): yields a ``Step(fraction,
    label)`` after each reference image and returns the stored bank. Closed before its end, it stores nothing."""
    _check_free(coll, name, overwrite)
    cfg = get_config(preset, config, device)
    check_device(cfg)
    refs = collect_references(coll, label_field, tag, classes=classes)
    check_weights(cfg, needed_models(refs))
    bank = yield from memory_bank_steps(refs, cfg)
    _store(dataset_of(coll), name, bank, label_field, tag, cfg)
    return bank


@signature_of(build_bank_steps)
def build_bank(*args, progress: Progress | None = None, **kwargs) -> MemoryBank:
    """Build a named bank from the reference instances of ``coll`` and store it with the dataset.

    Args:
        coll: a dataset or view; its reference samples/labels (see ``mark_references``) are the shots.
        name: the bank's name (a run key: letters, digits, underscores).
        label_field: the ``Detections`` field holding the reference instances (masks, or boxes only).
        preset / config / device: model settings: a preset name, then an ``NTTConfig`` (used as is) or a
            dict of per-section overrides such as ``{"model": {"dtype": "bf16"}}``; ``device`` ("auto",
            "cpu", "cuda", "cuda:N") is checked against this machine before anything runs.
        overwrite: replace an existing bank of that name (its old file is removed once replaced).
        classes: only the reference instances of these class names become shots (None: every class).
        progress: optional callback ``(fraction, label)``, called for each step of ``build_bank_steps``.
    """
    return drive(build_bank_steps(*args, **kwargs), progress)


def add_references_steps(
    coll,
    name: str,
    label_field: str | None = None,
    tag: str | None = None,
    device: str | None = None,
) -> Steps[MemoryBank]:
    """``add_references`` as a generator (same arguments, checked at the first step): yields a ``Step(fraction,
    label)`` after each new reference image and returns the (updated) bank. Closed before its end, the bank
    stays as it was."""
    info = get_bank_info(coll, name)
    bank = load_bank(coll, name)
    cfg = settings_here(info["config"], device=device)
    check_device(cfg)
    field = label_field or info["label_field"]
    refs = collect_references(coll, field, tag or info["tag"], class_ids=dict(zip(bank.class_names, bank.class_ids)))
    have = {(str(s.get("image_id")), str(s.get("annotation_id"))) for s in bank.shots}
    new = [r for r in refs if (str(r.image_id), str(r.annotation_id)) not in have]
    if not new:
        log.info("bank %r: all %d reference(s) are in the bank already; nothing to add", name, len(refs))
        yield Step(1.0, "Nothing new to encode: every reference is in the bank already")
        return bank
    log.info("bank %r: encoding %d new reference(s), %d already in it", name, len(new), len(refs) - len(new))
    check_weights(cfg, needed_models(new))
    merged = bank.add((yield from memory_bank_steps(new, cfg)))
    _store(dataset_of(coll), name, merged, field, info["tag"], cfg)
    return merged


@signature_of(add_references_steps)
def add_references(*args, progress: Progress | None = None, **kwargs) -> MemoryBank:
    """Encode the reference instances of ``coll`` that are not in the bank yet and add them to it.

    Shots already in the bank (same sample and label id) are left out before anything is encoded; when
    nothing new remains, the bank is returned unchanged and no model is loaded. New shots are encoded with
    the bank's own models, on ``device`` (default "auto": this machine's GPU when present, not the device
    the bank was built on). ``label_field`` and ``tag`` default to the bank's. Returns the (updated) bank.
    ``progress(fraction, label)`` is called for each step of ``add_references_steps``.
    """
    return drive(add_references_steps(*args, **kwargs), progress)


def rename_bank(coll, name: str, new_name: str) -> None:
    """Rename a bank: only its record changes (its file name is unique, so no other bank can take it)."""
    _require(coll, name)
    check_bank_name(new_name)
    if new_name in coll.list_runs():
        raise NTTFiftyOneError(f"a bank or run named {new_name!r} exists already")
    with schema_lock(dataset_of(coll)) as dataset:
        dataset.rename_run(name, new_name)


def delete_bank(coll, name: str, delete_file: bool = True) -> None:
    """Delete a bank from the dataset and, by default, its file (kept while a cloned dataset's bank still
    points at it)."""
    path = get_bank_info(coll, name)["bank_path"]
    with schema_lock(dataset_of(coll)) as dataset:
        dataset.delete_run(name)
    if delete_file:
        store.release(path, _records(path))


def needed_models(refs) -> tuple[str, ...]:
    """The models encoding ``refs`` needs: DINOv2, and SAM2 to make masks of box-only references."""
    return ("dinov2", "sam2") if any(ref.mask is None for ref in refs) else ("dinov2",)


def _records(path: str | Path) -> int:
    """How many bank runs, in any dataset, point at ``path`` (clones copy their source's runs)."""
    import fiftyone.core.odm as foo

    return foo.get_db_conn().runs.count_documents({"config.bank_path": str(path)})


def _store(dataset, name: str, bank: MemoryBank, label_field: str, tag: str, cfg: NTTConfig) -> None:
    """Write the bank to a new file, point the record at it, then remove the previous file: the record never
    points at a missing or half-written file, and no other bank's file is touched."""
    old = get_bank_info(dataset, name)["bank_path"] if name in list_banks(dataset) else None
    path = bank.save(store.new_bank_path(dataset))
    config = dataset.init_run(
        ntt_type=RUN_TYPE,
        bank_path=str(path),
        fingerprint=bank.fingerprint,
        label_field=label_field,
        tag=tag,
        classes=bank.class_names,
        class_ids=bank.class_ids,
        shots_per_class=bank.shots_per_class(),
        negatives_per_class=bank.negatives_per_class(),
        calibrated_thresholds={
            k: v["threshold"] for k, v in (bank.info.get("calibration") or {}).get("classes", {}).items()
        },
        num_shots=len(bank.shots),
        shot_sample_ids=shot_sample_ids(bank.shots),
        encoder=bank.encoder,
        config=cfg.to_dict(),
    )
    try:
        with schema_lock(dataset):
            dataset.register_run(name, config, overwrite=True)
            dataset.save_run_results(name, dataset.init_run_results(name, shots=bank.shots))
    finally:
        if not _records(path):  # the run was not recorded: the new file is nobody's
            store.release(path, 0)
    if old is not None and old != str(path):
        store.release(old, _records(old))
    bank.info["name"] = name
