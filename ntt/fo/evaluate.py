"""Evaluating NTT predictions with FiftyOne's COCO evaluator (masks, mAP, eval key)."""

from __future__ import annotations

from .banks import get_bank_info, list_banks
from .references import DEFAULT_TAG, NTTFiftyOneError, check_collection, label_filter, without_references


def evaluate(
    coll,
    pred_field: str = "ntt",
    gt_field: str = "ground_truth",
    eval_key: str = "ntt_eval",
    classes: list[str] | None = None,
    tag: str = DEFAULT_TAG,
    exclude_references: bool = True,
    **kwargs,
):
    """Run ``evaluate_detections(method="coco", use_masks=True, compute_mAP=True)`` on ``coll``.

    Reference samples are left out by default (they would match their own labels). Ground truth is
    restricted to ``classes``, by default the classes of the bank recorded on ``pred_field``, so
    classes the bank cannot predict do not count as misses.

    Returns:
        FiftyOne's ``COCODetectionResults``: ``print_report()``, ``mAP()``, ``plot_pr_curves()``, and
        ``coll.to_evaluation_patches(eval_key)`` for error analysis; the App's Model Evaluation panel
        shows it too.
    """
    check_collection(coll)
    schema = coll.get_field_schema(flat=True)
    for field in (pred_field, gt_field):
        if field not in schema:
            raise NTTFiftyOneError(f"the collection has no field {field!r}")
    view = without_references(coll, tag) if exclude_references else coll
    classes = classes or _bank_classes(coll, pred_field)
    if classes:
        view = view.filter_labels(gt_field, label_filter(classes), only_matches=False)
    kwargs = {"method": "coco", "use_masks": True, "compute_mAP": True, **kwargs}
    return view.evaluate_detections(pred_field, gt_field=gt_field, eval_key=eval_key, classes=classes, **kwargs)


def _bank_classes(coll, pred_field: str) -> list[str] | None:
    info = coll._dataset.get_field(pred_field).info or {}
    name = info.get("ntt_bank")
    if name and name in list_banks(coll):
        return list(get_bank_info(coll, name)["classes"])
    return None
