"""A class's AP at mask IoU 0.5, as pycocotools' COCOeval computes it, without encoding a mask per evaluation.

COCOeval's AP50 for one category (area range "all", at most 100 detections per image, no crowd regions):

- per image, its detections sorted by score (stable), the first 100 kept, each matched in turn to the
  unmatched labelled instance of highest IoU (>= 0.5; the last of equal ones);
- over the images (in image order), every kept detection sorted by score (stable), precision made
  monotone from the right and read at the 101 recall thresholds 0, 0.01, ..., 1 (0 past the last recall);
- AP50 is their mean; undefined (None) without labelled instances.

The detections' scores are the ones COCO results carry (``round(score, 5)``, as ``coco.instances_to_results``
writes them), so ties are ties there too. An image's matches (``ImageMatches``) are computed once from its
mask IoUs; AP over any set of images is then only sorting and counting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ntt.types import Instances

MAX_DETECTIONS = 100  # per image, as COCOeval's largest maxDets
IOU = 0.5
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)  # COCOeval's


@dataclass
class ImageMatches:
    """One image's detections of one class against its labelled instances of that class, in COCOeval's order
    (score descending, stable): ``scores`` float64 (n,) as given, ``matched`` bool (n,) whether each matched a
    labelled instance, ``truths`` how many labelled instances there are."""

    scores: np.ndarray
    matched: np.ndarray
    truths: int

    @cached_property
    def coco_scores(self) -> np.ndarray:
        """float64 (n,): the scores as COCO results carry them (rounded to 5 decimals)."""
        return np.array([round(float(s), 5) for s in self.scores], dtype=np.float64)


def match_image(scores: np.ndarray, ious: np.ndarray) -> ImageMatches:
    """Greedy matching as COCOeval's ``evaluateImg`` at IoU 0.5.

    Args:
        scores: float (n,) detection scores, any order.
        ious: float64 (n, g) mask IoU of each detection with each labelled instance (instances in their order).
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    ious = np.asarray(ious, dtype=np.float64)
    if ious.ndim != 2 or ious.shape[:1] != scores.shape:
        raise ValueError(f"{len(scores)} scores but IoUs of shape {ious.shape} (want (n, g))")
    order = np.argsort(-np.array([round(float(s), 5) for s in scores]), kind="mergesort")
    taken = np.zeros(ious.shape[1], bool)
    matched = np.zeros(len(scores), bool)
    for rank, d in enumerate(order):
        best, m = IOU, -1
        for g in range(ious.shape[1]):
            if taken[g] or ious[d, g] < best:
                continue
            best, m = ious[d, g], g  # >=: the last of equal IoUs, as COCOeval
        if m >= 0:
            taken[m] = matched[rank] = True
    return ImageMatches(scores[order], matched, int(ious.shape[1]))


def ap50(images: Sequence[ImageMatches]) -> float | None:
    """COCOeval's AP50 of one class over ``images`` (given in image-id order: it breaks ties between images);
    None without labelled instances."""
    truths = sum(im.truths for im in images)
    if truths == 0:
        return None
    scores = np.concatenate([im.coco_scores[:MAX_DETECTIONS] for im in images] or [np.zeros(0)])
    hits = np.concatenate([im.matched[:MAX_DETECTIONS] for im in images] or [np.zeros(0, bool)])
    hits = hits[np.argsort(-scores, kind="mergesort")]
    tp = np.cumsum(hits).astype(float)
    fp = np.cumsum(~hits).astype(float)
    q = np.zeros(len(RECALL_THRESHOLDS))
    if len(tp):
        recall = tp / truths
        precision = tp / (fp + tp + np.spacing(1))  # COCOeval's expression, term for term
        precision = np.maximum.accumulate(precision[::-1])[::-1]
        at = np.searchsorted(recall, RECALL_THRESHOLDS, side="left")
        reached = at < len(tp)
        q[reached] = precision[at[reached]]
    return float(np.mean(q))


def instance_ious(inst: Instances, masks: Sequence[np.ndarray]) -> np.ndarray:
    """float64 (n, g): mask IoU of each instance with each bool (H, W) mask, as pycocotools computes it
    (intersection / union of pixel counts; 0 without overlap, and for a mask of another size)."""
    out = np.zeros((len(inst), len(masks)), dtype=np.float64)
    areas = [int(m.sum()) for m in masks]
    for i in range(len(inst)):
        x1, y1, x2, y2 = inst.boxes[i].astype(int)
        crop = inst.crops[i]
        area = int(crop.sum())
        for j, mask in enumerate(masks):
            if mask.shape != tuple(inst.image_size):
                continue
            inter = int(np.count_nonzero(mask[y1:y2, x1:x2] & crop))
            if inter:
                out[i, j] = inter / (area + areas[j] - inter)
    return out
