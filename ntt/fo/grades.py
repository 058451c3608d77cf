"""The references grade themselves, on a dataset: leave-one-out over the bank's own reference samples
(``ntt.grading``), calibrated per-class thresholds stored in the bank, and a view of the worst shots."""

from __future__ import annotations

import numpy as np

from ..bank import MemoryBank
from ..cache import CandidateStore
from ..grading import GradeReport, LabelledImage, grade_steps
from ..images import ImageLoadError, image_size
from ..steps import Steps, drive, signature_of
from ..types import Progress
from .banks import read_bank, store_if_unchanged
from .checks import check_device, check_weights, settings_here
from .references import NTTFiftyOneError, _is_crowd, full_image_mask
from .store import dataset_of


def grade_references_steps(
    coll,
    name: str,
    calibrate: bool = False,
    target_precision: float | None = None,
    device: str | None = None,
) -> Steps[GradeReport]:
    """``grade_references`` as a generator (same arguments): yields a ``Step`` per reference sample segmented
    and per shot measured; returns the report."""
    read = read_bank(coll, name)
    info, bank = read.info, read.bank
    cfg = settings_here(info["config"], device=device)
    check_device(cfg)
    images = _labelled_samples(dataset_of(coll), bank, info["label_field"])
    check_weights(cfg)
    cache = CandidateStore() if cfg.segment.cache else None
    report = yield from grade_steps(bank, images, cfg, cache=cache, target_precision=target_precision)
    if calibrate and not store_if_unchanged(coll, read, bank.with_info(calibration=report.calibration), cfg):
        # thresholds fit the shots they were measured on: stored on another version they would be wrong
        raise NTTFiftyOneError(
            f"bank {name!r} changed while it was being graded (another change was stored since the grading read "
            "it; the thresholds were not stored); grade it again to calibrate the new version"
        )
    return report


@signature_of(grade_references_steps)
def grade_references(*args, progress: Progress | None = None, **kwargs) -> GradeReport:
    """Grade bank ``name``'s references by leave-one-out on their own samples.

    Each reference sample is segmented with the bank minus its own shots, against its labelled instances in
    the bank's reference field: per class recall, precision and AP50, per shot its effect on its class's AP50
    (negative: the class does better without it), its cosine to its class and the nearest other class; most
    harmful first (``report.table()``, ``report.to_dict()``; ``worst_shots`` makes a view of them). Each sample
    goes through the models once (the candidate cache keeps its work when the settings use it).

    Args:
        calibrate: store per-class score thresholds in the bank (best F1 on these predictions, or the most
            recall at ``target_precision``); ``segment(..., thresholds="calibrated")`` uses them.
        device: where to run (default "auto").
        progress: ``progress(fraction, label)`` for each step of ``grade_references_steps``.
    """
    return drive(grade_references_steps(*args, **kwargs), progress)


def worst_shots(coll, report: GradeReport, count: int = 5):
    """A view of the ``count`` most harmful shots of a report: their samples, only those labels shown."""
    ids = [str(s.annotation_id) for s in report.shots[:count]]
    return dataset_of(coll).select_labels(ids=ids)


def _labelled_samples(dataset, bank: MemoryBank, field: str) -> list[LabelledImage]:
    """The bank's reference samples with their labelled instances of its classes (the grading's ground truth)."""
    ids = sorted({str(s.get("image_id")) for s in bank.shots if not s.get("negative")})
    classes = dict(zip(bank.class_names, bank.class_ids))
    samples = dataset.select(ids).select_fields(field)
    if not len(samples):
        raise NTTFiftyOneError("none of the bank's reference samples is in this dataset: nothing to grade")
    out = []
    for sample in samples.iter_samples():
        try:
            height, width = image_size(sample.filepath)
        except ImageLoadError:  # grading skips it and says why (it cannot read the image either)
            out.append(LabelledImage(sample.id, sample.filepath, [], []))
            continue
        dets = sample[field].detections if sample[field] is not None else []
        dets = [d for d in dets if d.label in classes and not _is_crowd(d)]
        masks = [full_image_mask(d, width, height) if d.has_mask else _box_mask(d, width, height) for d in dets]
        out.append(LabelledImage(sample.id, sample.filepath, masks, [classes[d.label] for d in dets]))
    return out


def _box_mask(det, width: int, height: int) -> np.ndarray:
    """A box-only label's ground truth: its box, filled."""
    x, y, w, h = det.bounding_box
    mask = np.zeros((height, width), bool)
    mask[round(y * height) : round((y + h) * height), round(x * width) : round((x + w) * width)] = True
    return mask
