"""The references grade themselves (leave-one-out), on oracle scenes where the bad shot is known.

Four reference images: two with a good dog shot, one whose "dog" shot is really a toy (mislabelled), one with
a cat shot. Every image also has labelled dogs that look a little different from the shots (``DOG_HERE``:
cosine 0.7 to a good dog shot), and unlabelled toys (cosine 0.5). With the mislabelled shot in the dog
prototype, toys outrank the real dogs; without it they do not: the report must rank it the most harmful.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from oracle_scenes import CAT, DOG, LookEncoder, OracleProposer, look_references, look_scene
from pycocotools import mask as mask_utils

from ntt.bank.encoder import build_bank
from ntt.cache.store import CandidateStore
from ntt.config import get_config
from ntt.grading.refinish import same_instances
from ntt.grading.report import LabelledImage, grade
from ntt.types import Reference

NAMES = {DOG: "dog", CAT: "cat"}
# per image: (red, row, col, labelled class or None, is a shot)
IMAGES = {
    "a": [(60, 0, 0, DOG, True), (70, 2, 1, DOG, False), (190, 1, 3, None, False)],
    "b": [(60, 1, 1, DOG, True), (70, 3, 2, DOG, False), (190, 0, 3, None, False)],
    "c": [(190, 2, 2, DOG, True), (70, 0, 0, DOG, False)],  # the "dog" shot is a toy
    "d": [(120, 0, 0, CAT, True), (120, 2, 2, CAT, False), (70, 3, 3, DOG, False)],
}


@pytest.fixture(scope="module")
def setup():
    cfg = get_config("paper", {"model": {"device": "cpu"}})
    labelled, shots = look_references(IMAGES, NAMES)
    return cfg, build_bank(shots, cfg, encoder=LookEncoder()), labelled


def _grade(setup, **kwargs):
    cfg, bank, labelled = setup
    return grade(bank, labelled, cfg, proposer=OracleProposer(image_size=256), encoder=LookEncoder(), **kwargs)


def test_a_mislabelled_reference_is_the_most_harmful_shot(setup):
    report = _grade(setup)
    worst = report.shots[0]
    assert (worst.image_id, worst.annotation_id, worst.class_name) == ("c", "c0", "dog")
    assert worst.effect < 0, "the dog class does better without it"
    good = [s for s in report.shots if s.annotation_id in ("a0", "b0")]
    assert all(s.effect >= 0 for s in good) and all(s.own_cosine > worst.own_cosine for s in good)
    cat = next(s for s in report.shots if s.class_name == "cat")
    assert cat.own_cosine is None and cat.nearest_other == "dog"  # a class's only shot has no prototype without it

    dog = next(c for c in report.classes if c.name == "dog")
    assert dog.shots == 3 and dog.instances == 7 and dog.ap50 is not None and 0 < dog.ap50 < 1
    assert 0 < dog.recall <= 1 and 0 < dog.precision < 1, "toys taken for dogs are false positives"
    assert "most harmful first" in report.table() and report.to_dict()["shots"][0]["annotation_id"] == "c0"


def test_removing_the_worst_shot_makes_the_class_better(setup):
    cfg, bank, labelled = setup
    before = next(c for c in _grade(setup).classes if c.name == "dog").ap50
    fixed = bank.remove(annotation_ids=["c0"])
    after = grade(fixed, labelled, cfg, proposer=OracleProposer(image_size=256), encoder=LookEncoder())
    assert next(c for c in after.classes if c.name == "dog").ap50 > before


def test_grading_reuses_the_candidate_cache(setup, tmp_path):
    store = CandidateStore(tmp_path)
    first = _grade(setup, cache=store)
    assert store.info()["entries"] == len(IMAGES)
    again = _grade(setup, cache=store)
    assert [(s.annotation_id, s.effect) for s in again.shots] == [(s.annotation_id, s.effect) for s in first.shots]


def test_an_image_holding_every_shot_is_skipped_with_a_reason(setup):
    cfg, bank, labelled = setup
    only_a = bank.keep(np.array([s["image_id"] == "a" for s in bank.shots]))
    report = grade(only_a, labelled[:1], cfg, proposer=OracleProposer(image_size=256), encoder=LookEncoder())
    assert report.skipped == [{"image_id": "a", "reason": "every shot of the bank is on this image"}]


def test_an_unreadable_reference_image_is_skipped_with_its_reason_and_the_rest_graded(setup, tmp_path):
    """A reference image that cannot be read now (deleted, truncated, a folder): grading says which and why and
    grades the others, instead of stopping with a traceback."""
    cfg, bank, labelled = setup
    broken = tmp_path / "gone.jpg"
    images = [LabelledImage(labelled[0].image_id, broken, [], []), *labelled[1:]]
    report = grade(bank, images, cfg, proposer=OracleProposer(image_size=256), encoder=LookEncoder())
    assert report.skipped == [{"image_id": "a", "reason": f"{broken}: file not found"}]
    assert next(c for c in report.classes if c.name == "dog").instances == 5, "the other images' dogs are graded"


# --- AP50 without pycocotools: the same numbers -------------------------------------------------------------------


def _random_masks(rng, count: int, size=(18, 22)) -> list[np.ndarray]:
    """Non-empty rectangles, some repeated or shifted by a pixel: IoUs around 0.5 and exact ties."""
    out = []
    for _ in range(count):
        if out and rng.random() < 0.3:
            mask = np.roll(out[rng.integers(len(out))], rng.integers(-1, 2), axis=int(rng.integers(2)))
        else:
            y, x = rng.integers(0, size[0] - 3), rng.integers(0, size[1] - 3)
            mask = np.zeros(size, bool)
            mask[y : y + rng.integers(2, 9), x : x + rng.integers(2, 9)] = True
        out.append(mask if mask.any() else out[-1])
    return out


def _ap50_both(images, size=(18, 22)) -> tuple[float | None, float | None]:
    """COCOeval's AP50 (through ``evaluate_results``) and ``ap50``'s of one class over ``images``: per image
    (labelled bool masks, predicted bool masks, their scores); a labelled mask of another class per image."""
    from ntt.grading.ap50 import ap50, instance_ious, match_image
    from ntt.io.coco import instances_to_results
    from ntt.io.evaluation import _quiet, evaluate_results
    from ntt.types import Instances

    cat, other = 5, 9
    gt = {"images": [], "annotations": [], "categories": [{"id": cat, "name": "a"}, {"id": other, "name": "b"}]}
    results, matches = [], []
    for image_id, (truths, preds, scores) in enumerate(images):
        gt["images"].append({"id": image_id, "height": size[0], "width": size[1]})
        decoy = np.zeros(size, bool)
        decoy[:3, :3] = True
        for mask, cid in zip([*truths, decoy], [cat] * len(truths) + [other]):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            box = mask_utils.toBbox(rle).tolist()
            ann = {"image_id": image_id, "category_id": cid, "segmentation": rle, "bbox": box, "area": int(mask.sum())}
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "iscrowd": 0, **ann})
        found = Instances.from_masks(np.array(preds).reshape(len(preds), *size), scores, [cat] * len(preds))
        found = found[np.argsort(-found.scores, kind="stable")]  # as Instances come: by score
        results += instances_to_results(image_id, found)
        matches.append(match_image(found.scores, instance_ious(found, truths)))
    return _quiet(lambda: evaluate_results(gt, results, cat_ids=[cat]))["segm"]["AP50"], ap50(matches)


# scores that tie, also only once rounded to 5 decimals as COCO results are (0.500001 and 0.5000004 both 0.5)
LEVELS = [0.9, 0.500001, 0.5, 0.5000004, 0.3]


@pytest.mark.parametrize("seed", range(80))
def test_ap50_equals_pycocotools(seed):
    """AP50 from per-image matches equals COCOeval's to 1e-12 on random small cases: scores tied within and
    across images, images with only predictions, only labels or neither, classes without any prediction."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(int(rng.integers(1, 7))):
        truths = _random_masks(rng, int(rng.integers(0, 4)) if seed % 7 else 0)
        count = int(rng.integers(0, 7)) * (seed % 5 != 4)
        preds = _random_masks(rng, count)
        if truths and count and rng.random() < 0.5:  # some predictions close to a labelled instance
            preds[0] = np.roll(truths[0], 1, axis=1)
        images.append((truths, preds, rng.choice(LEVELS, size=count)))
    want, got = _ap50_both(images)
    assert (want is None) == (got is None)
    assert want is None or abs(want - got) <= 1e-12, (want, got)


def _box(y: int, x: int, h: int, w: int, size=(18, 22)) -> np.ndarray:
    mask = np.zeros(size, bool)
    mask[y : y + h, x : x + w] = True
    return mask


def test_ap50_equals_pycocotools_where_the_rules_decide():
    """The cases random draws seldom make, each of which changes AP50 under a slightly different rule: a
    prediction at equal IoU with two labelled instances takes the last (the next one then finds none); only the
    best 100 predictions of an image count; ties only after rounding to 5 decimals keep image order; no labels,
    no predictions."""
    a, b = _box(2, 2, 4, 4), _box(2, 8, 4, 4)
    both = a | b  # IoU 0.5 with a and with b
    late = _box(2, 8, 4, 5)  # IoU 16/20 with b only
    cases = {
        "equal IoU: the last": [([a, b], [both, late], [0.9, 0.8])],
        "100 per image": [([a], [_box(12, 12, 3, 3)] * 100 + [a], [0.9] * 100 + [0.1])],
        "ties after rounding": [([a], [_box(12, 12, 3, 3)], [0.5000004]), ([a], [a], [0.500001])],
        "ties after rounding, swapped": [([a], [a], [0.5000004]), ([a], [_box(12, 12, 3, 3)], [0.500001])],
        "no predictions": [([a, b], [], [])],
        "no labels": [([], [a], [0.5])],
        "nothing": [([], [], [])],
    }
    seen = {}
    for name, images in cases.items():
        want, got = _ap50_both(images)
        assert (want is None) == (got is None) and (want is None or abs(want - got) <= 1e-12), (name, want, got)
        seen[name] = got
    assert seen["equal IoU: the last"] < 1 and seen["100 per image"] == 0 and seen["no predictions"] == 0
    assert seen["ties after rounding"] != seen["ties after rounding, swapped"] and seen["no labels"] is None


# --- re-finishing only what changed: the predictor's own results ------------------------------------------------


class _TinyEncoder:
    """Only what a ``Predictor`` reads of an encoder when it is handed mask pools (no image is encoded)."""

    name, weights_id, image_size, dim = "tiny", "tiny", 224, 16


class _NoProposer:
    image_size, mask_size = 128, 32


def _random_bank(rng, cfg, classes: int, shots: int, negatives: int):
    """A bank of ``classes`` around random directions (at least two shots each), a few negatives; returns it
    and the class directions (float (C, D))."""
    from ntt.bank.memory import MemoryBank
    from ntt.models import encoder_identity

    centers = rng.standard_normal((classes, _TinyEncoder.dim))
    of = np.concatenate([np.arange(classes), np.arange(classes), rng.integers(0, classes, shots + negatives)])
    of = of[: shots + negatives]
    feats = centers[of] + 0.6 * rng.standard_normal((len(of), _TinyEncoder.dim))
    shots_info = [{"image_id": 0, "annotation_id": j, "negative": j >= shots} for j in range(len(of))]
    bank = MemoryBank(
        classes=[{"id": 3 + 7 * c, "name": f"class{c}"} for c in range(classes)],
        shot_features=feats.astype(np.float32),
        shot_class_ids=np.array([3 + 7 * c for c in of]),
        shots=shots_info,
        encoder=encoder_identity(_TinyEncoder(), cfg.model),
    )
    return bank, centers


def _random_pool(rng, centers, count: int, present: list[int], unlike: np.ndarray, m: int = 32):
    """A mask pool of ``count`` blobs on an m x m grid (some near-duplicates, for NMS and the soft merge),
    embeddings near the directions of the ``present`` classes and orthogonal to the rows of ``unlike``
    (a few all-zero), tied SAM IoUs."""
    from ntt.geometry import mask_boxes
    from ntt.predict.predictor import MaskPool

    yy, xx = np.mgrid[:m, :m]
    logits, base = [], None
    for _ in range(count):
        if base is not None and rng.random() < 0.4:  # near-duplicate of the previous blob
            cy, cx, ry, rx = base + rng.normal(0, 0.8, 4)
        else:
            cy, cx = rng.uniform(3, m - 3, 2)
            ry, rx = rng.uniform(2, m / 3, 2)
        base = np.array([cy, cx, ry, rx])
        logits.append(6 * (1 - ((yy - cy) / ry) ** 2 - ((xx - cx) / rx) ** 2) + rng.normal(0, 0.3, (m, m)))
    logits = torch.tensor(np.array(logits), dtype=torch.float32)
    logits[:, 0, 0] = 1.0  # never empty at low resolution
    emb = centers[rng.choice(present, count)] + 0.7 * rng.standard_normal((count, centers.shape[1]))
    if len(unlike):
        basis = np.linalg.qr(unlike.T.astype(np.float64))[0]  # (D, r) orthonormal
        emb -= (emb @ basis) @ basis.T
    emb = torch.nn.functional.normalize(torch.tensor(emb, dtype=torch.float32), dim=1)
    emb[rng.random(count) < 0.1] = 0.0
    iou = torch.tensor(rng.choice([0.6, 0.7, 0.8, 0.9], count), dtype=torch.float32)
    return MaskPool(logits, iou, emb, mask_boxes(logits > 0), {})


SEGMENT_VARIANTS = [
    {},
    {"max_instances": 4, "nms_max_keep": 12},  # the caps bind: classes compete for places
    {"merge_resolution": "low", "score_thresh": 0.2},
    {"soft_merge": False, "class_thresholds": {"class1": 0.5}},
    {"soft_merge_exponent": 2.0, "nms_thresh": 0.3, "max_instances": 6},
]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("segment", SEGMENT_VARIANTS)
@pytest.mark.parametrize("size", [(40, 52), (20, 24)])  # larger and smaller than the 32 x 32 mask grid
def test_refinish_gives_what_finishing_again_gives(seed, segment, size, monkeypatch):
    """For every bank without one shot: the class's instances from ``Refinisher`` are those of
    ``Predictor.finish`` bit for bit (boxes, masks, scores), with the caps binding or not, negatives, per-class
    thresholds, low- or full-resolution merges, and the merge scaled down past its memory budget; the
    unchanged classes' merges are reused; and ``may_predict_own_class`` says "maybe" wherever the class is
    predicted."""
    import ntt.grading.refinish as refinish
    import ntt.predict.postprocess as pp
    from ntt.grading.leave_one_out import may_predict_own_class
    from ntt.grading.refinish import Refinisher
    from ntt.predict.predictor import Predictor

    rng = np.random.default_rng(seed)
    if seed % 3 == 2:  # the merge runs scaled down past ~12 candidates (its size depends on their number)
        budget = 12 * size[0] * size[1]
        monkeypatch.setattr(pp, "merge_size", lambda n, s, real=pp.merge_size: real(n, s, budget))
    cfg = get_config("paper", {"model": {"device": "cpu"}, "segment": segment})
    bank, centers = _random_bank(rng, cfg, classes=4, shots=12, negatives=2 * (seed % 2))
    absent = seed % 2  # then nothing in the image looks like the last class: its shots' variants are skipped
    unlike = bank.shot_features[bank.shot_class_ids == bank.class_ids[3]] if absent else np.zeros((0, 16))
    pool = _random_pool(rng, centers, 70, present=[0, 1, 2] if absent else [0, 1, 2, 3], unlike=unlike)
    predictor = Predictor(bank, cfg, _NoProposer(), _TinyEncoder())
    merges = []
    monkeypatch.setattr(refinish, "_merge", _counting(refinish._merge, merges))
    again = Refinisher(predictor, pool, size)
    assert again.trusted and same_instances(again.found, predictor.finish(pool, size)[0])
    merged_for_b, compared, skipped = len(merges), 0, 0
    maybe = may_predict_own_class(predictor, pool)
    for k in np.flatnonzero(~bank.negative):
        smaller = bank.keep(np.arange(len(bank.shots)) != k)
        if smaller.class_ids != bank.class_ids:
            continue
        other, cid = predictor.with_bank(smaller), int(bank.shot_class_ids[k])
        want = other.finish(pool, size)[0]
        want = want[want.class_ids == cid]
        got = again.finish(other, cid)
        assert same_instances(got, want), (k, cid)
        compared += 1
        assert maybe[k] or not len(want), "the test missed a prediction of the class"
        skipped += not maybe[k]
    assert compared >= 6
    assert skipped or not absent
    assert len(merges) - merged_for_b < compared * len(bank.classes), "every class merged again for every shot"


def _counting(fn, calls: list):
    def wrapper(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)

    return wrapper


# --- grading at scale: one pool at a time, the same report as finishing every variant everywhere -----------------


@pytest.fixture(scope="module")
def scenes():
    """Eight images of three shape classes (some without one of them), every other instance a shot, a few
    labels wrong (so classes score below 1 and shots differ), and one negative shot."""
    from oracle_scenes import CATEGORIES, OracleEncoder, draw_scene

    cfg = get_config("paper", {"model": {"device": "cpu"}})
    names = {c["id"]: c["name"] for c in CATEGORIES}
    rng = np.random.default_rng(3)
    labelled, shots = [], []
    for i in range(8):
        cats = [int(c) for c in rng.choice([7, 23, 61], size=rng.integers(1, 4))]
        image, masks = draw_scene(rng, 200, 240, cats)
        labels = [7 if (c == 23 and i < 3) else c for c in cats]  # discs labelled squares on three images
        labelled.append(LabelledImage(i, image, masks, labels))
        shots += [
            Reference(image, c, names[c], m, image_id=i, annotation_id=f"{i}-{k}")
            for k, (m, c) in enumerate(zip(masks, cats))
            if k % 2 == 0
        ]
    bank = build_bank(shots, cfg, encoder=OracleEncoder())
    negative = build_bank([shots[1]], cfg, encoder=OracleEncoder()).as_negatives()
    return cfg, bank.add(negative), labelled


def _grade_scenes(scenes, **kwargs):
    from oracle_scenes import OracleEncoder

    cfg, bank, labelled = scenes
    return grade(bank, labelled, cfg, proposer=OracleProposer(image_size=256), encoder=OracleEncoder(), **kwargs)


def test_restricted_refinishing_gives_the_report_of_finishing_every_variant_everywhere(scenes, setup, monkeypatch):
    """Finishing a bank without one shot only where it may predict the shot's class, and only its changed
    classes again, reports exactly what finishing every variant on every image in full does (the old way),
    with far fewer full finishes."""
    import ntt.grading.refinish as refinish
    import ntt.grading.report as grading
    from ntt.predict.predictor import Predictor

    finishes = []
    monkeypatch.setattr(Predictor, "finish", _counting(Predictor.finish, finishes))
    fast = [_grade_scenes(scenes).to_dict(), _grade(setup).to_dict()]
    fast_finishes = len(finishes)
    monkeypatch.setattr(grading, "may_predict_own_class", lambda p, pool: np.ones(len(p.bank.shots), bool))
    monkeypatch.setattr(refinish, "same_instances", lambda a, b: False)  # every variant through Predictor.finish
    slow = [_grade_scenes(scenes).to_dict(), _grade(setup).to_dict()]
    assert fast == slow
    assert fast_finishes * 4 < len(finishes) - fast_finishes
    effects = [s["effect"] for s in fast[0]["shots"]]
    assert len(set(effects)) > 2 and any(c["ap50"] not in (None, 1.0) for c in fast[0]["classes"])


def test_grading_holds_one_mask_pool_at_a_time(scenes, monkeypatch):
    """A pool (hundreds of MB at the paper's settings) is let go before the next image's is made, and while the
    shots are measured on an image only its pool is alive, whatever the number of images."""
    import gc
    import weakref

    from ntt.grading.refinish import Refinisher
    from ntt.predict.predictor import Predictor

    made, before_next, while_measuring = [], [], []
    real_pools, real_finish = Predictor.mask_pools, Refinisher.finish

    def alive() -> int:
        gc.collect()
        return sum(ref() is not None for ref in made)

    def mask_pools(self, *args, **kwargs):
        before_next.append(alive())
        pools = real_pools(self, *args, **kwargs)
        made.extend(weakref.ref(p) for p in pools)
        return pools

    def finish(self, *args, **kwargs):
        while_measuring.append(alive())
        return real_finish(self, *args, **kwargs)

    monkeypatch.setattr(Predictor, "mask_pools", mask_pools)
    monkeypatch.setattr(Refinisher, "finish", finish)
    _grade_scenes(scenes)
    assert len(before_next) == len(scenes[2]) and set(before_next) == {0}
    assert while_measuring and set(while_measuring) == {1}


def test_leave_one_out_tells_images_of_the_same_id_from_different_origins_apart(setup):
    """Two reference files both number their image 1: each image is segmented without its own shots only (by
    ``bank.on_image``: id and origin), not without the other file's image 1's shots as well."""
    cfg, _, _ = setup
    image_a, (dog_a, other_a) = look_scene([(60, 0, 0), (70, 2, 1)])
    image_b, (dog_b, other_b) = look_scene([(60, 1, 2), (70, 3, 0)])
    shots = [
        Reference(image_a, DOG, "dog", dog_a, image_id=1, annotation_id="a", extra={"source": "file-a"}),
        Reference(image_b, DOG, "dog", dog_b, image_id=1, annotation_id="b", extra={"source": "file-b"}),
    ]
    bank = build_bank(shots, cfg, encoder=LookEncoder())
    images = [
        LabelledImage(1, image_a, [dog_a, other_a], [DOG, DOG], origin="file-a"),
        LabelledImage(1, image_b, [dog_b, other_b], [DOG, DOG], origin="file-b"),
    ]
    report = grade(bank, images, cfg, proposer=OracleProposer(image_size=256), encoder=LookEncoder())
    assert report.skipped == []
    dog = next(c for c in report.classes if c.name == "dog")
    assert dog.instances == 4 and dog.ap50 > 0, "each image found with the other file's shot"
    assert all(s.effect is not None for s in report.shots), "each shot measured on the other image"
    same_origin = [LabelledImage(1, image_a, [dog_a], [DOG], origin=None)]
    assert grade(bank, same_origin, cfg, proposer=OracleProposer(image_size=256), encoder=LookEncoder()).skipped


def test_long_gradings_say_about_how_long_they_have_left(setup, monkeypatch):
    """Each image gives a step once segmented and once measured; past ten seconds (on the process's monotonic
    clock) each label says about how long is left, from the time each image took so far."""
    import ntt.grading.report as grading
    from ntt.time_left import TimeLeft, duration

    ticks = iter(range(0, 10_000, 30))  # every look at the clock: 30 s later
    monkeypatch.setattr(grading, "TimeLeft", lambda: TimeLeft(clock=lambda: next(ticks)))
    steps = []
    _grade(setup, progress=lambda fraction, label: steps.append((fraction, label)))
    fractions = [f for f, _ in steps]
    assert len(steps) == 2 * len(IMAGES) and fractions == sorted(fractions) and fractions[-1] == 1.0
    assert steps[0][1] == "Segmenting each reference image without its own shots (about 4 min left)"
    assert steps[1][1] == "Measuring each shot's effect on its class (about 3 min left)"
    assert steps[-1][1] == "Measuring each shot's effect on its class"  # done: nothing left to say
    assert [duration(s) for s in (4, 55, 89, 3000, 4000)] == ["10 s", "60 s", "1 min", "50 min", "1 h 7 min"]
