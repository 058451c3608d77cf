"""Evaluating NTT predictions with FiftyOne's COCO evaluator (masks, mAP, eval key)."""

from __future__ import annotations

from ntt.fo.banks import get_bank_info, list_banks
from ntt.fo.labelling.provenance import recorded
from ntt.fo.references import (
    DEFAULT_TAG,
    NTTFiftyOneError,
    check_collection,
    check_detections_field,
    label_filter,
    reference_ids,
)


def evaluate(
    coll,
    pred_field: str = "ntt",
    gt_field: str = "ground_truth",
    eval_key: str = "ntt_eval",
    classes: list[str] | None = None,
    tag: str | None = None,
    exclude_references: bool = True,
    **kwargs,
):
    """Run ``evaluate_detections(method="coco", use_masks=True, compute_mAP=True)`` on ``coll``.

    What the predictions were made with is read from ``pred_field``'s info (recorded by ``segment``; for
    ``apply_model``, from its labels: ``provenance.recorded``), so this works after the bank is renamed,
    rebuilt or deleted. Reference samples are left out by default
    (they would match their own labels): the samples ``segment`` left out as references (the bank's shot
    samples, even if untagged since), plus the samples tagged ``tag`` now when ``tag`` is given. Ground
    truth is restricted to ``classes``, by default the bank's classes, so classes the bank cannot predict
    do not count as misses.

    Returns:
        FiftyOne's ``COCODetectionResults``: ``print_report()``, ``mAP()``, ``plot_pr_curves()``, and
        ``coll.to_evaluation_patches(eval_key)`` for error analysis; the App's Model Evaluation panel
        shows it too.
    """
    check_collection(coll)
    _check_args(coll, pred_field, gt_field, eval_key, classes)
    info = recorded(coll, pred_field)
    view = coll.exclude(_references(coll, info, tag)) if exclude_references else coll
    classes = list(classes) if classes else _bank_classes(coll, info)
    if classes:
        view = view.filter_labels(gt_field, label_filter(classes), only_matches=False)
    kwargs = {"method": "coco", "use_masks": True, "compute_mAP": True, **kwargs}
    return view.evaluate_detections(pred_field, gt_field=gt_field, eval_key=eval_key, classes=classes, **kwargs)


def _check_args(coll, pred_field, gt_field, eval_key, classes) -> None:
    for field in (pred_field, gt_field):
        check_detections_field(coll, field)
    if pred_field == gt_field:
        raise NTTFiftyOneError(f"predictions and ground truth are the same field {pred_field!r}")
    if not isinstance(eval_key, str) or not eval_key.isidentifier():
        raise NTTFiftyOneError(f"invalid eval_key {eval_key!r}: use letters, digits and underscores")
    if classes is not None and (isinstance(classes, str) or not all(isinstance(c, str) for c in classes)):
        raise NTTFiftyOneError(f"classes must be a list of class names, got {classes!r}")


def _references(coll, info: dict, tag: str | None) -> list[str]:
    """The recorded reference samples, plus those tagged ``tag`` now; a field without a record (not written
    by this version of ntt) falls back to the samples tagged now (``tag``, else the recorded or default tag)."""
    ids = set(info.get("ntt_reference_ids") or [])
    if tag is not None or "ntt_reference_ids" not in info:
        ids |= set(reference_ids(coll, tag or info.get("ntt_tag") or DEFAULT_TAG))
    return sorted(ids)


def _bank_classes(coll, info: dict) -> list[str] | None:
    if info.get("ntt_classes"):
        return list(info["ntt_classes"])
    name = info.get("ntt_bank")  # a field recorded before classes were: the bank's, while it exists
    if name and name in list_banks(coll):
        return list(get_bank_info(coll, name)["classes"])
    return None
