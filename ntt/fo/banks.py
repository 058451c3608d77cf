"""Named memory banks stored with a dataset: a FiftyOne custom run (config, classes, shot provenance)
plus the bank file on disk (``$NTT_BANK_DIR/<dataset id>/<uuid>.safetensors``, see ``store``).

A bank version is its file: each change writes a new file and points the run at it by compare-and-swap, one
conditional update of the run document in MongoDB (``config.bank_path`` still the file the change read), so it
holds across processes and machines. A change that finds another one stored first is applied again to that
version when the two commute (adding shots: ``store_change``), and refused when they do not (calibrating a bank
that changed while it was graded). Whoever swaps a version out releases its file; a store that lost removes its
own. Every read goes to the database, not to a dataset object a long-lived process (the App server) holds.
"""

from __future__ import annotations

import datetime
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ntt.bank.encoder import build_bank_steps as memory_bank_steps
from ntt.bank.memory import BankError, MemoryBank
from ntt.bank.teach import learn
from ntt.config import NTTConfig, get_config
from ntt.fo import store
from ntt.fo.checks import check_device, check_weights, settings_here, shot_sample_ids
from ntt.fo.references import DEFAULT_TAG, NTTFiftyOneError, collect_references
from ntt.fo.store import bank_dir, dataset_of, schema_lock  # noqa: F401 - re-exported: a dataset's bank folder and lock
from ntt.grading.calibration import calibrated_thresholds, calibration_problem
from ntt.steps import Step, Steps, drive, signature_of
from ntt.types import Progress

log = logging.getLogger(__name__)
RUN_TYPE = "ntt_bank"
RUN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # FiftyOne run keys: bank names, grade keys


def check_bank_name(name: str) -> str:
    """Bank names are run keys: letters, digits and underscores (so a name can never escape its folder)."""
    if not isinstance(name, str) or not RUN_KEY.fullmatch(name):
        raise NTTFiftyOneError(f"invalid bank name {name!r}: use letters, digits and underscores")
    return name


def list_banks(coll) -> list[str]:
    """Names of the banks stored with the collection's dataset."""
    return sorted(coll.list_runs(ntt_type=RUN_TYPE))


@dataclass(frozen=True)
class Version:
    """One stored version of a bank: the run document recording it, and the file and shots it points at."""

    run_id: Any
    bank_path: str | None  # None: the bank is being deleted
    results_id: Any


@dataclass
class BankRead:
    """A bank as read for a change: its stored description, its content, and the version they are of."""

    name: str
    info: dict[str, Any]
    bank: MemoryBank
    version: Version


def _db():
    import fiftyone.core.odm as foo

    return foo.get_db_conn()


def _record(coll, name: str) -> dict[str, Any] | None:
    """The run document named ``name`` of the collection's dataset as the database holds it now (None: no such
    run). The dataset document maps run names to run documents; a dataset object loaded earlier may hold older
    copies of both."""
    from bson import ObjectId

    if not isinstance(name, str) or not RUN_KEY.fullmatch(name):
        return None
    doc = _db().datasets.find_one({"_id": ObjectId(store.dataset_key(coll))}, {f"runs.{name}": 1})
    run_id = ((doc or {}).get("runs") or {}).get(name)
    return None if run_id is None else _db().runs.find_one({"_id": run_id})


def _is_bank(record: dict[str, Any]) -> bool:
    return (record.get("config") or {}).get("ntt_type") == RUN_TYPE


def _version(record: dict[str, Any]) -> Version:
    return Version(record["_id"], record["config"].get("bank_path"), record.get("results"))


def _require(coll, name: str) -> dict[str, Any]:
    """The current record of bank ``name``, or an error naming the banks there are."""
    record = _record(coll, name)
    if record is None or not _is_bank(record):
        known = ", ".join(list_banks(coll)) or "none"
        raise NTTFiftyOneError(f"no bank named {name!r} on dataset {dataset_of(coll).name!r} (banks: {known})")
    return record


def _info(record: dict[str, Any], name: str) -> dict[str, Any]:
    data = {k: v for k, v in record["config"].items() if k not in ("type", "method", "cls")}
    data["name"] = name
    data["timestamp"] = str(record.get("timestamp"))
    return data


def _check_free(coll, name: str, overwrite: bool) -> None:
    """A new bank may not replace another run (not ours), nor a bank unless ``overwrite``."""
    check_bank_name(name)
    if name in coll.list_runs() and name not in list_banks(coll):
        raise NTTFiftyOneError(f"{name!r} is a run of this dataset that is not an NTT bank: choose another name")
    if name in list_banks(coll) and not overwrite:
        raise NTTFiftyOneError(f"a bank named {name!r} exists; pass overwrite=True to replace it")


def get_bank_info(coll, name: str) -> dict[str, Any]:
    """The stored description of a bank: classes, shots per class, encoder, label field, tag, file, time."""
    return _info(_require(coll, name), name)


def load_bank(coll, name: str) -> MemoryBank:
    """Load and verify the file of a named bank (its current version).

    Raises:
        NTTFiftyOneError: the file is missing, unreadable, corrupted, or holds another bank.
    """
    return read_bank(coll, name).bank


def read_bank(coll, name: str) -> BankRead:
    """A named bank read for a change: its description and content, and the version they are of (what
    ``store_change`` compares with)."""
    record = _require(coll, name)
    info = _info(record, name)
    return BankRead(name, info, _load_file(name, info), _version(record))


def _load_file(name: str, info: dict[str, Any]) -> MemoryBank:
    recorded = info.get("bank_path")
    if not recorded:
        raise NTTFiftyOneError(f"bank {name!r} is being deleted (its record points at no file)")
    path = store.locate_bank_file(recorded)  # the bank folder may be mounted elsewhere here
    if not path.is_file():
        raise NTTFiftyOneError(f"bank {name!r}: its file {recorded} is missing; rebuild the bank")
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
    _store(dataset_of(coll), name, bank, label_field, tag, cfg, overwrite=overwrite)
    return bank


@signature_of(build_bank_steps)
def build_bank(*args, progress: Progress | None = None, **kwargs) -> MemoryBank:
    """Build a named bank from the reference instances of ``coll`` and store it with the dataset (the core's
    ``ntt.build_bank`` on this dataset's references, stored as a FiftyOne run with its file).

    Args:
        coll: a dataset or view; its reference samples/labels (see ``mark_references``) are the shots.
        name: the bank's name (a run key: letters, digits, underscores).
        label_field: the ``Detections`` field holding the reference instances (masks, or boxes only).
        preset: the settings preset (model settings), a name of ``ntt.config.PRESETS``.
        config: an ``NTTConfig`` (used as is) or a dict of per-section overrides layered on the preset, such
            as ``{"model": {"dtype": "bf16"}}``.
        device: "auto", "cpu", "cuda" or "cuda:N"; checked against this machine before anything runs.
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
    read = read_bank(coll, name)
    info, bank = read.info, read.bank
    cfg = settings_here(info["config"], device=device)
    check_device(cfg)
    field = label_field or info["label_field"]
    refs = collect_references(coll, field, tag or info["tag"], class_ids=dict(zip(bank.class_names, bank.class_ids)))
    new = [ref for ref in refs if not bank.holds(ref.provenance(), negative=False)]
    if not new:
        log.info("bank %r: all %d reference(s) are in the bank already; nothing to add", name, len(refs))
        yield Step(1.0, "Nothing new to encode: every reference is in the bank already")
        return bank
    log.info("bank %r: encoding %d new reference(s), %d already in it", name, len(new), len(refs) - len(new))
    check_weights(cfg, needed_models(new))
    part = yield from memory_bank_steps(new, cfg)  # encoded once, added to whichever version is stored then
    return store_change(coll, read, lambda current: learn(current, [part]), cfg, label_field=label_field)


@signature_of(add_references_steps)
def add_references(*args, progress: Progress | None = None, **kwargs) -> MemoryBank:
    """Encode the reference instances of ``coll`` that are not in the bank yet and add them to it.

    Labels the bank holds already as positive shots (``MemoryBank.holds``: same dataset, sample and label id) are
    left out before anything is encoded; when nothing new remains, the bank is returned unchanged and no model is
    loaded. A label that is a negative of its class in the bank becomes a positive (the newer verdict replaces
    the negative). New shots are encoded with
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
    """Delete a bank from the dataset and, by default, its file (kept while a cloned dataset's bank, or an
    unfinished sharded run, still points at it)."""
    dataset = dataset_of(coll)
    path = _retire(dataset, name)
    with schema_lock(dataset):
        dataset.delete_run(name)
    if delete_file and path:
        store.release(store.locate_bank_file(path), _records(path))


def _retire(dataset, name: str) -> str | None:
    """Point bank ``name``'s record at no file, by a conditional update as a change's, and return the file it
    pointed at: a change stored before is in that file, one that comes after finds the bank being deleted (so no
    version is left behind unreleased)."""
    while True:
        record = _require(dataset, name)
        path = record["config"].get("bank_path")
        found = {"_id": record["_id"], "config.bank_path": path}
        if not path or _db().runs.update_one(found, {"$set": {"config.bank_path": None}}).matched_count:
            return path


def needed_models(refs) -> tuple[str, ...]:
    """The models encoding ``refs`` needs: DINOv2, and SAM2 to make masks of box-only references."""
    return ("dinov2", "sam2") if any(ref.mask is None for ref in refs) else ("dinov2",)


UNFINISHED = ("submitting", "running", "stopping")  # states of a sharded run whose workers may still load its bank


def _records(path: str | Path) -> int:
    """How many records keep the bank file ``path``: bank runs in any dataset that point at it (clones copy their
    source's runs), and unfinished sharded runs (``ntt_runs``) whose job names it (``store.bank_file_key``)."""
    db = _db()
    banks = db.runs.count_documents({"config.bank_path": str(path)})
    runs = {"state": {"$in": list(UNFINISHED)}, "job.bank_file": store.bank_file_key(path)}
    return banks + db["ntt_runs"].count_documents(runs)


def store_change(
    coll,
    read: BankRead,
    change: Callable[[MemoryBank], MemoryBank],
    cfg: NTTConfig,
    label_field: str | None = None,
) -> MemoryBank:
    """Store ``change(bank)`` as the next version of the bank ``read``, for a change that commutes with any other
    (adding shots): when another change was stored since it was read, ``change`` is applied to that version
    instead, and so on until one lands. ``change`` must be quick (encode before) and return its argument itself
    when it has nothing to add: then nothing is stored. ``label_field`` defaults to the stored one's. Returns the
    bank as stored.

    Raises:
        NTTFiftyOneError: the change does not fit the bank (e.g. another change replaced it meanwhile), or the
            bank was deleted meanwhile.
    """
    dataset = dataset_of(coll)
    while True:
        try:
            changed = change(read.bank)
        except BankError as err:
            raise NTTFiftyOneError(f"bank {read.name!r}: {err}") from err
        if changed is read.bank:
            return read.bank
        field, tag = label_field or read.info["label_field"], read.info["tag"]
        if _swap(dataset, read.name, read.version, changed, field, tag, cfg):
            return changed
        log.info("bank %r changed while this change was made: adding it to the new version", read.name)
        try:
            read = read_bank(dataset, read.name)
        except NTTFiftyOneError as err:
            raise NTTFiftyOneError(f"{err} (it changed while this change was made; nothing was stored)") from err


def store_if_unchanged(coll, read: BankRead, bank: MemoryBank, cfg: NTTConfig) -> bool:
    """Store ``bank`` as the next version of the bank ``read`` only if no other change was stored since it was
    read (a change computed from that version's content, which does not commute). Returns whether it was."""
    info = read.info
    return _swap(dataset_of(coll), read.name, read.version, bank, info["label_field"], info["tag"], cfg)


def _store(
    dataset, name: str, bank: MemoryBank, label_field: str, tag: str, cfg: NTTConfig, overwrite: bool = True
) -> None:
    """Store ``bank`` as the whole content of bank ``name``: a new bank, or (``overwrite``) a replacement of
    whatever version is stored when it lands (the last writer wins; each version replaced is released once)."""
    while True:
        record = _record(dataset, name)
        if record is None:
            if _register(dataset, name, bank, label_field, tag, cfg):
                return
        elif not _is_bank(record):
            raise NTTFiftyOneError(f"{name!r} is a run of this dataset that is not an NTT bank: choose another name")
        elif not overwrite:
            raise NTTFiftyOneError(f"a bank named {name!r} was stored while this one was built; pass overwrite=True")
        elif _swap(dataset, name, _version(record), bank, label_field, tag, cfg):
            return


def _register(dataset, name: str, bank: MemoryBank, label_field: str, tag: str, cfg: NTTConfig) -> bool:
    """Record a new bank ``name`` (a FiftyOne run), under the schema lock; False, with nothing stored, when a run
    of that name appeared meanwhile. The record never points at a missing or half-written file."""
    path = bank.save(store.new_bank_path(dataset))
    try:
        with schema_lock(dataset):
            if _record(dataset, name) is not None:
                return False
            dataset.register_run(name, _config(dataset, bank, path, label_field, tag, cfg))
            dataset.save_run_results(name, dataset.init_run_results(name, shots=bank.shots))
    finally:
        if not _records(path):  # the run was not recorded: the new file is nobody's
            store.release(path, 0)
    bank.info["name"] = name
    return True


def _swap(dataset, name: str, version: Version, bank: MemoryBank, label_field: str, tag: str, cfg: NTTConfig) -> bool:
    """Make ``bank`` the stored content of bank ``name`` if its record still is ``version``: a new file and
    shots, then one conditional update of the run document (config, time and shots together, so a reader never
    sees one version's config with another's shots), then the replaced version released. Returns False, with
    the new file and shots removed, when another change was stored since ``version`` was read."""
    import fiftyone.constants as foc

    path = shots = None
    swapped = False
    try:
        path = bank.save(store.new_bank_path(dataset))
        config = _config(dataset, bank, path, label_field, tag, cfg)
        shots, meta = _put_shots(dataset, name, config, bank.shots)
        now = datetime.datetime.now(datetime.timezone.utc)
        found = {"_id": version.run_id, "config.bank_path": version.bank_path}
        fields = {"config": config.serialize(), "version": foc.VERSION, "timestamp": now}
        fields.update(results=shots, results_meta=meta)
        swapped = _db().runs.update_one(found, {"$set": fields}).matched_count == 1
    finally:
        if not swapped:
            _discard(path, shots)
    if not swapped:
        return False
    _release(version)
    store.refresh_run(dataset, name)
    bank.info["name"] = name
    return True


def _config(dataset, bank: MemoryBank, path: Path, label_field: str, tag: str, cfg: NTTConfig):
    """The run config recording a bank version: its file, fingerprint, and what forms and filters read."""
    return dataset.init_run(
        ntt_type=RUN_TYPE,
        bank_path=str(path),
        fingerprint=bank.fingerprint,
        label_field=label_field,
        tag=tag,
        classes=bank.class_names,
        class_ids=bank.class_ids,
        shots_per_class=bank.shots_per_class(),
        negatives_per_class=bank.negatives_per_class(),
        **_calibration_record(bank, cfg),
        num_shots=len(bank.shots),
        shot_sample_ids=shot_sample_ids(bank.shots),
        encoder=bank.encoder,
        config=cfg.to_dict(),
    )


def _calibration_record(bank: MemoryBank, cfg: NTTConfig) -> dict[str, Any]:
    """What forms read of the bank's calibration under its own settings: ``calibrated_thresholds`` when it fits
    this version ({} otherwise), and ``calibration_stale``, why a stored calibration does not (None: it does,
    or there is none)."""
    if "calibration" not in bank.info:
        return {"calibrated_thresholds": {}, "calibration_stale": None}
    problem = calibration_problem(bank, cfg)
    thresholds = {} if problem else calibrated_thresholds(bank, cfg)
    return {"calibrated_thresholds": thresholds, "calibration_stale": problem}


def _put_shots(dataset, name: str, config, shots: list[dict[str, Any]]) -> tuple[Any, dict[str, Any]]:
    """Write the shots' provenance as FiftyOne writes a run's results (JSON in GridFS), not yet attached to the
    run (the swap attaches it). Returns its GridFS id and the results' meta."""
    import fiftyone.core.runs as fors
    from bson import json_util

    results = fors.RunResults(dataset, config, name, shots=shots)
    data = json_util.dumps(results.serialize()).encode()
    return _shots_store().put(data, content_type="application/json"), dict(results.get_meta() or {})


def _shots_store():
    """The GridFS bucket of run results (``RunDocument.results``, a mongoengine ``FileField``: bucket "fs")."""
    import gridfs

    return gridfs.GridFS(_db())


def _discard(path: Path | None, shots: Any) -> None:
    """Remove what a store that did not land wrote: its file and shots, unless a record points at the file (the
    database applied the update, and then the call failed)."""
    if path is not None and _records(path):
        return
    if path is not None:
        store.release(path, 0)
    if shots is not None:
        _shots_store().delete(shots)


def _release(version: Version) -> None:
    """Release what a version swapped out held: its shots (its own: a clone copies them) and its file, unless
    another record still points at it (a clone's bank, an unfinished sharded run)."""
    if version.results_id is not None:
        _shots_store().delete(version.results_id)
    if version.bank_path:
        store.release(store.locate_bank_file(version.bank_path), _records(version.bank_path))
