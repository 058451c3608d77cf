"""Grading reads each shot's ground truth from where it came from: a promoted sample is graded against its reviewed
predictions (what the reviewer said is there), not the reference field, where it usually has nothing."""

from __future__ import annotations

import pytest

import ntt.fo as nfo
import ntt.grading.report as grading


@pytest.fixture
def promoted(dataset, random_config):
    """Bank "pets" from three reference samples, plus a target whose top prediction was reviewed correct and the
    others wrong, then promoted: a reference sample whose ground truth is its reviewed predictions."""
    nfo.mark_references(dataset.limit(3))
    nfo.build_bank(dataset, "pets", label_field="gt", config=random_config)
    target = dataset.skip(3).limit(1)
    nfo.segment(target, "pets", label_field="pred", max_instances=3)
    sample = target.first()
    dets = sorted(sample.pred.detections, key=lambda d: -d.confidence)
    assert len(dets) == 3
    for k, det in enumerate(dets):
        det.tags = ["correct" if k == 0 else "wrong"]
    sample.save()
    nfo.promote_predictions(dataset, "pets", "pred")
    return dataset, sample, dets


@pytest.fixture
def scored(monkeypatch):
    """The (score, matched a labelled instance) points grading hands calibration, per class id."""
    seen = {}
    real = grading.calibrate

    def spy(bank, points, *args, **kwargs):
        seen.update(points)
        return real(bank, points, *args, **kwargs)

    monkeypatch.setattr(grading, "calibrate", spy)
    return seen


def test_a_promoted_samples_correct_detection_counts_as_a_true_positive(promoted, scored):
    ds, sample, (right, *wrong) = promoted
    report = nfo.grade_references(ds, "pets")
    assert sample.id not in [s["image_id"] for s in report.skipped]
    bank = nfo.load_bank(ds, "pets")
    cid = dict(zip(bank.class_names, bank.class_ids))[right.label]
    # without its own shots the sample is segmented with the bank it was predicted with: the same top mask
    hits = [hit for score, hit in scored[cid][0] if score == pytest.approx(right.confidence, abs=1e-5)]
    assert hits and all(hits), "the detection the reviewer called correct is a true positive"
    labelled_in_refs = sum(
        d.label == right.label for s in ds.limit(3) for d in s.gt.detections if not d.get_field("iscrowd")
    )
    assert scored[cid][1] == labelled_in_refs + 1, "its ground truth: the reviewed label, not the gt field"


def test_a_promoted_sample_with_unreviewed_predictions_is_left_out_and_said_so(promoted):
    ds, sample, (right, *wrong) = promoted
    stored = ds[sample.id]
    for det in stored.pred.detections:
        if det.id == wrong[0].id:
            det.tags = []  # nobody reviewed it: is it an object or not?
    stored.save()
    report = nfo.grade_references(ds, "pets")
    [skip] = [s for s in report.skipped if s["image_id"] == sample.id]
    assert skip["reason"].startswith("ground truth unknown: 1 prediction(s) in 'pred' not reviewed")
