"""Per-class score thresholds fitted on a grading's leave-one-out predictions, and reading them back."""

from __future__ import annotations

from .bank import MemoryBank


def calibrate(
    bank: MemoryBank, points: dict[int, tuple[list[tuple[float, bool]], int]], target_precision: float | None
) -> dict:
    """Per class, the score threshold that maximises F1 on the leave-one-out predictions (or, with
    ``target_precision``, the lowest that reaches it: the most recall at that precision), with the numbers
    behind it: ``{"method", "classes": {name: {"threshold", "precision", "recall", "f1", "instances",
    "predictions"}}}``. Classes without labelled instances or predictions, or that never reach the precision,
    are left out (they keep the global threshold)."""
    method = "f1" if target_precision is None else f"precision>={target_precision:g}"
    classes = {}
    for c in bank.classes:
        found, truths = points[c["id"]]
        found = sorted(found, key=lambda p: -p[0])
        best, hits = None, 0
        for n, (score, hit) in enumerate(found, start=1):
            hits += hit
            precision, recall = hits / n, hits / truths if truths else 0.0
            f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
            last = n == len(found) or found[n][0] < score  # thresholds fall between distinct scores
            wanted = f1 if target_precision is None else (recall if precision >= target_precision else -1.0)
            if last and hits and wanted >= 0 and (best is None or wanted > best[0]):
                best = (wanted, {"threshold": score, "precision": precision, "recall": recall, "f1": f1})
        if best is not None:
            classes[c["name"]] = {**best[1], "instances": truths, "predictions": len(found)}
    return {"method": method, "classes": classes}


def calibrated_thresholds(bank: MemoryBank) -> dict[str, float]:
    """The per-class thresholds a grading stored in the bank (``info["calibration"]``).

    Raises:
        ValueError: the bank was never calibrated.
    """
    calibration = bank.info.get("calibration") or {}
    if not calibration.get("classes"):
        raise ValueError("this bank has no calibrated thresholds: grade its references first (ntt bank report)")
    return {name: float(v["threshold"]) for name, v in calibration["classes"].items() if name in bank.class_names}
