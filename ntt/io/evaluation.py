"""COCO evaluation with pycocotools (bbox and segm AP, AP50, AP75)."""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Any

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
IOU_TYPES = ("bbox", "segm")
log = logging.getLogger(__name__)


def evaluate_results(
    gt: dict[str, Any],
    results: list[dict[str, Any]],
    cat_ids: list[int] | None = None,
    img_ids: list[int] | None = None,
    verbose: bool = False,
) -> dict[str, dict[str, float | None]]:
    """Score COCO results against ground truth.

    Args:
        gt: a COCO instance JSON (dict).
        results: COCO result dicts (``image_id``, ``category_id``, ``bbox``, ``score``, ``segmentation``).
        cat_ids: evaluate only these categories (the bank's classes); None = all GT categories.
        img_ids: evaluate only these images (the segmented ones); None = every GT image. Ids the ground
            truth does not have are left out with a warning.
        verbose: print pycocotools' own summary tables.
    Returns:
        ``{"bbox": {"AP": ..., "AP50": ..., ...}, "segm": {...}}`` with values in [0, 1], or None where
        the metric is undefined (no ground truth of those classes in those images: warned, never 0.0);
        categories without ground truth in the evaluated images are ignored, as pycocotools does.
    """
    coco_gt = _quiet(lambda: _coco_from_dict(gt))
    cat_ids = sorted(cat_ids) if cat_ids is not None else sorted(coco_gt.getCatIds())
    img_ids = _known_images(coco_gt, img_ids)
    wanted_cats, wanted_imgs = set(cat_ids), set(img_ids)  # sets built once: results can be millions
    if not coco_gt.getAnnIds(imgIds=img_ids, catIds=cat_ids, iscrowd=False):
        log.warning("no ground truth of the evaluated classes in the evaluated images: AP is undefined")
        return {iou_type: dict.fromkeys(METRICS) for iou_type in IOU_TYPES}
    kept = [r for r in results if r["category_id"] in wanted_cats and r["image_id"] in wanted_imgs]
    if not kept:
        return {iou_type: dict.fromkeys(METRICS, 0.0) for iou_type in IOU_TYPES}
    coco_dt = _quiet(lambda: coco_gt.loadRes([dict(r) for r in kept]))  # loaded once for both IoU types
    out = {}
    for iou_type in IOU_TYPES:
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.params.catIds = cat_ids
        ev.params.imgIds = img_ids
        if verbose:
            _summarize(ev)
        else:
            _quiet(lambda ev=ev: _summarize(ev))
        out[iou_type] = {m: (None if float(v) < 0 else float(v)) for m, v in zip(METRICS, ev.stats[:6])}
    return out


def _known_images(coco_gt: COCO, img_ids: list[int] | None) -> list[int]:
    known = set(coco_gt.getImgIds())
    if img_ids is None:
        return sorted(known)
    unknown = set(img_ids) - known
    if unknown:
        log.warning("%d segmented image(s) are not in the ground truth (by id or file name): left out", len(unknown))
    return sorted(set(img_ids) & known)


def _summarize(ev: COCOeval) -> None:
    ev.evaluate()
    ev.accumulate()
    ev.summarize()


def _coco_from_dict(data: dict[str, Any]) -> COCO:
    coco = COCO()
    coco.dataset = data
    coco.createIndex()
    return coco


def _quiet(fn):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn()


def format_metrics(metrics: dict[str, dict[str, float]]) -> str:
    """A small table of the metrics, in percent."""
    lines = [f"{'':6}" + "".join(f"{m:>8}" for m in METRICS)]
    for iou_type, values in metrics.items():
        lines.append(f"{iou_type:6}" + "".join(_percent(values[m]) for m in METRICS))
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return f"{'n/a':>8}" if value is None else f"{100 * value:8.1f}"
