"""The references grade themselves (leave-one-out), on oracle scenes where the bad shot is known.

Four reference images: two with a good dog shot, one whose "dog" shot is really a toy (mislabelled), one with
a cat shot. Every image also has labelled dogs that look a little different from the shots (``DOG_HERE``:
cosine 0.7 to a good dog shot), and unlabelled toys (cosine 0.5). With the mislabelled shot in the dog
prototype, toys outrank the real dogs; without it they do not: the report must rank it the most harmful.
"""

from __future__ import annotations

import numpy as np
import pytest
from oracle_scenes import CAT, DOG, LookEncoder, OracleProposer, look_scene

from ntt.bank_encoder import build_bank
from ntt.cache import CandidateStore
from ntt.config import get_config
from ntt.grading import LabelledImage, grade
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
    labelled, shots = [], []
    for image_id, objects in IMAGES.items():
        image, masks = look_scene([(red, row, col) for red, row, col, *_ in objects])
        cls = [(m, c, shot, k) for k, (m, (*_, c, shot)) in enumerate(zip(masks, objects)) if c is not None]
        labelled.append(LabelledImage(image_id, image, [m for m, *_ in cls], [c for _, c, *_ in cls]))
        shots += [
            Reference(image, c, NAMES[c], m, image_id=image_id, annotation_id=f"{image_id}{k}")
            for m, c, s, k in cls
            if s
        ]
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


def test_calibrated_thresholds_separate_instances_from_distractors(setup):
    """On the bank without the bad shot, dogs score ~0.7 and toys ~0.5: the calibrated dog threshold keeps
    every dog and drops every toy on a new image, where the global default (0) keeps the toys."""
    from ntt.calibration import calibrated_thresholds
    from ntt.config import derive
    from ntt.predictor import Predictor

    cfg, bank, labelled = setup
    fixed = bank.remove(annotation_ids=["c0"])
    report = grade(fixed, labelled, cfg, proposer=OracleProposer(image_size=256), encoder=LookEncoder())
    dog = report.calibration["classes"]["dog"]
    assert report.calibration["method"] == "f1" and 0.5 < dog["threshold"] <= 0.71
    default = next(c for c in report.classes if c.name == "dog")  # at the global threshold, 0
    default_f1 = 2 * default.precision * default.recall / (default.precision + default.recall)
    assert dog["f1"] > default_f1 + 0.3 and dog["precision"] > default.precision, "the default keeps the toys"

    fixed.info["calibration"] = report.calibration
    image, (dog1, toy1, dog2, toy2) = look_scene([(70, 0, 0), (190, 0, 2), (70, 2, 1), (190, 3, 3)])

    def labels(cfg_):
        inst = Predictor(fixed, cfg_, OracleProposer(image_size=256), LookEncoder()).predict([image])[0]
        return [(inst.class_ids[i], _which(inst.mask(i), [dog1, toy1, dog2, toy2])) for i in range(len(inst))]

    plain = labels(cfg)
    calibrated = labels(derive(cfg, segment={"class_thresholds": calibrated_thresholds(fixed)}))
    assert {(DOG, 1), (DOG, 3)} <= set(plain), "without calibration the toys are dogs"
    dogs = {w for c, w in calibrated if c == DOG}
    assert {0, 2} <= dogs and not dogs & {1, 3}, "every dog kept, every toy dropped"

    wanted = grade(
        fixed, labelled, cfg, proposer=OracleProposer(image_size=256), encoder=LookEncoder(), target_precision=0.7
    )
    assert wanted.calibration["method"] == "precision>=0.7" and wanted.calibration["classes"]["dog"]["precision"] >= 0.7
    unreachable = grade(
        fixed, labelled, cfg, proposer=OracleProposer(image_size=256), encoder=LookEncoder(), target_precision=1.0
    )
    assert "dog" not in unreachable.calibration["classes"], "a precision never reached leaves the global threshold"


def _which(mask, objects) -> int | None:
    for k, obj in enumerate(objects):
        if (mask & obj).sum() / (mask | obj).sum() >= 0.5:
            return k
    return None


def test_an_unreadable_reference_image_is_skipped_with_its_reason_and_the_rest_graded(setup, tmp_path):
    """A reference image that cannot be read now (deleted, truncated, a folder): grading says which and why and
    grades the others, instead of stopping with a traceback."""
    cfg, bank, labelled = setup
    broken = tmp_path / "gone.jpg"
    images = [LabelledImage(labelled[0].image_id, broken, [], []), *labelled[1:]]
    report = grade(bank, images, cfg, proposer=OracleProposer(image_size=256), encoder=LookEncoder())
    assert report.skipped == [{"image_id": "a", "reason": f"{broken}: file not found"}]
    assert next(c for c in report.classes if c.name == "dog").instances == 5, "the other images' dogs are graded"
