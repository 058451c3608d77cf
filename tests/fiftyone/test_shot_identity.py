"""A shot is the label it was made from (its dataset, sample and label id), and one rule says whether a bank has it
already (``MemoryBank.holds``): for ``add_references``, ``add_negatives`` and ``promote`` alike. A label made a
negative of its class can become a positive of it later, and the reverse: the newer verdict replaces the older."""

from __future__ import annotations

import logging

import pytest

import ntt.fo as nfo
from ntt.fo import banks


@pytest.fixture
def pets(dataset, random_config):
    nfo.mark_references(dataset.limit(3))
    bank = nfo.build_bank(dataset, "pets", label_field="gt", config=random_config)
    return dataset, bank


def _label_of_a_bank_class(ds, bank):
    """A ``gt`` label of a sample that is not a reference, of one of the bank's classes (a negative needs it)."""
    for sample in ds.skip(3):
        for det in sample.gt.detections if sample.gt else []:
            if det.label in bank.class_names:
                return sample, det
    raise AssertionError("no label of the bank's classes outside its references")


def _kinds(bank, label_id) -> list[tuple[str, bool]]:
    names = dict(zip(bank.class_ids, bank.class_names))
    return [
        (names[int(c)], bool(n))
        for s, c, n in zip(bank.shots, bank.shot_class_ids, bank.negative)
        if s["annotation_id"] == label_id
    ]


def test_shots_record_their_dataset(pets):
    ds, bank = pets
    assert {s["source"] for s in bank.shots} == {f"dataset:{ds._doc.id}"}


def test_a_negative_becomes_a_reference_then_a_negative_again(pets, caplog):
    """add_negatives, then the same label tagged as a reference: add_references makes it a positive (it did not
    before: the kind was ignored), the negative gone; add_references again adds nothing; add_negatives again turns
    it back."""
    ds, bank = pets
    sample, det = _label_of_a_bank_class(ds, bank)
    negative = nfo.add_negatives(ds, "pets", "gt", label_ids=[det.id])
    assert _kinds(negative, det.id) == [(det.label, True)]

    nfo.mark_references(ds, "gt", label_ids=[det.id])
    with caplog.at_level(logging.INFO, logger="ntt"):
        positive = nfo.add_references(ds, "pets")
    assert _kinds(positive, det.id) == [(det.label, False)] and len(positive.shots) == len(negative.shots)
    assert f"was a negative of {det.label!r} and is now a positive" in caplog.text
    assert sample.id in nfo.get_bank_info(ds, "pets")["shot_sample_ids"], "a reference now"

    path = nfo.get_bank_info(ds, "pets")["bank_path"]
    assert nfo.add_references(ds, "pets").shots == positive.shots, "twice: nothing new the second time"
    assert nfo.get_bank_info(ds, "pets")["bank_path"] == path, "nothing stored"

    again = nfo.add_negatives(ds, "pets", "gt", label_ids=[det.id])
    assert _kinds(again, det.id) == [(det.label, True)] and again.shots_per_class() == bank.shots_per_class()


def test_promote_turns_a_negative_into_a_positive_and_back(pets):
    ds, _ = pets
    nfo.segment(ds, "pets", label_field="pred", max_instances=5)
    sample = ds.exists("pred").first()
    det = sample.pred.detections[0]
    assert _kinds(nfo.add_negatives(ds, "pets", "pred", label_ids=[det.id]), det.id) == [(det.label, True)]

    det.tags = ["correct"]
    sample.save()
    positive = nfo.promote_predictions(ds, "pets", "pred")
    assert _kinds(positive, det.id) == [(det.label, False)]
    assert nfo.promote_predictions(ds, "pets", "pred").shots == positive.shots, "promoting again adds nothing"

    det.tags = ["wrong"]
    sample.save()
    assert _kinds(nfo.promote_predictions(ds, "pets", "pred"), det.id) == [(det.label, True)]


def test_a_clones_bank_holds_the_clones_labels(pets):
    """A clone keeps its labels' ids and its banks: its references are the bank's shots already."""
    ds, bank = pets
    clone = ds.clone()
    try:
        path = nfo.get_bank_info(clone, "pets")["bank_path"]
        assert nfo.add_references(clone, "pets").shots == bank.shots
        assert nfo.get_bank_info(clone, "pets")["bank_path"] == path
    finally:
        clone.delete()


def test_shots_of_an_older_bank_without_source_are_not_added_twice(pets, random_config):
    """A bank stored before shots recorded their source: its shots match by sample, label and image path."""
    ds, bank = pets
    read = banks.read_bank(ds, "pets")
    legacy = [{k: v for k, v in s.items() if k != "source"} for s in bank.shots]
    older = type(bank)(bank.classes, bank.shot_features, bank.shot_class_ids, legacy, bank.encoder, bank.info)
    banks.store_change(ds, read, lambda _current: older, random_config)
    assert all("source" not in s for s in nfo.load_bank(ds, "pets").shots)
    assert nfo.add_references(ds, "pets").shots == legacy
