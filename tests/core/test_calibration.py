"""Calibrated thresholds: fitted between observed scores, only with enough evidence, pulled toward the global
threshold, reported with their uncertainty, and refused once the bank or the settings they fit have changed."""

from __future__ import annotations

import pytest
from oracle_scenes import CAT, DOG, LookEncoder, OracleProposer, look_references, look_scene

import ntt.grading.calibration as calibration
from ntt.bank.encoder import build_bank
from ntt.config import derive, get_config
from ntt.grading.calibration import StaleCalibration, calibrate, calibrated_thresholds
from ntt.grading.report import grade
from ntt.predict.predictor import Predictor

NAMES = {DOG: "dog", CAT: "cat"}
# per image: (red, row, col, labelled class or None, is a shot); dogs ~0.7 to the dog shots, toys (190) ~0.5
IMAGES = {
    "a": [(60, 0, 0, DOG, True), (70, 2, 1, DOG, False), (190, 1, 3, None, False)],
    "b": [(60, 1, 1, DOG, True), (70, 3, 2, DOG, False), (190, 0, 3, None, False)],
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


@pytest.fixture
def little_evidence_counts(monkeypatch):
    """The oracle scenes have a handful of dogs: let them be calibrated, at the fitted threshold itself."""
    monkeypatch.setattr(calibration, "MIN_INSTANCES", 1)
    monkeypatch.setattr(calibration, "PRIOR_STRENGTH", 0)


def test_calibrated_thresholds_separate_instances_from_distractors(setup, little_evidence_counts):
    """Dogs score ~0.7 and toys ~0.5: the calibrated dog threshold, midway between them, keeps every dog and
    drops every toy on a new image, where the global default (0) keeps the toys."""
    cfg, bank, _ = setup
    report = _grade(setup)
    dog = report.calibration["classes"]["dog"]
    assert report.calibration["method"] == "f1" and 0.55 < dog["threshold"] < 0.66, "midway, not on a score"
    default = next(c for c in report.classes if c.name == "dog")  # at the global threshold, 0
    default_f1 = 2 * default.precision * default.recall / (default.precision + default.recall)
    assert dog["f1"] > default_f1 + 0.3 and dog["precision"] > default.precision, "the default keeps the toys"
    assert dog["precision_interval"][0] < dog["precision"] <= dog["precision_interval"][1]
    assert "hand-picked" in report.calibration["caveat"]

    calibrated = bank.with_info(calibration=report.calibration)
    image, (dog1, toy1, dog2, toy2) = look_scene([(70, 0, 0), (190, 0, 2), (70, 2, 1), (190, 3, 3)])

    def labels(cfg_):
        inst = Predictor(calibrated, cfg_, OracleProposer(image_size=256), LookEncoder()).predict([image])[0]
        return [(inst.class_ids[i], _which(inst.mask(i), [dog1, toy1, dog2, toy2])) for i in range(len(inst))]

    plain = labels(cfg)
    chosen = labels(derive(cfg, segment={"class_thresholds": calibrated_thresholds(calibrated, cfg)}))
    assert {(DOG, 1), (DOG, 3)} <= set(plain), "without calibration the toys are dogs"
    dogs = {w for c, w in chosen if c == DOG}
    assert {0, 2} <= dogs and not dogs & {1, 3}, "every dog kept, every toy dropped"

    wanted = _grade(setup, target_precision=0.7)
    assert wanted.calibration["method"] == "precision>=0.7" and wanted.calibration["classes"]["dog"]["precision"] >= 0.7
    unreachable = _grade(setup, target_precision=1.0)
    assert "dog" not in unreachable.calibration["classes"], "a precision never reached leaves the global threshold"
    assert "never reached" in unreachable.calibration["left_out"]["dog"]


def test_a_class_with_too_few_instances_keeps_the_global_threshold(setup):
    cfg, bank, _ = setup
    report = _grade(setup)
    assert report.calibration["classes"] == {}
    assert report.calibration["left_out"] == {
        "dog": "5 labelled instance(s), fewer than 10",
        "cat": "2 labelled instance(s), fewer than 10",
    }
    assert calibrated_thresholds(bank.with_info(calibration=report.calibration), cfg) == {}, "nothing overrides"


def test_a_calibration_made_before_teaching_is_not_applied_after_it(setup, little_evidence_counts):
    cfg, bank, _ = setup
    calibrated = bank.with_info(calibration=_grade(setup).calibration)
    assert set(calibrated_thresholds(calibrated, cfg)) == {"dog"}
    taught = calibrated.remove(annotation_ids=["b0"])
    assert taught.info["calibration"] == calibrated.info["calibration"], "teaching copies info across"
    with pytest.raises(StaleCalibration, match="fitted on another version of the bank"):
        calibrated_thresholds(taught, cfg)
    with pytest.raises(StaleCalibration, match=r"other settings \(prompt_mode 'grid' -> 'guided'\)"):
        calibrated_thresholds(calibrated, derive(cfg, segment={"prompt_mode": "guided"}))
    # what does not change scores does not make it stale
    assert calibrated_thresholds(calibrated, derive(cfg, segment={"batch_size": 4, "score_thresh": 0.3}))
    old = calibrated.with_info(calibration={"method": "f1", "classes": {"dog": {"threshold": 0.6}}})
    with pytest.raises(StaleCalibration, match="before calibrations were stamped"):
        calibrated_thresholds(old, cfg)
    with pytest.raises(StaleCalibration, match="no calibrated thresholds"):
        calibrated_thresholds(bank, cfg)


def test_thresholds_are_fitted_between_scores_and_shrunk_toward_the_global_one(setup):
    """Exact small case: 10 instances; the best F1 keeps the scores >= 0.9 (9 hits), the next lower is 0.8."""
    cfg, bank, _ = setup
    cfg = derive(cfg, segment={"score_thresh": 0.2})
    found = [(0.95, True)] * 5 + [(0.9, True)] * 4 + [(0.8, False)] + [(0.4, False)] * 6
    result = calibrate(bank, {DOG: (found, 10), CAT: ([], 0)}, None, cfg)
    dog = result["classes"]["dog"]
    assert dog["fitted"] == pytest.approx(0.85) and dog["weight"] == pytest.approx(0.5)
    assert dog["threshold"] == pytest.approx(0.525), "halfway to the global 0.2 with 10 instances"
    # measured at the threshold applied (0.525 keeps the 0.8 too): 9 of 10 kept are right, 9 of 10 found
    assert dog["precision"] == pytest.approx(0.9) and dog["recall"] == pytest.approx(0.9)
    assert dog["recall_interval"] == pytest.approx([0.5958, 0.9821], abs=1e-4)  # Wilson 95%, 9 of 10
    assert result["global_threshold"] == 0.2 and result["fingerprint"] == bank.fingerprint
    more = calibrate(bank, {DOG: (found * 3, 30), CAT: ([], 0)}, None, cfg)["classes"]["dog"]
    assert more["threshold"] == pytest.approx(0.75 * 0.85 + 0.25 * 0.2), "more evidence, less pull"


def _which(mask, objects) -> int | None:
    for k, obj in enumerate(objects):
        if (mask & obj).sum() / (mask | obj).sum() >= 0.5:
            return k
    return None
