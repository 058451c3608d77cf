"""COCO evaluation with pycocotools (bbox and segm AP, AP50, AP75)."""

from __future__ import annotations

import contextlib
import io
from typing import Any

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def evaluate_results(
    gt: dict[str, Any],
    results: list[dict[str, Any]],
    cat_ids: list[int] | None = None,
    img_ids: list[int] | None = None,
    verbose: bool = False,
) -> dict[str, dict[str, float]]:
    """Score COCO results against ground truth.

    Args:
        gt: a COCO instance JSON (dict).
        results: COCO result dicts (``image_id``, ``category_id``, ``bbox``, ``score``, ``segmentation``).
        cat_ids: evaluate only these categories (the bank's classes); None = all GT categories.
        img_ids: evaluate only these images (the segmented ones); None = every GT image.
        verbose: print pycocotools' own summary tables.
    Returns:
        ``{"bbox": {"AP": ..., "AP50": ..., ...}, "segm": {...}}`` with values in [0, 1]; categories
        without ground truth in the evaluated images are ignored, as pycocotools does.
    """
    coco_gt = _quiet(lambda: _coco_from_dict(gt))
    cat_ids = sorted(cat_ids) if cat_ids is not None else sorted(coco_gt.getCatIds())
    img_ids = sorted(img_ids) if img_ids is not None else sorted(coco_gt.getImgIds())
    wanted = set(cat_ids)
    kept = [r for r in results if r["category_id"] in wanted and r["image_id"] in set(img_ids)]
    out = {}
    for iou_type in ("bbox", "segm"):
        if not kept:
            out[iou_type] = {m: 0.0 for m in METRICS}
            continue
        coco_dt = _quiet(lambda: coco_gt.loadRes([dict(r) for r in kept]))
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.params.catIds = cat_ids
        ev.params.imgIds = img_ids
        if verbose:
            _summarize(ev)
        else:
            _quiet(lambda ev=ev: _summarize(ev))
        out[iou_type] = {m: max(0.0, float(v)) for m, v in zip(METRICS, ev.stats[:6])}
    return out


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
        lines.append(f"{iou_type:6}" + "".join(f"{100 * values[m]:8.1f}" for m in METRICS))
    return "\n".join(lines)
