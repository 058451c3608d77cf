"""The references grade themselves, on a dataset: leave-one-out over the bank's own reference samples
(``ntt.grading.report``), calibrated per-class thresholds stored in the bank, and a view of the worst shots."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from ntt.bank.memory import MemoryBank
from ntt.cache.store import CandidateStore
from ntt.fo.banks import RUN_KEY, read_bank, store_if_unchanged
from ntt.fo.checks import check_device, check_weights, settings_here
from ntt.fo.references import NTTFiftyOneError, _is_crowd, full_image_mask
from ntt.fo.review.corrections import corrections
from ntt.fo.store import dataset_of, schema_lock
from ntt.grading.report import GradeReport, LabelledImage, grade_steps
from ntt.io.images import ImageLoadError, image_size
from ntt.steps import Steps, drive, signature_of
from ntt.types import Progress

GRADING_TYPE = "ntt_grading"  # a stored grading's run config says so (``list_runs(ntt_type=GRADING_TYPE)``)


def grade_references_steps(
    coll,
    name: str,
    calibrate: bool = False,
    target_precision: float | None = None,
    device: str | None = None,
    grade_key: str | None = None,
) -> Steps[GradeReport]:
    """``grade_references`` as a generator (same arguments): yields a ``Step`` per reference sample segmented
    and per shot measured; returns the report."""
    check_grade_key(coll, grade_key)
    read = read_bank(coll, name)
    info, bank = read.info, read.bank
    cfg = settings_here(info["config"], device=device)
    check_device(cfg)
    images, unknown = _labelled_samples(dataset_of(coll), bank, info["label_field"])
    check_weights(cfg)
    cache = CandidateStore() if cfg.segment.cache else None
    report = yield from grade_steps(bank, images, cfg, cache=cache, target_precision=target_precision)
    report.skipped += unknown
    if calibrate and not store_if_unchanged(coll, read, bank.with_info(calibration=report.calibration), cfg):
        # thresholds fit the shots they were measured on: stored on another version they would be wrong
        raise NTTFiftyOneError(
            f"bank {name!r} changed while it was being graded (another change was stored since the grading read "
            "it; the thresholds were not stored); grade it again to calibrate the new version"
        )
    if grade_key is not None:
        _store_grading(dataset_of(coll), grade_key, name, bank.fingerprint, report)
    return report


@signature_of(grade_references_steps)
def grade_references(*args, progress: Progress | None = None, **kwargs) -> GradeReport:
    """Grade bank ``name``'s references by leave-one-out on their own samples.

    Each reference sample is segmented with the bank minus its own shots, against the labels its shots came
    from (the bank's reference field for tagged references; for promoted samples the reviewed labels of their
    predictions field; a promoted sample with unreviewed predictions is left out, and the report's ``skipped``
    says so): per class recall, precision and AP50, per shot its effect on its class's AP50
    (negative: the class does better without it), its cosine to its class and the nearest other class; most
    harmful first (``report.table()``, ``report.to_dict()``). Each sample goes through the models once (the
    candidate cache keeps its work when the settings use it).

    With ``grade_key``, the report is stored with the dataset as a FiftyOne run under that key (replacing an
    earlier grading of that key): ``dataset.load_run_results(grade_key).report`` is its ``to_dict()``,
    ``dataset.list_runs()`` lists it, and ``load_references_view(dataset, grade_key=grade_key)`` opens its most
    harmful shots.

    Args:
        calibrate: store per-class score thresholds in the bank (best F1 on these predictions, or the most
            recall at ``target_precision``); ``segment(..., thresholds="calibrated")`` uses them.
        device: where to run (default "auto").
        grade_key: store the report as a run of the dataset under this key (letters, digits, underscores; not
            the key of a bank or of another kind of run).
        progress: ``progress(fraction, label)`` for each step of ``grade_references_steps``.
    """
    return drive(grade_references_steps(*args, **kwargs), progress)


def worst_shots(coll, report: GradeReport | dict | str, count: int = 5):
    """A view of the ``count`` most harmful shots of a report (a ``GradeReport``, its ``to_dict()``, or the
    ``grade_key`` of a stored grading): their samples, only those labels shown."""
    if isinstance(report, str):
        report = load_grading(coll, report)
    shots = report.to_dict()["shots"] if isinstance(report, GradeReport) else report["shots"]
    ids = [str(s["annotation_id"]) for s in shots[:count]]
    return dataset_of(coll).select_labels(ids=ids)


def check_grade_key(coll, grade_key: str | None) -> None:
    """A grading can be stored under ``grade_key``: a run key that is free or holds an earlier grading."""
    if grade_key is None:
        return
    if not isinstance(grade_key, str) or not RUN_KEY.fullmatch(grade_key):
        raise NTTFiftyOneError(f"invalid grade_key {grade_key!r}: use letters, digits and underscores")
    if grade_key in coll.list_runs() and grade_key not in coll.list_runs(ntt_type=GRADING_TYPE):
        raise NTTFiftyOneError(
            f"{grade_key!r} is a run of this dataset that is not an NTT grading (a bank?): choose another grade_key"
        )


def load_grading(coll, grade_key: str) -> dict[str, Any]:
    """The report stored under ``grade_key`` (``GradeReport.to_dict()``) and which bank version it graded
    (``bank``, ``fingerprint``)."""
    dataset = dataset_of(coll)
    if grade_key not in dataset.list_runs(ntt_type=GRADING_TYPE):
        raise NTTFiftyOneError(f"no NTT grading {grade_key!r} in this dataset: grade_references(..., grade_key=...)")
    info = dataset.get_run_info(grade_key).config
    report = dict(dataset.load_run_results(grade_key, cache=False).report)
    return report | {"bank": info.bank, "fingerprint": info.fingerprint}


def _store_grading(dataset, grade_key: str, bank: str, fingerprint: str, report: GradeReport) -> None:
    """Store ``report`` as the run ``grade_key`` (under the schema lock: runs are part of the dataset document)."""
    plain = json.loads(json.dumps(report.to_dict(), default=_plain))
    with schema_lock(dataset):
        check_grade_key(dataset, grade_key)
        config = dataset.init_run(ntt_type=GRADING_TYPE, bank=bank, fingerprint=fingerprint)
        dataset.register_run(grade_key, config, overwrite=True)
        dataset.save_run_results(grade_key, dataset.init_run_results(grade_key, report=plain))


def _plain(value: Any) -> Any:
    """A numpy scalar (or anything else json cannot write) as a plain value."""
    return value.item() if hasattr(value, "item") else str(value)


def _labelled_samples(dataset, bank: MemoryBank, field: str) -> tuple[list[LabelledImage], list[dict]]:
    """The bank's sample images with their labelled instances of its classes (the grading's ground truth), and
    the samples left out because their ground truth is not known (with why).

    Each image's ground truth is where its shots came from: the reference field ``field`` for tagged references,
    and for a sample whose positive shots were promoted from a predictions field, that field's reviewed labels
    (those tagged correct, relabelled, corrected in the Annotate tab or promoted as positives, as they are now;
    a box moved with its mask left alone counts as its box). A promoted sample with
    predictions nobody reviewed has no known ground truth: it is left out."""
    reviewed_in = _promoted_fields(bank)
    ids = sorted({str(s.get("image_id")) for s in bank.shots if not s.get("negative")})
    classes = dict(zip(bank.class_names, bank.class_ids))
    samples = dataset.select(ids).select_fields([field, *sorted(set(reviewed_in.values()))])
    if not len(samples):
        raise NTTFiftyOneError("none of the bank's reference samples is in this dataset: nothing to grade")
    promoted = {str(s.get("annotation_id")) for s in bank.shots if s.get("promoted") and not s.get("negative")}
    out, unknown = [], []
    for sample in samples.iter_samples():
        try:
            height, width = image_size(sample.filepath)
        except ImageLoadError:  # grading skips it and says why (it cannot read the image either)
            out.append(LabelledImage(sample.id, sample.filepath, [], []))
            continue
        boxes_only = set()
        if sample.id in reviewed_in:
            source = reviewed_in[sample.id]
            changes = corrections(sample[source] if sample.has_field(source) else None)
            boxes_only = {d.id for d, mask_changed in changes.edited if not mask_changed}  # the old mask misfits
            corrected = {d.id for d, _ in changes.edited} | {d.id for d in changes.drawn}
            dets, unreviewed = _reviewed(_detections(sample, source), promoted | corrected)
            if unreviewed:
                reason = (
                    f"ground truth unknown: {unreviewed} prediction(s) in {source!r} not reviewed (tag them "
                    "'correct' or 'wrong', or delete them, to grade this sample)"
                )
                unknown.append({"image_id": sample.id, "reason": reason})
                continue
        else:
            dets = _detections(sample, field)
        dets = [d for d in dets if d.label in classes and not _is_crowd(d)]
        masks = [
            full_image_mask(d, width, height) if d.has_mask and d.id not in boxes_only else _box_mask(d, width, height)
            for d in dets
        ]
        out.append(LabelledImage(sample.id, sample.filepath, masks, [classes[d.label] for d in dets]))
    return out, unknown


def _promoted_fields(bank: MemoryBank) -> dict[str, str]:
    """Sample id -> the predictions field its positive shots were promoted from, for samples none of whose
    positive shots is a tagged reference (those are graded against the reference field)."""
    tagged = {str(s.get("image_id")) for s in bank.shots if not s.get("negative") and not s.get("promoted")}
    return {
        str(s.get("image_id")): s["label_field"]
        for s in bank.shots
        if s.get("promoted") and not s.get("negative") and s.get("label_field")
        if str(s.get("image_id")) not in tagged
    }


def _detections(sample, field: str) -> list:
    labels = sample[field] if sample.has_field(field) else None
    return list(labels.detections) if labels is not None else []


def _reviewed(dets, promoted: set[str], correct: str = "correct", wrong: str = "wrong") -> tuple[list, int]:
    """A predictions field's labels on one sample as ground truth: the ones reviewed as right (tagged
    ``correct``, relabelled, or promoted as positives), and how many nobody reviewed (labels tagged ``wrong``
    are reviewed: not objects)."""
    right, unreviewed = [], 0
    for det in dets:
        tags = set(det.tags or [])
        predicted = det.get_field("predicted_label") if det.has_field("predicted_label") else det.label
        if det.id in promoted or correct in tags or det.label != predicted:
            right.append(det)
        elif wrong not in tags:
            unreviewed += 1
    return right, unreviewed


def _box_mask(det, width: int, height: int) -> np.ndarray:
    """A box-only label's ground truth: its box, filled."""
    x, y, w, h = det.bounding_box
    mask = np.zeros((height, width), bool)
    mask[round(y * height) : round((y + h) * height), round(x * width) : round((x + w) * width)] = True
    return mask
