"""Negative shots and provenance, on oracle scenes through the real bank, matching and post-processing.

The scene: the bank's dogs look like ``DOG`` and its cats like ``CAT``; the target's dogs look a little
different (``DOG_HERE``, cosine 0.7 to the dog prototype), and a toy (``TOY``, cosine 0.75 to it) is taken
for a dog and outranks the real ones. One negative shot of the toy for "dog" must push the toys below every
real dog, leaving the dogs' detections and scores untouched.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from oracle_scenes import CAT, DOG, LOOKS, LookEncoder, OracleProposer
from oracle_scenes import look_scene as _scene

from ntt.bank.encoder import build_bank
from ntt.bank.memory import BankError, MemoryBank
from ntt.config import get_config
from ntt.predict import postprocess as pp
from ntt.predict.predictor import Predictor
from ntt.types import Reference


def _refs(objects, class_ids, first_id: int) -> list[Reference]:
    image, masks = _scene(objects)
    names = {DOG: "dog", CAT: "cat"}
    return [
        Reference(image, cid, names[cid], mask, image_id=f"img{first_id}", annotation_id=first_id + k)
        for k, (mask, cid) in enumerate(zip(masks, class_ids))
    ]


@pytest.fixture(scope="module")
def cfg():
    return get_config("paper", {"model": {"device": "cpu"}})


@pytest.fixture(scope="module")
def bank(cfg):
    refs = _refs([(60, 0, 0), (60, 2, 2), (120, 0, 3)], [DOG, DOG, CAT], first_id=100)
    return build_bank(refs, cfg, encoder=LookEncoder())


@pytest.fixture(scope="module")
def target():
    return _scene([(70, 0, 0), (180, 0, 2), (70, 2, 1), (180, 3, 3)])  # dog, toy, dog, toy


def _predict(bank, cfg, image):
    return Predictor(bank, cfg, proposer=OracleProposer(image_size=256), encoder=LookEncoder()).predict([image])[0]


def _best_on(inst, mask) -> int:
    """The highest-scoring detection whose mask overlaps ``mask`` (IoU >= 0.5)."""
    for i in range(len(inst)):
        pred = inst.mask(i)
        if (pred & mask).sum() / (pred | mask).sum() >= 0.5:
            return i
    raise AssertionError("no detection on this object")


def test_one_negative_suppresses_a_confuser_and_keeps_the_true_class(bank, cfg, target):
    image, (dog1, toy1, dog2, toy2) = target
    before = _predict(bank, cfg, image)
    dogs, toys = [_best_on(before, m) for m in (dog1, dog2)], [_best_on(before, m) for m in (toy1, toy2)]
    assert all(before.class_ids[i] == DOG for i in dogs + toys)
    assert max(toys) < min(dogs), "without a negative the toys outrank the real dogs"

    negative = build_bank(_refs([(180, 1, 1)], [DOG], first_id=900), cfg, encoder=LookEncoder()).as_negatives()
    taught = bank.add(negative)
    assert taught.negatives_per_class() == {"dog": 1} and taught.shots_per_class() == bank.shots_per_class()
    after = _predict(taught, cfg, image)
    dogs_after = [_best_on(after, m) for m in (dog1, dog2)]
    toys_after = [_best_on(after, m) for m in (toy1, toy2)]
    assert sorted(dogs_after) == [0, 1], "the real dogs are the two best detections now"
    assert after.scores[dogs_after].tolist() == before.scores[dogs].tolist(), "the dogs' scores are untouched"
    assert max(after.scores[toys_after]) < min(after.scores[dogs_after])
    expected = 0.75 * math.exp(-(1.0 - 0.75) / cfg.segment.negative_sigma)  # s_pos exp(-(s_neg - s_pos) / sigma)
    np.testing.assert_allclose(after.scores[toys_after[0]], expected, atol=0.02)

    # the negative shows in the toys' provenance, and a bank that drops it scores as before, bit for bit
    assert after.details["negative_cosine"][toys_after].min() > 0.99
    again = _predict(taught.remove(annotation_ids=[900]), cfg, image)
    np.testing.assert_array_equal(again.scores, before.scores)
    np.testing.assert_array_equal(again.boxes, before.boxes)


def test_each_detection_names_its_nearest_shot_and_the_cosines_behind_it(bank, cfg, target):
    image, (dog1, *_rest) = target
    inst = _predict(bank, cfg, image)
    i = _best_on(inst, dog1)
    shot = bank.shots[int(inst.details["shot"][i])]
    assert shot["class_id"] == DOG and shot["annotation_id"] in (100, 101) and not shot.get("negative")
    np.testing.assert_allclose(inst.details["class_cosine"][i], 0.7, atol=0.02)
    np.testing.assert_allclose(inst.details["shot_cosine"][i], 0.7, atol=0.02)
    np.testing.assert_allclose(inst.details["margin"][i], 0.7 - LOOKS[70][2], atol=0.02)  # dog vs cat
    assert inst.details["sam_iou"][i] == pytest.approx(0.95) and inst.details["negative_cosine"][i] == 0
    assert set(inst.details) == {"shot", "shot_cosine", "class_cosine", "margin", "negative_cosine", "sam_iou"}
    assert all(len(v) == len(inst) for v in inst.details.values())
    sub = inst[[i]]
    assert sub.details["shot"].tolist() == [inst.details["shot"][i]]


def test_each_detection_keeps_the_embedding_its_class_was_matched_with(bank, cfg, target):
    image, (dog1, toy1, dog2, toy2) = target
    inst = _predict(bank, cfg, image)
    assert inst.embeddings.shape == (len(inst), 3) and inst.embeddings.dtype == np.float32
    for mask, look in ((dog1, 70), (toy1, 180), (dog2, 70), (toy2, 180)):
        np.testing.assert_allclose(inst.embeddings[_best_on(inst, mask)], LOOKS[look], atol=0.02)
    dog_prototype = np.asarray(LOOKS[60])  # the bank's dogs all look alike
    np.testing.assert_allclose(inst.embeddings @ dog_prototype, inst.details["class_cosine"], atol=1e-5)
    assert inst[[2, 0]].embeddings.tolist() == inst.embeddings[[2, 0]].tolist()


def test_without_negatives_matching_is_the_plain_cosine_bit_for_bit():
    gen = torch.Generator().manual_seed(0)
    emb = F.normalize(torch.randn(50, 16, generator=gen), dim=1)
    protos = F.normalize(torch.randn(4, 16, generator=gen), dim=1)
    plain = (emb @ protos.T).clamp_min(0.0).max(dim=1)
    none = pp.Negatives(torch.zeros(0, 16), torch.zeros(0, dtype=torch.int64), 1.0)
    for negatives in (None, none):
        scores, labels = pp.match_classes(emb, protos, negatives)
        assert torch.equal(scores, plain.values) and torch.equal(labels, plain.indices)


def test_negative_decay_follows_the_research_formula_per_class():
    emb = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    negatives = pp.Negatives(torch.tensor([[0.6, 0.8], [1.0, 0.0]]), torch.tensor([0, 0]), sigma=0.5)
    scores, labels = pp.match_classes(emb, protos, negatives)
    # mask 0: class 0 pos 1.0, neg max(0.6, 1.0) = 1.0 -> no decay; mask 1: class 0 pos 0.6, neg 1.0 ->
    # 0.6 exp(-0.8); class 1 pos 0.8, no negatives -> 0.8 wins
    assert labels.tolist() == [0, 1]
    torch.testing.assert_close(scores, torch.tensor([1.0, 0.8]))
    negatives = pp.Negatives(torch.tensor([[0.6, 0.8]]), torch.tensor([1]), sigma=0.5)
    scores, labels = pp.match_classes(emb[1:], protos, negatives)  # class 1: 0.8, neg 1.0 -> 0.8 exp(-0.4)
    assert labels.tolist() == [0] and scores.item() == pytest.approx(max(0.6, 0.8 * math.exp(-0.4)))


def test_a_negative_needs_its_class_and_survives_the_file(bank, cfg, tmp_path):
    stray = MemoryBank(
        [{"id": 99, "name": "ghost"}], bank.shot_features[:1], np.array([99]), [{"annotation_id": 1}], bank.encoder
    )
    with pytest.raises(BankError, match="negative shots only.*ghost"):
        bank.add(stray.as_negatives())
    negative = build_bank(_refs([(180, 1, 1)], [DOG], first_id=900), cfg, encoder=LookEncoder()).as_negatives()
    taught = bank.add(negative)
    loaded = MemoryBank.load(taught.save(tmp_path / "bank.safetensors"))
    assert loaded.negative.tolist() == [False, False, False, True] and loaded.fingerprint == taught.fingerprint
    assert taught.fingerprint != bank.fingerprint and bank.add(negative).fingerprint == taught.fingerprint
    assert loaded.remove(class_names=["dog"]).negatives_per_class() == {}, "a class's negatives go with it"
    np.testing.assert_array_equal(loaded.class_prototypes(), bank.class_prototypes())


def test_teaching_a_relabelled_prediction_changes_the_next_run(bank, cfg, target):
    """A toy predicted as a dog, relabelled "toy" by a reviewer: a positive of the new class and a negative of
    the old one. On another image the next run calls toys toys and dogs dogs."""
    from ntt.bank.teach import teach

    image, (_dog, toy, *_rest) = target
    toy_ref = dict(image=image, mask=toy, image_id="target", annotation_id="pred-1")
    taught = teach(
        bank,
        positives=[Reference(class_id=99, class_name="toy", **toy_ref)],
        negatives=[Reference(class_id=DOG, class_name="dog", **toy_ref)],
        cfg=cfg,
        encoder=LookEncoder(),
    )
    assert taught.shots_per_class() == {"dog": 2, "cat": 1, "toy": 1} and taught.negatives_per_class() == {"dog": 1}
    assert (
        teach(taught, [Reference(class_id=99, class_name="toy", **toy_ref)], [], cfg, encoder=LookEncoder()) is taught
    )

    other, (toy2, dog2) = _scene([(180, 3, 0), (70, 1, 2)])
    before, after = _predict(bank, cfg, other), _predict(taught, cfg, other)
    assert before.class_ids[_best_on(before, toy2)] == DOG
    assert after.class_ids[_best_on(after, toy2)] == 99 and after.scores[_best_on(after, toy2)] > 0.99
    assert after.class_ids[_best_on(after, dog2)] == DOG
    assert after.scores[_best_on(after, dog2)] == before.scores[_best_on(before, dog2)]
