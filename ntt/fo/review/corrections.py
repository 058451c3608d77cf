"""What a reviewer changed in a predictions field with FiftyOne's own annotation tools (the App's Annotate tab, or
the SDK), found by comparing the labels with what ``segment`` wrote.

Every ``fo.Detections`` that ntt writes carries ``ntt_predicted``: per prediction its label id, class, relative
xywh box and a digest of its mask, as predicted. From that record:

- an **edited** prediction has the same id but another box or mask: a painted mask is a corrected mask; a box
  moved or resized with the mask left alone no longer fits that mask, so only its box counts (SAM2 makes the mask
  from it when it is encoded);
- a **deleted** prediction is in the record but no longer in the field: with its recorded class and box (its mask
  went with it);
- a **drawn** object is a label in the field that is not in the record.

A field written before predictions were recorded (or by another tool) has no record: nothing there counts as
edited, deleted or drawn (tags still work).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import fiftyone as fo
import numpy as np

RECORD = "ntt_predicted"
_BOX_TOLERANCE = 1e-6  # relative units: a box saved unchanged may come back through float32


@dataclass
class Corrections:
    """One sample's corrections: ``edited`` (detection, whether its mask changed), ``deleted`` (the record of
    each: ``{"id", "label", "box", "mask"}``) and ``drawn`` detections."""

    edited: list[tuple[Any, bool]]
    deleted: list[dict[str, Any]]
    drawn: list[Any]


def with_record(dets: fo.Detections) -> fo.Detections:
    """``dets`` with the record of what was predicted (``ntt_predicted``), as ``segment`` writes it."""
    dets[RECORD] = [
        {"id": d.id, "label": d.label, "box": [float(v) for v in d.bounding_box], "mask": mask_digest(d)}
        for d in dets.detections
    ]
    return dets


def corrections(labels: fo.Detections | None) -> Corrections:
    """What changed in one sample's predictions since they were written (module docstring)."""
    record = _record(labels)
    if record is None:
        return Corrections([], [], [])
    now = {d.id: d for d in labels.detections}
    edited = []
    for rec_id, rec in record.items():
        det = now.get(rec_id)
        if det is None:
            continue
        mask_changed = mask_digest(det) != rec["mask"]
        if mask_changed or not _same_box(det.bounding_box, rec["box"]):
            edited.append((det, mask_changed))
    deleted = [rec for rec_id, rec in record.items() if rec_id not in now]
    drawn = [d for d in labels.detections if d.id not in record]
    return Corrections(edited, deleted, drawn)


def mask_digest(det) -> str | None:
    """A short digest of a detection's mask (shape and pixels; None without one)."""
    if not det.has_mask:
        return None
    mask = np.asarray(det.get_mask()) > 0
    digest = hashlib.sha256(str(mask.shape).encode() + np.packbits(mask).tobytes())
    return digest.hexdigest()[:16]


def _record(labels) -> dict[str, dict[str, Any]] | None:
    if labels is None or not labels.has_field(RECORD) or labels[RECORD] is None:
        return None
    return {str(rec["id"]): rec for rec in labels[RECORD]}


def _same_box(box, recorded_box) -> bool:
    return all(abs(float(a) - float(b)) <= _BOX_TOLERANCE for a, b in zip(box, recorded_box))
