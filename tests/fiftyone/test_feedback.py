"""The review loop in the SDK: predictions marked as negatives go into the bank and change the next run."""

from __future__ import annotations

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
