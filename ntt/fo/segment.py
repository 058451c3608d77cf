"""Segmenting a FiftyOne view with a bank into a ``Detections`` field, batch by batch (resumable)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import fiftyone as fo

from ..bank import MemoryBank
from ..config import NTTConfig, layered, make_config
from ..pipeline import adopt_bank_encoder
from ..segmenter import Segmenter
from ..types import Instances
from .banks import get_bank_info, load_bank, schema_lock
from .references import DEFAULT_TAG, NTTFiftyOneError, check_collection, check_detections_field, reference_ids

Progress = Callable[[float, str], None]


def to_detections(inst: Instances, class_names: dict[int, str]) -> fo.Detections:
    """Convert instances to ``fo.Detections``: relative xywh boxes (pixel box / image size) and masks
    cropped to them, exactly what ``fo.Detection.from_mask`` makes of the full mask (tested), without
    building full-image masks; ``confidence`` is the NTT score."""
    h, w = inst.image_size
    dets = []
    for box, crop, score, cid in zip(inst.boxes, inst.crops, inst.scores, inst.class_ids):
        x1, y1, x2, y2 = (float(v) for v in box)
        rel = [x1 / w, y1 / h, (x2 - x1) / w, (y2 - y1) / h]
        dets.append(fo.Detection(label=class_names[int(cid)], bounding_box=rel, mask=crop, confidence=float(score)))
    return fo.Detections(detections=dets)


def segment(
    coll,
    bank: str | MemoryBank,
    label_field: str = "ntt",
    score_thresh: float | None = None,
    class_thresholds: dict[str, float] | None = None,
    max_instances: int | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    preset: str | None = None,
    config: NTTConfig | dict | None = None,
    skip_existing: bool = False,
    overwrite: bool = False,
    exclude_references: bool = True,
    tag: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Segment every sample of ``coll`` with a bank and write ``fo.Detections`` into ``label_field``.

    Results are written after every batch, so a stopped run keeps what it finished; re-run with
    ``skip_existing=True`` to continue where it stopped. Samples whose media is missing or unreadable are
    skipped and reported; every other sample gets a (possibly empty) ``Detections``.

    Args:
        bank: the name of a bank stored with the dataset, or a ``MemoryBank``.
        preset / config / device: model settings as in ``build_bank``. Without ``preset``, a named
            bank's own settings are used (so a random-weights bank segments with random weights), with
            ``config`` given as a dict (``{"segment": {"prompt_mode": "guided"}}``) layered on them.
            The DINOv2 encoder is always the bank's.
        skip_existing: only segment samples whose ``label_field`` is unset.
        overwrite: allow replacing existing labels (otherwise existing labels are an error).
        exclude_references: leave out the reference samples (default; they would match themselves).
        tag: the reference tag (default: the bank's, else ``ntt_ref``).
    Returns:
        a summary: ``samples`` (in the target view), ``labelled``, ``instances``, ``per_class``,
        ``skipped`` (``[{"id", "filepath", "reason"}]``).
    """
    check_collection(coll)
    bank, bank_name, tag, stored = _resolve_bank(coll, bank, tag)
    view = _target_view(coll, label_field, tag, skip_existing, overwrite, exclude_references)
    overrides = {
        "score_thresh": score_thresh,
        "class_thresholds": class_thresholds,
        "max_instances": max_instances,
        "batch_size": batch_size,
    }
    if preset is None and stored and not isinstance(config, NTTConfig):
        cfg = make_config(config=layered(stored, config), device=device)
    else:
        cfg = make_config(preset or "paper", config, device)
    for key, value in overrides.items():
        if value is not None:
            setattr(cfg.segment, key, value)
    cfg = adopt_bank_encoder(cfg, bank)
    if progress:
        progress(0.0, "Loading models")
    segmenter = Segmenter(bank, cfg)
    _declare_field(coll._dataset, label_field)
    summary = _run(coll._dataset, view, segmenter, label_field, progress)
    _record(coll._dataset, label_field, bank_name, summary)
    return summary


def _resolve_bank(coll, bank, tag):
    if isinstance(bank, MemoryBank):
        return bank, bank.info.get("name"), tag or DEFAULT_TAG, None
    info = get_bank_info(coll, bank)
    return load_bank(coll, bank), bank, tag or info.get("tag", DEFAULT_TAG), info.get("config")


def _target_view(coll, label_field: str, tag: str, skip_existing: bool, overwrite: bool, exclude_refs: bool):
    view = coll.exclude(reference_ids(coll, tag)) if exclude_refs else coll
    if label_field not in coll.get_field_schema(flat=True):
        return view
    check_detections_field(coll, label_field)
    if skip_existing:
        return view.exists(label_field, False)
    existing = view.exists(label_field).count()
    if existing and not overwrite:
        raise NTTFiftyOneError(
            f"field {label_field!r} already has labels on {existing} samples: pass overwrite=True to replace "
            "them or skip_existing=True to continue a stopped run"
        )
    return view


def _run(dataset, view, segmenter: Segmenter, label_field: str, progress: Progress | None) -> dict[str, Any]:
    """Segment the view's samples and write their labels batch by batch (a stopped run keeps them)."""
    ids, paths = view.values(["id", "filepath"])
    names = dict(zip(segmenter.bank.class_ids, segmenter.bank.class_names))
    summary = {"samples": len(ids), "labelled": 0, "instances": 0, "per_class": Counter(), "skipped": []}
    values: dict[str, fo.Detections] = {}
    results = zip(ids, segmenter.predict_files(paths))  # ordered; images are loaded ahead in threads
    for done, (sid, res) in enumerate(results, start=1):
        if res.instances is None:
            summary["skipped"].append({"id": sid, "filepath": res.source, "reason": res.error})
        else:
            values[sid] = to_detections(res.instances, names)
            summary["instances"] += len(res.instances)
            summary["per_class"].update(names[int(c)] for c in res.instances.class_ids)
        if done % segmenter.batch_size == 0 or done == len(ids):
            _write(dataset, label_field, values, summary)
            if progress:
                progress(done / len(ids), f"Segmenting {done}/{len(ids)} samples")
    summary["per_class"] = dict(summary["per_class"])
    return summary


def _write(dataset, label_field: str, values: dict, summary: dict) -> None:
    if values:
        dataset.set_values(label_field, values, key_field="id")
        summary["labelled"] += len(values)
        values.clear()


def _declare_field(dataset, label_field: str) -> None:
    """Add the output field to the schema up front (under the schema lock), so writing labels later
    changes no schema."""
    with schema_lock(dataset):
        _ensure_field(dataset, label_field)


def _record(dataset, label_field: str, bank_name: str | None, summary: dict[str, Any]) -> None:
    """Record on the field which bank produced it (``dataset.get_field(field).info``)."""
    with schema_lock(dataset):
        _ensure_field(dataset, label_field)  # it may have been dropped by a process outside ntt's lock
        field = dataset.get_field(label_field)
        field.info = {**(field.info or {}), "ntt_bank": bank_name}
        field.description = f"NTT instance segmentation with bank {bank_name!r}"
        field.save()


def _ensure_field(dataset, label_field: str) -> None:
    if label_field not in dataset.get_field_schema():
        dataset.add_sample_field(label_field, fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
