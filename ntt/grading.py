"""The references grade themselves: leave-one-out over the bank's own labelled reference images.

Each reference image is segmented with the bank minus that image's own shots, and its labelled instances are
the ground truth: per class, the recall and precision (mask IoU >= 0.5, at the configured thresholds) and AP50
tell how well the other shots find it. A shot's effect on its class is the class's AP50 over the reference
images with it minus without it (negative: the class does better without it, e.g. a mislabelled shot); its
cosine to its class's prototype (without it) and to the nearest other class say why.

Cost: each reference image goes through the encoders and the decoder once (its mask pool, taken from the
candidate cache when given); every bank variant after that is only matching and post-processing. With guided
prompts a pool's prompts are those of the image's leave-one-out bank, also for the variants without one more
shot (an approximation: exact with grid prompts).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from .bank import MemoryBank
from .calibration import calibrate
from .coco import instances_to_results
from .config import NTTConfig
from .evaluation import _quiet, evaluate_results
from .images import ImageLoadError, load_image
from .predictor import Predictor
from .steps import Step, Steps, drive
from .types import Instances, Progress


@dataclass
class LabelledImage:
    """A reference image and its labelled instances (the ground truth of the grading).

    ``image_id`` is the shots' ``image_id`` for this image; ``source`` a path or an RGB uint8 (H, W, 3) array;
    ``masks`` bool (H, W) per instance; ``class_ids`` their bank category ids (other classes are ignored).
    """

    image_id: Any
    source: str | Path | np.ndarray
    masks: list[np.ndarray]
    class_ids: list[int]


@dataclass
class ClassGrade:
    """A class over the reference images: ``shots``, labelled ``instances``, ``recall`` and ``precision``
    (IoU >= 0.5, at the thresholds), ``ap50`` (None without labelled instances)."""

    name: str
    shots: int
    instances: int
    recall: float | None
    precision: float | None
    ap50: float | None


@dataclass
class ShotGrade:
    """One positive shot: where it is (``shot``, its index in the bank), ``effect`` on its class's AP50
    (with minus without it; None when undefined), ``own_cosine`` to its class's prototype without it (None for
    a class's only shot) and the nearest other class with its cosine."""

    shot: int
    class_name: str
    image_id: Any
    annotation_id: Any
    effect: float | None
    own_cosine: float | None
    nearest_other: str | None
    other_cosine: float | None


@dataclass
class GradeReport:
    """Per class and per shot (most harmful first), the reference images that could not be graded, and per class
    the calibrated score threshold with the numbers behind it (``calibration``, see ``calibrate``)."""

    classes: list[ClassGrade]
    shots: list[ShotGrade]
    skipped: list[dict[str, Any]] = field(default_factory=list)
    calibration: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "classes": [asdict(c) for c in self.classes],
            "shots": [asdict(s) for s in self.shots],
            "skipped": self.skipped,
            "calibration": self.calibration,
        }

    def rows(self) -> tuple[list[list[str]], list[list[str]]]:
        """The class table and the shot table (most harmful first) as text cells, each with its header."""
        classes = [["class", "shots", "instances", "recall", "precision", "AP50"]]
        classes += [
            [c.name, str(c.shots), str(c.instances), _pct(c.recall), _pct(c.precision), _pct(c.ap50)]
            for c in self.classes
        ]
        shots = [["shot (image/label)", "class", "effect on AP50", "cosine to its class", "nearest other class"]]
        for s in self.shots:
            other = f"{s.nearest_other} ({_num(s.other_cosine)})" if s.nearest_other else "-"
            shots.append(
                [f"{s.image_id}/{s.annotation_id}", s.class_name, _signed(s.effect), _num(s.own_cosine), other]
            )
        return classes, shots

    def table(self) -> str:
        """The report as two plain-text tables (shots most harmful first)."""
        out = []
        for rows in self.rows():
            widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
            out += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows] + [""]
        out += [f"skipped {s['image_id']}: {s['reason']}" for s in self.skipped]
        return "\n".join(out).rstrip() + "\n(shots: most harmful first)"

    def markdown(self) -> str:
        """The report as two Markdown tables (shots most harmful first)."""
        out = []
        for rows in self.rows():
            out += ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
            out += ["| " + " | ".join(cell.replace("|", "/") for cell in r) + " |" for r in rows[1:]] + [""]
        out += [f"Skipped {s['image_id']}: {s['reason']}" for s in self.skipped]
        return "\n".join(out)


def grade_steps(
    bank: MemoryBank,
    images: Sequence[LabelledImage],
    cfg: NTTConfig,
    proposer=None,
    encoder=None,
    cache=None,
    target_precision: float | None = None,
) -> Steps[GradeReport]:
    """``grade`` as a generator: a ``Step`` per reference image segmented, then per shot measured."""
    predictor = Predictor(bank, cfg, proposer, encoder)
    runs, skipped = [], []
    for n, item in enumerate(images, start=1):
        rest = bank.keep(np.array([str(s.get("image_id")) != str(item.image_id) for s in bank.shots]))
        if not rest.classes:
            skipped.append({"image_id": item.image_id, "reason": "every shot of the bank is on this image"})
            continue
        try:
            image = item.source if isinstance(item.source, np.ndarray) else load_image(item.source)
        except ImageLoadError as err:  # the other references are still graded
            skipped.append({"image_id": item.image_id, "reason": str(err)})
            continue
        pool = _pool(predictor.with_bank(rest), image, item, cache)
        runs.append(_Run(item, rest, pool, image.shape[:2]))
        yield Step(0.5 * n / max(1, len(images)), "Segmenting each reference image without its own shots")
    found = [_finish(predictor, run.bank, run) for run in runs]
    gt = _ground_truth(bank, runs)  # the labelled instances, encoded once for every AP below
    with_all = _class_scores(bank, runs, found, cfg, gt)
    positive = np.flatnonzero(~bank.negative)
    grades = []
    for j, k in enumerate(positive, start=1):
        alone = [
            _without_shot(predictor, run, int(k)) if _holds(run.bank, bank.shots[k]) else f
            for run, f in zip(runs, found)
        ]
        cid = int(bank.shot_class_ids[k])
        ap_with, ap_without = with_all[cid]["ap50"], _class_ap(gt, alone, cid)
        effect = None if ap_with is None or ap_without is None else ap_with - ap_without
        grades.append(_shot_grade(bank, int(k), effect))
        yield Step(0.5 + 0.5 * j / len(positive), "Measuring each shot's effect on its class")
    grades.sort(key=lambda g: (g.effect is None, g.effect if g.effect is not None else 0.0, g.own_cosine or 0.0))
    classes = [ClassGrade(c["name"], bank.shots_per_class()[c["name"]], **with_all[c["id"]]) for c in bank.classes]
    points = {c["id"]: _scored_matches(runs, found, c["id"]) for c in bank.classes}
    return GradeReport(classes, grades, skipped, calibrate(bank, points, target_precision))


def grade(*args, progress: Progress | None = None, **kwargs) -> GradeReport:
    """Grade a bank's references by leave-one-out on their own images (module docstring).

    Args:
        bank: the bank; its shots' ``image_id`` name the images they come from.
        images: the labelled reference images (``LabelledImage``): the ground truth.
        cfg: the settings to segment with (the bank's).
        proposer / encoder: models to use instead of the configured SAM2 / DINOv2 (tests).
        cache: a ``CandidateStore`` for the images' mask pools (grid prompts), else computed here.
        target_precision: calibrate each class's threshold to reach this precision (highest recall that does),
            instead of the best F1.
        progress: ``progress(fraction, label)`` for each step of ``grade_steps``.
    """
    return drive(grade_steps(*args, **kwargs), progress)


@dataclass
class _Run:
    item: LabelledImage
    bank: MemoryBank
    pool: Any
    size: tuple[int, int]


def _pool(predictor: Predictor, image: np.ndarray, item: LabelledImage, cache):
    from .stage_cache import stage_cache

    if cache is None or predictor.cfg.segment.prompt_mode != "grid":
        return predictor.mask_pools([image])[0]
    stage = stage_cache(predictor, cache)
    key = stage.key(item.source, image)
    return stage.get(key) or stage.put(key, predictor.mask_pools([image])[0])


def _finish(predictor: Predictor, bank: MemoryBank, run: _Run) -> Instances:
    return predictor.with_bank(bank).finish(run.pool, run.size)[0]


def _holds(bank: MemoryBank, shot: dict) -> bool:
    return any(s is shot for s in bank.shots)


def _without_shot(predictor: Predictor, run: _Run, k_shot: int) -> Instances:
    """The run's image re-matched with its bank minus one more shot (of the full bank's index ``k_shot``)."""
    target = predictor.bank.shots[k_shot]
    smaller = run.bank.keep(np.array([s is not target for s in run.bank.shots]))
    if not smaller.classes:
        return Instances.empty(run.size)
    return _finish(predictor, smaller, run)


def _ground_truth(bank: MemoryBank, runs: list[_Run]) -> dict[str, Any]:
    """The runs' labelled instances as a COCO dict (image ids are run indices)."""
    images, anns = [], []
    for i, run in enumerate(runs):
        images.append({"id": i, "height": int(run.size[0]), "width": int(run.size[1])})
        for mask, cid in zip(run.item.masks, run.item.class_ids):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            box = mask_utils.toBbox(rle).tolist()
            rle["counts"] = rle["counts"].decode("ascii")
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": int(cid),
                    "segmentation": rle,
                    "bbox": box,
                    "area": int(mask.sum()),
                    "iscrowd": 0,
                }
            )
    return {"images": images, "annotations": anns, "categories": [dict(c) for c in bank.classes]}


def _class_ap(gt: dict[str, Any], found: list[Instances], class_id: int) -> float | None:
    """AP50 of one class over the runs' predictions ``found`` against ``gt`` (``_ground_truth``)."""
    if not any(a["category_id"] == class_id for a in gt["annotations"]):
        return None
    mine = [inst[inst.class_ids == class_id] for inst in found]  # only this class's masks get encoded
    results = [r for i, inst in enumerate(mine) for r in instances_to_results(i, inst)]
    return _quiet(lambda: evaluate_results(gt, results, cat_ids=[class_id]))["segm"]["AP50"]


def _class_scores(
    bank: MemoryBank, runs: list[_Run], found: list[Instances], cfg: NTTConfig, gt: dict[str, Any]
) -> dict[int, dict]:
    """Per class id: labelled ``instances``, ``recall`` and ``precision`` at the thresholds, ``ap50``."""
    out = {}
    for c in bank.classes:
        thresh = cfg.segment.class_thresholds.get(c["name"], cfg.segment.score_thresh)
        points, truths = _scored_matches(runs, found, c["id"])
        kept = [hit for score, hit in points if score >= thresh]
        found_total, matched = len(kept), sum(kept)
        out[c["id"]] = {
            "instances": truths,
            "recall": matched / truths if truths else None,
            "precision": matched / found_total if found_total else None,
            "ap50": _class_ap(gt, found, c["id"]),
        }
    return out


def _scored_matches(runs: list[_Run], found: list[Instances], class_id: int) -> tuple[list[tuple[float, bool]], int]:
    """A class's predictions over the runs as (score, matched a labelled instance), and the labelled count."""
    points, truths = [], 0
    for run, inst in zip(runs, found):
        gt = [m for m, cid in zip(run.item.masks, run.item.class_ids) if cid == class_id]
        mine = [i for i in range(len(inst)) if inst.class_ids[i] == class_id]  # in score order
        points += zip((float(inst.scores[i]) for i in mine), _match_flags(gt, [inst.mask(i) for i in mine]))
        truths += len(gt)
    return points, truths


def _match_flags(truths: list[np.ndarray], preds: list[np.ndarray]) -> list[bool]:
    """Per prediction (in score order): matched one-to-one to a labelled mask at IoU >= 0.5, greedily."""
    if not truths or not preds:
        return [False] * len(preds)
    encode = lambda ms: [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in ms]  # noqa: E731
    ious = mask_utils.iou(encode(preds), encode(truths), [0] * len(truths))
    taken, flags = set(), []
    for row in np.atleast_2d(ious):
        free = [(v, j) for j, v in enumerate(row) if j not in taken and v >= 0.5]
        if free:
            taken.add(max(free)[1])
        flags.append(bool(free))
    return flags


def _shot_grade(bank: MemoryBank, k: int, effect: float | None) -> ShotGrade:
    units = bank.shot_features / np.maximum(np.linalg.norm(bank.shot_features, axis=1, keepdims=True), 1e-12)
    cid = int(bank.shot_class_ids[k])
    same = np.flatnonzero((bank.shot_class_ids == cid) & ~bank.negative)
    others = [i for i in same if i != k]
    own = None
    if others:
        proto = units[others].mean(0)
        own = float(units[k] @ proto / max(np.linalg.norm(proto), 1e-12))
    protos = bank.class_prototypes()
    rivals = [(float(units[k] @ p), c["name"]) for p, c in zip(protos, bank.classes) if c["id"] != cid]
    best = max(rivals, default=(None, None))
    shot = bank.shots[k]
    name = next(c["name"] for c in bank.classes if c["id"] == cid)
    return ShotGrade(k, name, shot.get("image_id"), shot.get("annotation_id"), effect, own, best[1], best[0])


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _num(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.3f}"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f}"
