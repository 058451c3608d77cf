"""DINOv2-guided prompting: points at class-like patches (local maxima), plus the coarse grid."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from oracle_scenes import CATEGORIES, OracleEncoder, OracleProposer, draw_scene

from ntt.bank.memory import MemoryBank
from ntt.config import get_config
from ntt.predict.predictor import Predictor
from ntt.predict.prompts import guided_points


def test_guided_points_are_spread_best_first():
    tokens = torch.zeros(4, 4, 2)
    tokens[..., 1] = 1.0  # background direction
    tokens[0, 0] = torch.tensor([1.0, 0.0])  # exactly the class
    tokens[0, 1] = torch.tensor([0.9, 0.1])  # next to it, weaker: suppressed (too close)
    tokens[3, 2] = torch.tensor([0.8, 0.2])  # a second object
    protos = torch.tensor([[1.0, 0.0]])
    pts = guided_points(tokens, protos, count=2, image_size=64, spacing=1)
    # patch (row, col) centre in 64-px coordinates: ((col + 0.5) * 16, (row + 0.5) * 16)
    assert pts.tolist() == [[8.0, 8.0], [40.0, 56.0]]
    assert len(guided_points(tokens, protos, count=1, image_size=64)) == 1
    # Background patches (cosine 0) are never prompted, however many points are allowed.
    assert len(guided_points(tokens, protos, count=10, image_size=64, spacing=1)) == 2
    # With spacing 0 the neighbour comes back, right after the best patch.
    assert guided_points(tokens, protos, count=3, image_size=64, spacing=0).tolist()[1] == [24.0, 8.0]


class _FractionEncoder(OracleEncoder):
    """Patch features = fraction of each class and of background: a patch half on an object is less like
    the class than one inside it, as with real features."""

    dim = 4

    def __call__(self, images):
        code = (images[:, 0] * 255 / 60).round().clamp(0, 3).long()
        onehot = F.one_hot(code, 4).permute(0, 3, 1, 2).float()  # channel 0 = background
        fractions = F.avg_pool2d(onehot, self.patch).permute(0, 2, 3, 1)
        return torch.cat([fractions[..., 1:], fractions[..., :1]], dim=-1)


class _Recorder(OracleProposer):
    def decode_points(self, feats, index, coords, chunk):
        self.coords = coords.clone()
        return super().decode_points(feats, index, coords, chunk)


def test_guided_mode_prompts_every_instance_plus_coarse_grid():
    rng = np.random.default_rng(3)
    cats = [c["id"] for c in CATEGORIES]
    image, masks = draw_scene(rng, 180, 240, cats)
    encoder, proposer = _FractionEncoder(), _Recorder()
    bank = MemoryBank(
        classes=CATEGORIES,
        shot_features=np.eye(3, 4, dtype=np.float32),
        shot_class_ids=np.array(cats),
        shots=[{"annotation_id": i} for i in range(3)],
        encoder={"name": encoder.name, "image_size": 224, "weights": "oracle", "dim": 4},
    )
    segment = {"prompt_mode": "guided", "guided_points": 8, "guided_grid": 3}
    cfg = get_config("paper", {"model": {"device": "cpu"}, "segment": segment})
    inst = Predictor(bank, cfg, proposer=proposer, encoder=encoder).predict([image])[0]
    coords = proposer.coords
    assert len(coords) <= 8 + 9
    grid = coords[-9:]
    assert torch.allclose(grid[0], torch.tensor([0.5, 0.5])) and torch.allclose(grid[-1], torch.tensor([1023.5] * 2))
    guided = coords[:-9]
    for mask in masks:  # each instance (in the 1024 frame) holds at least one guided point
        big = F.interpolate(torch.tensor(mask)[None, None].float(), size=(1024, 1024), mode="nearest")[0, 0]
        inside = big[guided[:, 1].long(), guided[:, 0].long()] > 0
        assert inside.any()
    assert len(inst) >= len(masks)


def test_guided_mode_is_a_validated_option():
    import pytest

    from ntt.config import ConfigError

    with pytest.raises(ConfigError, match="prompt_mode"):
        get_config("paper", {"segment": {"prompt_mode": "magic"}})
