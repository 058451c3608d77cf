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

Scale: the images are graded one at a time, and an image's pool (up to ~1,000 masks of 256 x 256 float logits
with grid prompts: hundreds of MB) is dropped before the next one is made; what is kept per image is only its
matches (scores, matched or not), so memory does not grow with the number of images. A variant without shot k
is finished only on the images where it may predict k's class (``leave_one_out``: a test that never misses
one; elsewhere its class-k matches are the labelled instances alone), and there only the classes whose
candidates it changes are soft-merged again (``refinish``: the predictor's own numbers). AP50 is computed from
the matches as COCOeval does (``ap50``), without encoding any mask. The reports are those of finishing every
variant on every image.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ntt.bank.memory import MemoryBank, on_image
from ntt.config import NTTConfig
from ntt.grading.ap50 import ImageMatches, ap50, instance_ious, match_image
from ntt.grading.calibration import calibrate
from ntt.grading.leave_one_out import may_predict_own_class
from ntt.grading.refinish import Refinisher
from ntt.io.images import ImageLoadError, load_image
from ntt.predict.predictor import Predictor
from ntt.steps import Step, Steps, drive
from ntt.time_left import TimeLeft
from ntt.types import Instances, Progress


@dataclass
class LabelledImage:
    """A reference image and its labelled instances (the ground truth of the grading).

    ``image_id`` is the shots' ``image_id`` for this image; ``source`` a path or an RGB uint8 (H, W, 3) array;
    ``masks`` bool (H, W) per instance; ``class_ids`` their bank category ids (other classes are ignored);
    ``origin`` where the references came from (a COCO file's digest or a dataset id; None: not known): a shot
    is on this image when ``bank.on_image(shot, origin, image_id)``.
    """

    image_id: Any
    source: str | Path | np.ndarray
    masks: list[np.ndarray]
    class_ids: list[int]
    origin: str | None = None


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
    """``grade`` as a generator: per reference image a ``Step`` once it is segmented and one once the shots'
    effects on it are measured (with an estimate of the time left on long runs)."""
    predictor = Predictor(bank, cfg, proposer, encoder)
    runs: list[dict[int, ImageMatches]] = []  # per graded image: class id -> its matches with the run's bank
    without: dict[int, dict[int, ImageMatches]] = {int(k): {} for k in np.flatnonzero(~bank.negative)}
    skipped: list[dict[str, Any]] = []
    clock, verify = TimeLeft(), True
    for n, item in enumerate(images, start=1):
        rest = bank.keep(np.array([not on_image(s, item.origin, item.image_id) for s in bank.shots]))
        image, reason = _readable(item, rest)
        if image is None:
            skipped.append({"image_id": item.image_id, "reason": reason})
            continue
        # One image at a time: its pool (the largest thing here) is dropped before the next one is made.
        run = predictor.with_bank(rest)
        pool, size = _pool(run, image, item, cache), image.shape[:2]
        again = Refinisher(run, pool, size, verify=verify)  # also finishes the image with the run's bank
        verify = verify and not (again.trusted and len(again.found))  # once agreed on some predictions: enough
        found = again.found
        truths = _truths(item)
        runs.append({cid: _matches(found, truths, cid) for cid in set(truths) | set(found.class_ids.tolist())})
        done = (n - 0.5) / len(images)
        yield Step(done, clock.label("Segmenting each reference image without its own shots", done))
        for k, matches in _without_each_shot(predictor, run, again, truths):
            without[k][len(runs) - 1] = matches
        del pool, again, found
        yield Step(n / len(images), clock.label("Measuring each shot's effect on its class", n / len(images)))
    classes = _class_scores(bank, runs, cfg)
    grades = [_shot_grade(bank, k, _effect(bank, k, runs, without[k], classes)) for k in without]
    grades.sort(key=lambda g: (g.effect is None, g.effect if g.effect is not None else 0.0, g.own_cosine or 0.0))
    report = [ClassGrade(c["name"], bank.shots_per_class()[c["name"]], **classes[c["id"]]) for c in bank.classes]
    points = {c["id"]: _scored_matches(runs, c["id"]) for c in bank.classes}
    return GradeReport(report, grades, skipped, calibrate(bank, points, target_precision, cfg))


def grade(*args, progress: Progress | None = None, **kwargs) -> GradeReport:
    """Grade a bank's references by leave-one-out on their own images (module docstring).

    Args:
        bank: the bank; its shots' ``image_id`` (and ``source``) name the images they come from.
        images: the labelled reference images (``LabelledImage``): the ground truth.
        cfg: the settings to segment with (the bank's).
        proposer, encoder: models to use instead of the configured SAM2 / DINOv2 (tests).
        cache: a ``CandidateStore`` for the images' mask pools (grid prompts), else computed here.
        target_precision: calibrate each class's threshold to reach this precision (highest recall that does),
            instead of the best F1.
        progress: ``progress(fraction, label)`` for each step of ``grade_steps``.
    """
    return drive(grade_steps(*args, **kwargs), progress)


def _readable(item: LabelledImage, rest: MemoryBank) -> tuple[np.ndarray | None, str]:
    """The image to grade (RGB uint8 (H, W, 3)), or None and why it cannot be graded."""
    if not rest.classes:
        return None, "every shot of the bank is on this image"
    try:
        return (item.source if isinstance(item.source, np.ndarray) else load_image(item.source)), ""
    except ImageLoadError as err:  # the other references are still graded
        return None, str(err)


def _pool(predictor: Predictor, image: np.ndarray, item: LabelledImage, cache):
    from ntt.cache.stages import stage_cache

    if cache is None or predictor.cfg.segment.prompt_mode != "grid":
        return predictor.mask_pools([image])[0]
    stage = stage_cache(predictor, cache)
    key = stage.key(item.source, image)
    return stage.get(key) or stage.put(key, predictor.mask_pools([image])[0])


def _without_each_shot(
    predictor: Predictor, run: Predictor, again: Refinisher, truths: dict[int, list[np.ndarray]]
) -> Iterator[tuple[int, ImageMatches]]:
    """Per positive shot k of ``predictor``'s bank held by the image's run bank (``run.bank``): the image's
    matches of k's class with the run bank minus k, where they may differ from those with it (``again.found``).

    Exact, as finishing the image with every such bank would be: a bank is finished only where it may predict
    k's class (``leave_one_out``: the test never misses one; elsewhere only the image's labelled instances of
    the class count), and then only its changed classes are soft-merged again (``refinish``). A shot of this
    image is not in the run bank: without it the image's matches are those of the run."""
    bank, rest = predictor.bank, run.bank
    maybe = may_predict_own_class(run, again.pool)
    where = {id(shot): j for j, shot in enumerate(rest.shots)}
    for k in np.flatnonzero(~bank.negative):
        j = where.get(id(bank.shots[k]))
        cid = int(bank.shot_class_ids[k])
        if j is None or not (maybe[j] or cid in truths or cid in again.found.class_ids):
            continue  # the same with and without k here: nothing of its class either way, or k left out already
        inst = Instances.empty(again.size)
        if maybe[j]:
            inst = again.finish(predictor.with_bank(rest.keep(np.arange(len(rest.shots)) != j)), cid)
        yield int(k), _matches(inst, truths, cid)


def _truths(item: LabelledImage) -> dict[int, list[np.ndarray]]:
    """The image's labelled instances by class id, as bool (H, W) masks (nonzero as in a COCO RLE of them)."""
    out: dict[int, list[np.ndarray]] = {}
    for mask, cid in zip(item.masks, item.class_ids):
        out.setdefault(int(cid), []).append(np.asarray(mask).astype(np.uint8) != 0)
    return out


def _matches(found: Instances, truths: dict[int, list[np.ndarray]], class_id: int) -> ImageMatches:
    """One image's predictions of a class matched to its labelled instances of it (``ap50.match_image``)."""
    mine = found[found.class_ids == class_id]
    masks = truths.get(class_id, [])
    return match_image(mine.scores, instance_ious(mine, masks))


def _effect(
    bank: MemoryBank, k: int, runs: list[dict[int, ImageMatches]], without: dict[int, ImageMatches], classes
) -> float | None:
    """Class AP50 with all shots minus without shot ``k`` (its runs' matches where they differ: ``without``)."""
    cid = int(bank.shot_class_ids[k])
    alone = [without.get(r, run.get(cid)) for r, run in enumerate(runs)]
    ap_with, ap_without = classes[cid]["ap50"], ap50([m for m in alone if m is not None])
    return None if ap_with is None or ap_without is None else ap_with - ap_without


def _class_scores(bank: MemoryBank, runs: list[dict[int, ImageMatches]], cfg: NTTConfig) -> dict[int, dict]:
    """Per class id: labelled ``instances``, ``recall`` and ``precision`` at the thresholds, ``ap50``."""
    out = {}
    for c in bank.classes:
        thresh = cfg.segment.class_thresholds.get(c["name"], cfg.segment.score_thresh)
        points, truths = _scored_matches(runs, c["id"])
        kept = [hit for score, hit in points if score >= thresh]
        found_total, matched = len(kept), sum(kept)
        out[c["id"]] = {
            "instances": truths,
            "recall": matched / truths if truths else None,
            "precision": matched / found_total if found_total else None,
            "ap50": ap50([run[c["id"]] for run in runs if c["id"] in run]),
        }
    return out


def _scored_matches(runs: list[dict[int, ImageMatches]], class_id: int) -> tuple[list[tuple[float, bool]], int]:
    """A class's predictions over the runs (all shots of each run's bank) as (score, matched a labelled
    instance), in run and score order, and the labelled count: what ``calibrate`` fits."""
    points, truths = [], 0
    for run in runs:
        if class_id in run:
            points += [(float(s), bool(m)) for s, m in zip(run[class_id].scores, run[class_id].matched)]
            truths += run[class_id].truths
    return points, truths


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
