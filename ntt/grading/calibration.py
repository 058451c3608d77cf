"""Per-class score thresholds fitted on a grading's leave-one-out predictions, and reading them back honestly.

A calibration is fitted on the bank's own references (each reference image segmented without its own shots):
a hand-picked sample, usually the clearest instances, so the precision and recall it reports are optimistic
for new images. To keep it from meaning more than it does:

- a class gets its own threshold only with at least ``MIN_INSTANCES`` labelled instances; the others keep the
  global threshold (``score_thresh``);
- the fitted threshold is pulled toward the global one in proportion to the evidence: with n labelled instances
  the threshold is ``w * fitted + (1 - w) * global``, ``w = n / (n + PRIOR_STRENGTH)``;
- a fitted threshold lies midway between the lowest score it keeps and the next lower score, not on an observed
  score;
- precision and recall are reported at the threshold applied, each with a 95% Wilson interval;
- it is stamped with the bank's fingerprint and the settings scores depend on: a bank taught since (new shots or
  negatives) or segmented with other settings has a stale calibration, which is refused with a message saying
  so (``StaleCalibration``), never applied silently.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from ntt.bank.memory import MemoryBank
from ntt.config import NTTConfig

MIN_INSTANCES = 10  # labelled instances a class needs before its own threshold is fitted
PRIOR_STRENGTH = 10  # how many instances' worth of weight the global threshold keeps
CAVEAT = (
    "fitted on the bank's own references (leave-one-out), a hand-picked sample: expect lower precision and "
    "recall on new images"
)
_Z95 = 1.959963984540054

# What scores do not depend on: where and how fast they are computed, the thresholds, how many are kept.
_NOT_SCORES = {
    "model": {"sam2_checkpoint", "dinov2_checkpoint", "device", "dtype", "compile"},
    "segment": {"score_thresh", "class_thresholds", "max_instances", "batch_size", "loader_workers", "cache"},
}
_SHOWN = (("segment", "prompt_mode"), ("model", "sam2"), ("model", "dinov2"))


class StaleCalibration(ValueError):
    """A bank's calibration does not fit this bank or these settings (or there is none): say so, never apply it."""


def calibrate(
    bank: MemoryBank,
    points: dict[int, tuple[list[tuple[float, bool]], int]],
    target_precision: float | None,
    cfg: NTTConfig | None = None,
) -> dict[str, Any]:
    """Per class, a score threshold fitted on leave-one-out predictions (module docstring).

    Args:
        bank: the graded bank (its fingerprint stamps the calibration).
        points: per class id, its predictions over the reference images as (score, matched a labelled instance)
            and its number of labelled instances.
        target_precision: fit the lowest threshold reaching this precision (the most recall at it) instead of
            the best F1.
        cfg: the settings the predictions were made under (stamped; their ``score_thresh`` is the global
            threshold); None: defaults.

    Returns:
        ``{"method", "fingerprint", "settings", "settings_digest", "global_threshold", "min_instances",
        "prior_strength", "caveat", "classes": {name: {"threshold", "fitted", "weight", "precision",
        "precision_interval", "recall", "recall_interval", "f1", "instances", "predictions"}}, "left_out":
        {name: why}}``. Classes left out keep the global threshold.
    """
    cfg = cfg or NTTConfig()
    method = "f1" if target_precision is None else f"precision>={target_precision:g}"
    glob = float(cfg.segment.score_thresh)
    classes, left_out = {}, {}
    for c in bank.classes:
        found, truths = points.get(c["id"], ([], 0))
        found = sorted(found, key=lambda p: -p[0])
        if truths < MIN_INSTANCES:
            left_out[c["name"]] = f"{truths} labelled instance(s), fewer than {MIN_INSTANCES}"
            continue
        fitted = _fit(found, truths, target_precision)
        if fitted is None:
            why = "no prediction matched a labelled instance" if target_precision is None else "never reached"
            left_out[c["name"]] = why if target_precision is None else f"precision {target_precision:g} {why}"
            continue
        weight = truths / (truths + PRIOR_STRENGTH)
        threshold = weight * fitted + (1 - weight) * glob
        classes[c["name"]] = {
            "threshold": threshold,
            "fitted": fitted,
            "weight": weight,
            **_measured(found, truths, threshold),
        }
    return {
        "method": method,
        "fingerprint": bank.fingerprint,
        **settings_stamp(cfg),
        "global_threshold": glob,
        "min_instances": MIN_INSTANCES,
        "prior_strength": PRIOR_STRENGTH,
        "caveat": CAVEAT,
        "classes": classes,
        "left_out": left_out,
    }


def calibrated_thresholds(bank: MemoryBank, cfg: NTTConfig | None = None) -> dict[str, float]:
    """The per-class thresholds a grading stored in the bank (``info["calibration"]``), if they still fit it.

    Args:
        cfg: the settings about to be used (None: defaults); scores under other settings are not comparable.

    Raises:
        StaleCalibration: the bank was never calibrated, or its calibration is stale (``calibration_problem``).
    """
    problem = calibration_problem(bank, cfg or NTTConfig())
    if problem:
        raise StaleCalibration(problem)
    calibration = bank.info["calibration"]
    return {name: float(v["threshold"]) for name, v in calibration["classes"].items() if name in bank.class_names}


def calibration_problem(bank: MemoryBank, cfg: NTTConfig) -> str | None:
    """Why the bank's stored calibration cannot be applied with ``cfg`` (None: it can), as one sentence that
    says what to do."""
    calibration = bank.info.get("calibration") or {}
    again = "grade its references again with calibration (ntt bank grade --calibrate, or 'NTT: grade references')"
    if "classes" not in calibration:
        return f"this bank has no calibrated thresholds: {again}"
    if calibration.get("fingerprint") != bank.fingerprint:
        return (
            "the bank's calibrated thresholds are stale: they were fitted on another version of the bank (it was "
            f"taught or changed since, or calibrated before calibrations were stamped); {again}"
        )
    if calibration.get("settings_digest") != settings_stamp(cfg)["settings_digest"]:
        then, now = calibration.get("settings") or {}, settings_stamp(cfg)["settings"]
        changed = [f"{k} {then.get(k)!r} -> {v!r}" for k, v in now.items() if then.get(k) != v]
        what = f" ({', '.join(changed)})" if changed else ""
        return f"the bank's calibrated thresholds are stale: they were fitted under other settings{what}; {again}"
    return None


def settings_stamp(cfg: NTTConfig) -> dict[str, Any]:
    """What a calibration's scores depend on besides the bank: ``settings`` (a few, readable) and
    ``settings_digest`` (sha256 over every score-relevant setting)."""
    full = cfg.to_dict()
    relevant = {
        section: {k: v for k, v in values.items() if k not in _NOT_SCORES.get(section, set())}
        for section, values in full.items()
    }
    digest = hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()
    return {"settings": {key: full[section][key] for section, key in _SHOWN}, "settings_digest": digest}


def _fit(found: list[tuple[float, bool]], truths: int, target_precision: float | None) -> float | None:
    """The best threshold over ``found`` (score order, highest first): best F1, or the most recall at
    ``target_precision``; midway between the lowest score kept and the next lower one. None: no threshold works."""
    best, hits = None, 0
    for n, (score, hit) in enumerate(found, start=1):
        hits += hit
        if n < len(found) and found[n][0] == score:
            continue  # a threshold keeps all of equal scores or none
        precision, recall = hits / n, hits / truths
        f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
        wanted = f1 if target_precision is None else (recall if precision >= target_precision else -1.0)
        if hits and wanted >= 0 and (best is None or wanted > best[0]):
            below = found[n][0] if n < len(found) else score
            best = (wanted, (score + below) / 2)
    return None if best is None else best[1]


def _measured(found: list[tuple[float, bool]], truths: int, threshold: float) -> dict[str, Any]:
    """Precision, recall and F1 of the predictions kept at ``threshold``, with 95% Wilson intervals."""
    kept = [hit for score, hit in found if score >= threshold]
    hits = sum(kept)
    precision = hits / len(kept) if kept else None
    recall = hits / truths
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return {
        "precision": precision,
        "precision_interval": _wilson(hits, len(kept)),
        "recall": recall,
        "recall_interval": _wilson(hits, truths),
        "f1": f1,
        "instances": truths,
        "predictions": len(found),
    }


def _wilson(successes: int, trials: int) -> list[float] | None:
    """The 95% Wilson score interval of a proportion (None without trials)."""
    if trials == 0:
        return None
    p, z2 = successes / trials, _Z95**2
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = _Z95 * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials**2)) / (1 + z2 / trials)
    return [max(0.0, centre - half), min(1.0, centre + half)]
