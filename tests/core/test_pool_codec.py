"""The candidate cache's compact pool: what comes back gives the same detections as the pool that went in."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntt.bank import sampling
from ntt.bank.encoder import build_bank
from ntt.cache.pool_codec import pack, unpack
from ntt.config import get_config
from ntt.io import coco
from ntt.io.images import load_image
from ntt.predict.postprocess import upsample_logits
from ntt.predict.predictor import MaskPool, Predictor


@pytest.fixture(scope="module")
def predictor(coco128):
    cfg = get_config(
        "smoke",
        {"model": {"random_weights": True, "device": "cpu"}, "segment": {"pred_iou_thresh": 0.0, "nms_thresh": 1.0}},
    )
    data = coco.load_json(coco128 / "annotations" / "instances_train2017.json")
    cats = coco.select_categories(data, ["person", "dog", "car"])
    anns = sampling.sample_shots(data, cats, shots=2, seed=33, explicit=True)
    refs = coco.references_from_coco(data, coco128 / "images" / "train2017", anns, box_only=False)
    return Predictor(build_bank(refs, cfg), cfg)


def _pool(predictor, image) -> MaskPool:
    encoded = predictor.encode([predictor.prepare(image)])
    return predictor.pool_masks(predictor.propose(encoded, 256)[0], encoded.tokens[0])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def test_a_packed_pool_gives_the_same_detections(predictor, coco128):
    image = load_image(sorted((coco128 / "images" / "val2017").glob("*.jpg"))[0])
    pool = _pool(predictor, image)
    assert len(pool.iou) > 0
    back = unpack(pack(pool), torch.device("cpu"))
    assert torch.equal(back.iou, pool.iou) and torch.equal(back.boxes, pool.boxes) and back.counts == pool.counts
    torch.testing.assert_close(back.embeddings, pool.embeddings, atol=1e-3, rtol=0)
    assert torch.equal(back.logits > 0, pool.logits > 0)  # every low-res cell keeps its sign
    size = image.shape[:2]
    full, again = upsample_logits(pool.logits, size).numpy(), upsample_logits(back.logits, size).numpy()
    assert min(_iou(a, b) for a, b in zip(full, again)) >= 0.98

    fresh = predictor.select(predictor.match(pool), size)
    cached = predictor.select(predictor.match(back), size)
    matched = sum(
        any(c == d and _iou(m, n) >= 0.9 for d, n in zip(cached.class_ids, cached.masks))
        for c, m in zip(fresh.class_ids, fresh.masks)
    )
    assert len(fresh) > 0 and matched / len(fresh) >= 0.99


def test_an_empty_pool_round_trips():
    empty = MaskPool(torch.zeros(0, 16, 16), torch.zeros(0), torch.zeros(0, 8), torch.zeros(0, 4), {"prompts": 4})
    back = unpack(pack(empty), torch.device("cpu"))
    assert back.logits.shape == (0, 16, 16) and back.embeddings.shape == (0, 8) and back.counts["prompts"] == 4


def test_a_blob_that_does_not_fit_its_crops_is_refused(predictor, coco128):
    image = load_image(sorted((coco128 / "images" / "val2017").glob("*.jpg"))[1])
    arrays = pack(_pool(predictor, image))
    arrays["crops"] = arrays["crops"][:-1]
    with pytest.raises(ValueError, match="logit values for crops"):
        unpack(arrays, torch.device("cpu"))


@pytest.mark.parametrize("slope", [1.5, 8.0])
def test_object_edges_come_back_within_a_fraction_of_a_cell(slope):
    """Logits shaped like an object's (a signed distance to a disc, soft or sharp) and a one-cell mask: the
    full-resolution masks keep their IoU, the low-res masks are exact, and the plateaus cost almost nothing."""
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    disc = slope * (20.0 - ((yy - 30.3) ** 2 + (xx - 25.7) ** 2).sqrt())
    dot = torch.full((64, 64), -12.0)
    dot[40, 50] = 6.0  # a mask of one cell
    logits = torch.stack([disc.clamp(-30, 30), dot])
    pool = MaskPool(
        logits,
        torch.ones(2),
        torch.nn.functional.normalize(torch.randn(2, 8), dim=1),
        torch.tensor([[5.0, 10, 46, 51], [50, 40, 50, 40]]),
    )
    arrays = pack(pool)
    back = unpack(arrays, torch.device("cpu"))
    assert torch.equal(back.logits > 0, logits > 0)
    full, again = upsample_logits(logits, (480, 480)).numpy(), upsample_logits(back.logits, (480, 480)).numpy()
    assert _iou(full[0], again[0]) >= 0.995 and _iou(full[1], again[1]) >= 0.9 and again[1].any()
    assert arrays["blob"].nbytes < 0.25 * 48 * 48  # a quarter byte per crop cell: only the edge costs
