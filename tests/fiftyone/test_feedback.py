"""The review loop in the SDK: predictions marked as negatives go into the bank and change the next run."""

from __future__ import annotations

import json

import numpy as np
import pytest

import ntt.fo as nfo


@pytest.fixture
def segmented(dataset, random_config):
    nfo.mark_references(dataset.limit(3))
    nfo.build_bank(dataset, "pets", label_field="gt", config=random_config)
    nfo.segment(dataset, "pets", label_field="pred", max_instances=10)
    return dataset


def _iou(a, b) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _full(det, sample):
    from ntt.fo.references import full_image_mask

    return full_image_mask(det, sample.metadata.width, sample.metadata.height)


def test_a_false_positive_made_negative_is_pushed_down_next_run(segmented):
    ds = segmented
    ds.compute_metadata()
    sample = ds.exists("pred").first()
    false_positive = sample.pred.detections[0]
    before = nfo.segment(ds, "pets", label_field="again", max_instances=10)
    bank = nfo.add_negatives(ds, "pets", "pred", label_ids=[false_positive.id])
    assert bank.negatives_per_class() == {false_positive.label: 1}
    shot = next(s for s in bank.shots if s.get("negative"))
    assert (shot["image_id"], shot["annotation_id"], shot["label_field"]) == (sample.id, false_positive.id, "pred")
    assert nfo.get_bank_info(ds, "pets")["shot_sample_ids"] == sorted(ds.limit(3).values("id")), "still a target"

    after = nfo.segment(ds, "pets", label_field="again", max_instances=10, overwrite=True)
    assert after["samples"] == before["samples"], "the sample that gave the negative is still segmented"
    sample = ds[sample.id]
    fp_mask = _full(false_positive, sample)
    same = [
        d for d in sample.again.detections if d.label == false_positive.label and _iou(_full(d, sample), fp_mask) > 0.9
    ]
    assert same and all(d["negative_cosine"] > 0 for d in same)
    # random features are alike (cosines ~0.98), so the decay is small, but it is there: the same mask scores less
    assert max(d.confidence for d in same) < false_positive.confidence
    others = [d for s in ds.exists("again") for d in s.again.detections if d.label != false_positive.label]
    assert all(d["negative_cosine"] == 0 for d in others)

    again = nfo.add_negatives(ds, "pets", "pred", label_ids=[false_positive.id])  # nothing new
    assert len(again.shots) == len(bank.shots)


def test_negatives_must_be_of_the_banks_classes(segmented):
    ds = segmented
    sample = ds.exists("pred").first()
    det = sample.pred.detections[0]
    det.label = "unicorn"
    sample.save()
    with pytest.raises(nfo.NTTFiftyOneError, match="unicorn"):
        nfo.add_negatives(ds, "pets", "pred", label_ids=[det.id])
    with pytest.raises(nfo.NTTFiftyOneError, match="no labels"):
        nfo.add_negatives(ds, "pets", "pred", label_ids=["000000000000000000000000"])
    np.testing.assert_array_equal(nfo.load_bank(ds, "pets").negative, False)


def test_the_mark_negatives_operator_takes_the_selected_labels(segmented):
    from test_plugin import _form, _stream

    ds = segmented
    sample = ds.exists("pred").first()
    picked = sample.pred.detections[:2]
    selected = [{"label_id": d.id, "sample_id": sample.id, "field": "pred"} for d in picked]
    form = _form("mark_negatives", ds, {"bank": "pets"})
    assert form.invalid and "No labels selected" in form.error_message
    form = _form("mark_negatives", ds, {"bank": "pets"}, selected_labels=selected)
    assert not form.invalid
    messages, error = _stream("mark_negatives", ds, {"bank": "pets", "device": "cpu"}, selected_labels=selected)
    assert error is None
    result = messages[-1][1]["results"]
    expected = {}
    for d in picked:
        expected[d.label] = expected.get(d.label, 0) + 1
    assert result["added"] == 2 and result["negatives_per_class"] == expected
    assert nfo.load_bank(ds, "pets").negatives_per_class() == expected


def test_promote_turns_a_review_into_shots_and_references(segmented):
    ds = segmented
    sample = ds.exists("pred").first()
    right, wrong, renamed = sample.pred.detections[:3]
    right.tags, wrong.tags = ["correct"], ["wrong"]
    old_label, renamed.label = renamed.label, "toy"
    sample.save()
    before = nfo.load_bank(ds, "pets")
    bank = nfo.promote_predictions(ds, "pets", "pred")

    gained = {k: bank.shots_per_class().get(k, 0) - before.shots_per_class().get(k, 0) for k in bank.class_names}
    assert gained == {**dict.fromkeys(bank.class_names, 0), **_counts([right.label, "toy"])}
    assert bank.negatives_per_class() == _counts([wrong.label, old_label])
    verdicts = {(s["annotation_id"], bool(s.get("negative"))): s["promoted"] for s in bank.shots if "promoted" in s}
    assert verdicts == {
        (right.id, False): "correct",
        (wrong.id, True): "wrong",
        (renamed.id, False): "relabelled",
        (renamed.id, True): "relabelled",
    }
    assert sample.id in nfo.get_bank_info(ds, "pets")["shot_sample_ids"], "a promoted sample is a reference now"
    assert nfo.promote_predictions(ds, "pets", "pred").shots == bank.shots, "promoting again adds nothing"

    summary = nfo.segment(ds, "pets", label_field="next", max_instances=5)
    assert ds[sample.id]["next"] is None and summary["samples"] == len(ds) - 4
    assert "toy" in bank.class_names


def test_references_behind_predictions_are_the_shots_they_matched(segmented):
    ds = segmented
    sample = ds.exists("pred").first()
    picked = [d.id for d in sample.pred.detections[:2]]
    view = nfo.load_references_view(ds, predictions="pred", label_ids=picked)
    shown = set(view.values("gt.detections.id", unwind=True))
    assert shown == {d["shot_label_id"] for d in sample.pred.detections[:2]}
    assert set(view.values("id")) <= set(ds.limit(3).values("id"))
    with pytest.raises(nfo.NTTFiftyOneError, match="no provenance"):
        nfo.load_references_view(ds, predictions="gt")
    with pytest.raises(nfo.NTTFiftyOneError, match="not both"):
        nfo.load_references_view(ds, predictions="pred", grade_key="g")
    assert sorted(nfo.load_references_view(ds).values("id")) == nfo.forms.reference_ids(ds)


def _counts(labels) -> dict[str, int]:
    out: dict[str, int] = {}
    for label in labels:
        out[label] = out.get(label, 0) + 1
    return out


def test_promote_and_show_references_operators(segmented):
    import asyncio

    from fiftyone.operators.executor import execute_or_delegate_operator
    from test_plugin import PLUGIN, _form, _request, _stream

    ds = segmented
    sample = ds.exists("pred").first()
    first = sample.pred.detections[0]
    form = _form("promote_corrections", ds, {"bank": "pets", "label_field": "pred"})
    assert form.invalid and "Nothing reviewed in 'pred'" in form.error_message
    first.tags = ["correct"]
    sample.save()
    form = _form("promote_corrections", ds, {"bank": "pets", "label_field": "pred"})
    assert not form.invalid
    messages, error = _stream("promote_corrections", ds, {"bank": "pets", "label_field": "pred", "device": "cpu"})
    assert error is None and messages[-1][1]["results"]["added"] == 1

    selected = [{"label_id": first.id, "sample_id": sample.id, "field": "pred"}]
    assert _form("show_references", ds, {}).invalid
    assert not _form("show_references", ds, {}, selected_labels=selected).invalid
    result = asyncio.run(
        execute_or_delegate_operator(f"{PLUGIN}/show_references", _request(ds, {}, selected_labels=selected))
    )
    assert result.error is None and result.result == {"samples": 1}
    [shown] = [r.params["view"] for r in result.executor._requests if r.operator_uri.endswith("set_view")]
    [stage] = shown  # the reference label behind the prediction, selected
    assert stage["_cls"].endswith("SelectLabels") and dict(stage["kwargs"])["ids"] == [first["shot_label_id"]]


def test_grade_references_reports_every_shot_and_calibrates(dataset, random_config):
    ds = dataset
    nfo.mark_references(ds.limit(3))
    bank = nfo.build_bank(ds, "pets", label_field="gt", config=random_config)
    report = nfo.grade_references(ds, "pets", calibrate=True, grade_key="pets_grades")
    assert len(report.shots) == len(bank.shots) and {c.name for c in report.classes} == set(bank.class_names)
    per_class = {c.name: c.instances for c in report.classes}
    crowd = lambda d: d.has_field("iscrowd") and d["iscrowd"]  # noqa: E731 - crowd regions are not instances
    labelled = [d.label for s in ds.limit(3) for d in s.gt.detections if d.label in bank.class_names and not crowd(d)]
    assert per_class == {name: labelled.count(name) for name in bank.class_names}, "ground truth: the reference field"
    stored = nfo.load_bank(ds, "pets")
    assert stored.info["calibration"] == report.calibration and stored.fingerprint == bank.fingerprint
    # the report is a FiftyOne run of the dataset, loadable the FiftyOne way; it is not a bank
    assert "pets_grades" in ds.list_runs() and nfo.list_banks(ds) == ["pets"]
    stored_report = ds.load_run_results("pets_grades").report
    assert [s["annotation_id"] for s in stored_report["shots"]] == [s.annotation_id for s in report.shots]
    assert stored_report["classes"] == json.loads(json.dumps(report.to_dict()["classes"]))
    worst = nfo.load_references_view(ds, grade_key="pets_grades", count=2)
    assert set(worst.values("gt.detections.id", unwind=True)) == {str(s.annotation_id) for s in report.shots[:2]}
    with pytest.raises(nfo.NTTFiftyOneError, match="not an NTT grading"):
        nfo.grade_references(ds, "pets", grade_key="pets")  # a bank's key is not a grading's

    # thresholds="calibrated" takes the stored thresholds (set here: random weights rarely match a label)
    scores = sorted(d.confidence for d in _segment(ds, None))
    _calibrate(ds, {n: scores[len(scores) // 2] for n in bank.class_names})
    kept = [d.confidence for d in _segment(ds, "calibrated")]
    assert kept and min(kept) >= scores[len(scores) // 2] and len(kept) < len(scores)


def _segment(ds, thresholds):
    nfo.segment(ds.skip(3).limit(3), "pets", label_field="graded", thresholds=thresholds, overwrite=True)
    return [d for s in ds.skip(3).limit(3) for d in s.graded.detections]


def test_grade_operator_reports_opens_the_worst_shots_and_prefills_the_segment_form(dataset, random_config):
    from test_plugin import _form, _stream

    ds = dataset
    nfo.mark_references(ds.limit(3))
    bank = nfo.build_bank(ds, "pets", label_field="gt", config=random_config)
    assert not _form("grade_references", ds, {"bank": "pets"}).invalid
    params = {"bank": "pets", "calibrate": True, "device": "cpu"}
    messages, error = _stream("grade_references", ds, params)
    assert error is None
    result = messages[-1][1]["results"]
    assert result["report"].startswith("| class |") and len(result["worst_label_ids"]) == 5
    [view] = [p["view"] for uri, p in messages if uri.endswith("set_view")]
    assert dict(view[0]["kwargs"])["ids"] == result["worst_label_ids"]
    assert set(result["worst_label_ids"]) <= {str(s["annotation_id"]) for s in bank.shots}

    info = nfo.get_bank_info(ds, "pets")
    calibrated = info["calibrated_thresholds"]
    assert calibrated == {
        k: v["threshold"] for k, v in nfo.load_bank(ds, "pets").info["calibration"]["classes"].items()
    }
    form = _form("segment_with_bank", ds, {"bank": "pets", "label_field": "p"})
    box = form.type.properties["per_class"]
    assert box.default == bool(calibrated)
    if calibrated:  # random weights may match no label: then nothing is calibrated and the table stays closed
        table = form.type.properties["class_table"].type.properties
        names = info["classes"]
        assert {names[int(k[1:])]: p.default for k, p in table.items() if p.default is not None} == calibrated


def _calibrate(ds, thresholds: dict[str, float]) -> None:
    """Store calibrated thresholds in bank "pets" as a grading with calibrate=True would."""
    from ntt.fo.banks import _store
    from ntt.fo.checks import settings_here
    from ntt.grading.calibration import calibrate

    info, bank = nfo.get_bank_info(ds, "pets"), nfo.load_bank(ds, "pets")
    cfg = settings_here(info["config"])
    bank.info["calibration"] = {
        **calibrate(bank, {}, None, cfg),
        "classes": {k: {"threshold": v} for k, v in thresholds.items()},
    }
    _store(ds, "pets", bank, info["label_field"], info["tag"], cfg)
