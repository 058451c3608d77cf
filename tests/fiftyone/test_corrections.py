"""Corrections made with FiftyOne's own annotation tools teach the bank through ``promote``: an edited mask is a
positive with the corrected mask, a moved box a positive with that box, a deleted prediction a negative of its
class, an object drawn into the field a positive. (The App's Annotate tab stores its edits the same way:
``test_app_annotate.py`` checks that in the real browser.)"""

from __future__ import annotations

import fiftyone as fo
import numpy as np
import pytest

import ntt.fo as nfo
import ntt.fo.review.feedback as feedback
from ntt.fo.references import full_image_mask
from ntt.fo.review.corrections import corrections


@pytest.fixture
def predicted(dataset, random_config):
    nfo.mark_references(dataset.limit(3))
    nfo.build_bank(dataset, "pets", label_field="gt", config=random_config)
    target = dataset.skip(3).limit(1)
    nfo.segment(target, "pets", label_field="pred", max_instances=5)
    dataset.compute_metadata()
    sample = dataset[target.first().id]
    assert len(sample.pred.detections) >= 3
    return dataset, sample


@pytest.fixture
def lessons(monkeypatch):
    """The references each promote encodes: [(positives, negatives)]."""
    seen = []
    real = feedback.lesson_steps

    def spy(bank, positives, negatives, cfg, **kwargs):
        seen.append((list(positives), list(negatives)))
        return (yield from real(bank, positives, negatives, cfg, **kwargs))

    monkeypatch.setattr(feedback, "lesson_steps", spy)
    return seen


def _correct(sample):
    """Paint the first prediction's mask, move the second one's box, delete the third, draw a new object."""
    painted, moved, deleted = sample.pred.detections[:3]
    mask = np.asarray(painted.get_mask()).astype(bool)
    mask[: max(1, mask.shape[0] // 2)] = True  # the top half was missed
    painted.mask = mask
    x, y, w, h = moved.bounding_box
    moved.bounding_box = [x + 0.01, y, w, h]
    sample.pred.detections = [d for d in sample.pred.detections if d.id != deleted.id]
    drawn = fo.Detection(label=painted.label, bounding_box=[0.05, 0.05, 0.2, 0.2], mask=np.ones((20, 30), bool))
    sample.pred.detections.append(drawn)
    sample.save()
    return painted, moved, deleted, drawn


def test_annotation_edits_become_shots_with_the_corrections(predicted, lessons):
    ds, sample = predicted
    painted, moved, deleted, drawn = _correct(sample)
    counts = nfo.forms.review_counts(ds, "pred")
    assert counts == {"correct": 0, "wrong": 0, "relabelled": 0, "edited": 2, "deleted": 1, "drawn": 1}

    bank = nfo.promote_predictions(ds, "pets", "pred")
    [(positives, negatives)] = lessons
    width, height = sample.metadata.width, sample.metadata.height
    by_id = {r.annotation_id: r for r in positives}
    assert set(by_id) == {painted.id, moved.id, drawn.id}
    assert np.array_equal(by_id[painted.id].mask, full_image_mask(painted, width, height)), "the corrected mask"
    x, y, w, h = moved.bounding_box
    assert by_id[moved.id].mask is None, "a moved box no longer fits the old mask: SAM2 makes one from the box"
    assert by_id[moved.id].box == pytest.approx([x * width, y * height, w * width, h * height])
    assert by_id[drawn.id].class_name == drawn.label and by_id[drawn.id].mask is not None
    [negative] = negatives
    assert (negative.annotation_id, negative.class_name, negative.mask) == (deleted.id, deleted.label, None)
    x, y, w, h = deleted.bounding_box
    assert negative.box == pytest.approx([x * width, y * height, w * width, h * height]), "its recorded box"

    verdicts = sorted(s["promoted"] for s in bank.shots if s.get("promoted"))
    assert verdicts == ["deleted", "drawn", "edited", "edited"]
    again = nfo.promote_predictions(ds, "pets", "pred")
    assert len(again.shots) == len(bank.shots), "promoted once: nothing new the second time"


def test_tags_still_work_and_an_unrecorded_field_has_no_edits(predicted):
    ds, sample = predicted
    first = sample.pred.detections[0]
    first.tags = ["correct"]
    sample.save()
    assert nfo.forms.review_counts(ds, "pred")["correct"] == 1
    assert corrections(sample.pred).edited == []

    _correct(sample)
    sample.pred.ntt_predicted = None  # a field written before predictions were recorded, or by another tool
    sample.save()
    assert corrections(ds[sample.id].pred) == corrections(None)
    assert nfo.forms.review_counts(ds, "pred") == {k: int(k == "correct") for k in feedback.VERDICTS}


def test_nothing_reviewed_says_how_to_review(predicted):
    ds, _ = predicted
    with pytest.raises(nfo.NTTFiftyOneError, match="Annotate tab"):
        nfo.promote_predictions(ds, "pets", "pred")


def test_a_view_that_hides_predictions_promotes_what_it_shows_and_deletes_nothing(predicted, lessons):
    """A lasso in the Embeddings panel, or a confidence filter in the sidebar, hides predictions from the view: they
    are not deleted ones (which would become negatives), and only the shown labels' verdicts are promoted."""
    ds, sample = predicted
    first, second = sample.pred.detections[:2]
    first.tags, second.tags = ["correct"], ["wrong"]
    sample.save()
    shown = ds.select_labels(ids=[first.id], fields="pred")
    assert nfo.forms.review_counts(shown, "pred") == {k: int(k == "correct") for k in feedback.VERDICTS}
    nfo.promote_predictions(shown, "pets", "pred")
    [(positives, negatives)] = lessons
    assert [r.annotation_id for r in positives] == [first.id] and negatives == []
