"""Property-based test of matching + post-processing on random masks, scores and features (hypothesis)."""

from __future__ import annotations

import numpy as np
import torch
from fakes import PerImageDecode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ntt.bank.memory import MemoryBank
from ntt.config import get_config
from ntt.predict.predictor import Predictor

DIM = 6


class _Proposer(PerImageDecode):
    """Returns the drawn candidates whatever the prompts."""

    def __init__(self, logits, ious, mask_size):
        self.logits, self.ious = logits, ious
        self.image_size, self.mask_size, self.name = mask_size * 4, mask_size, "fake"

    def prepare(self, image):
        return torch.zeros(3, self.image_size, self.image_size)

    def encode(self, images):
        return {}

    def decode_points(self, feats, index, coords, chunk):
        return self.logits, self.ious


class _Encoder:
    name, weights_id, image_size, grid, dim = "fake", "fake", 56, 4, DIM

    def __init__(self, tokens):
        self.tokens = tokens

    def resize(self, images):
        return images

    def __call__(self, images):
        return self.tokens[None].expand(len(images), -1, -1, -1)


@st.composite
def scenes(draw):
    m = draw(st.sampled_from([8, 16]))
    n = draw(st.integers(0, 12))
    h, w = draw(st.integers(1, 70)), draw(st.integers(1, 70))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, m, m, generator=gen) * draw(st.floats(0.1, 8)) + draw(st.floats(-6, 3))
    if n and draw(st.booleans()):
        logits[0] = logits[1 % n]  # exact duplicates
    ious = torch.rand(n, generator=gen) * 1.2 - 0.1
    tokens = torch.randn(4, 4, DIM, generator=gen)
    if draw(st.booleans()):
        tokens[:, :2] = 0  # zero features: zero embeddings, zero scores
    n_classes = draw(st.integers(1, 4))
    shots = torch.randn(n_classes * 2, DIM, generator=gen).numpy()
    segment = {
        "max_instances": draw(st.integers(1, 10)),
        "soft_merge": draw(st.booleans()),
        "merge_resolution": draw(st.sampled_from(["full", "low"])),
        "nms_thresh": draw(st.sampled_from([0.3, 0.5, 1.0])),
        "score_thresh": draw(st.sampled_from([0.0, 0.2])),
    }
    return (h, w), m, logits, ious, tokens, n_classes, shots, segment


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenes())
def test_postprocessing_invariants(scene):
    (h, w), m, logits, ious, tokens, n_classes, shots, segment = scene
    ids = [5 * (k + 1) for k in range(n_classes)]
    bank = MemoryBank(
        classes=[{"id": i, "name": f"c{i}"} for i in ids],
        shot_features=shots,
        shot_class_ids=np.repeat(ids, 2),
        shots=[{"annotation_id": k} for k in range(len(shots))],
        encoder={"name": "fake", "image_size": 56, "weights": "fake", "dim": DIM},
    )
    cfg = get_config("paper", {"model": {"device": "cpu"}, "segment": segment})
    seg = Predictor(bank, cfg, proposer=_Proposer(logits, ious, m), encoder=_Encoder(tokens))
    inst = seg.predict([np.zeros((h, w, 3), np.uint8)])[0]

    assert inst.image_size == (h, w)
    assert len(inst) <= segment["max_instances"]
    assert np.isfinite(inst.scores).all() and ((inst.scores >= 0) & (inst.scores <= 1)).all()
    assert np.all(np.diff(inst.scores) <= 1e-7), "sorted by score"
    assert (inst.scores >= segment["score_thresh"]).all()
    assert set(inst.class_ids.tolist()) <= set(ids)
    b = inst.boxes
    assert ((b[:, 0] >= 0) & (b[:, 1] >= 0) & (b[:, 2] <= w) & (b[:, 3] <= h)).all(), "boxes inside the image"
    assert ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all()
    for crop in inst.crops:
        assert crop.any(axis=0)[[0, -1]].all() and crop.any(axis=1)[[0, -1]].all(), "tight, non-empty masks"


def test_reduced_merge_resolution_never_drops_a_small_mask(monkeypatch):
    # Past the memory budget the soft merge runs at a reduced resolution; a small mask that vanishes there
    # must still reach the output (its full-resolution crop decides), as it does without the budget.
    import ntt.predict.postprocess as pp

    m = 16
    logits = torch.full((2, m, m), -10.0)
    logits[0, 2:14, 2:14] = 10.0  # a large mask
    logits[1, 7, 7] = 10.0  # one low-res cell: a few pixels at full resolution, nothing at 1/16
    ious = torch.tensor([0.9, 0.8])
    tokens = torch.ones(4, 4, DIM)
    bank = MemoryBank(
        classes=[{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        shot_features=np.stack([np.ones(DIM), -np.ones(DIM)]).astype(np.float32),
        shot_class_ids=[1, 2],
        shots=[{"annotation_id": 1}, {"annotation_id": 2}],
        encoder={"name": "fake", "image_size": 56, "weights": "fake", "dim": DIM},
    )
    cfg = get_config("paper", {"model": {"device": "cpu"}, "segment": {"nms_thresh": 1.0}})
    seg = Predictor(bank, cfg, proposer=_Proposer(logits, ious, m), encoder=_Encoder(tokens))
    image = np.zeros((160, 160, 3), np.uint8)
    full = seg.predict([image])[0]
    monkeypatch.setattr(pp, "merge_size", lambda n, size: (size[0] // 16, size[1] // 16))  # the small mask vanishes
    reduced = seg.predict([image])[0]
    assert len(full) == 2
    assert len(reduced) == len(full)
    np.testing.assert_array_equal(np.sort(reduced.boxes, axis=0), np.sort(full.boxes, axis=0))
