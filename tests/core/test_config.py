"""Configs: frozen, one way to make one (presets + overrides), one way to derive one, every bad value refused."""

from __future__ import annotations

import dataclasses

import pytest

from ntt.config import ConfigError, NTTConfig, derive, get_config, layered


def test_configs_are_frozen():
    cfg = get_config("paper")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.device = "cpu"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.segment = cfg.segment  # type: ignore[misc]


def test_derive_changes_only_what_it_names():
    cfg = get_config("fast")
    other = derive(cfg, model={"dtype": "fp32"}, segment={"batch_size": 1})
    assert (other.model.dtype, other.segment.batch_size) == ("fp32", 1)
    assert (cfg.model.dtype, cfg.segment.batch_size) == ("bf16", 0), "the original is untouched"
    assert other.model.sam2 == cfg.model.sam2 and other.segment.points_batch_size == 1024
    with pytest.raises(ConfigError, match="score_thresh"):
        derive(cfg, segment={"score_thresh": 2.0})
    with pytest.raises(ConfigError, match="unknown SegmentConfig fields"):
        derive(cfg, segment={"scor_thresh": 0.5})


def test_a_config_with_a_device_derives_a_new_config():
    base = get_config("lite")
    cfg = get_config(overrides=base, device="cpu")
    assert cfg.model.device == "cpu" and base.model.device == "auto"
    assert get_config("smoke", {"segment": {"batch_size": 2}}, device="cpu").model.device == "cpu"


def test_overrides_layer_on_a_stored_config_and_round_trip():
    stored = get_config("lite").to_dict()
    cfg = layered(stored, {"segment": {"prompt_mode": "grid", "max_instances": None}})
    assert cfg.segment.prompt_mode == "grid" and cfg.segment.max_instances == 100
    assert NTTConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"segmnt": {}}, "unknown config sections"),
        ({"segment": []}, "must be an object"),
        ({"segment": {"points_per_side": "32"}}, "points_per_side must be int"),
        ({"segment": {"soft_merge": 1}}, "soft_merge must be bool"),
        ({"segment": {"score_thresh": 1.5}}, "score_thresh must be a number in [0, 1]"),
        ({"segment": {"class_thresholds": {"cat": -0.1}}}, "class_thresholds['cat']"),
        ({"segment": {"nms_thresh": True}}, "nms_thresh must be float"),
        ({"segment": {"batch_size": -1}}, "batch_size must be an integer >= 0, got -1"),
        ({"segment": {"nms_max_keep": 0}}, "nms_max_keep must be an integer >= 1, got 0"),
        ({"segment": {"soft_merge_exponent": -0.5}}, "soft_merge_exponent must be >= 0"),
        ({"model": {"dinov2_image_size": 0}}, "dinov2_image_size must be >= 14"),
        ({"model": {"sam2_checkpoint": 3}}, "a path or null"),
        (
            {"segment": {"points_per_side": 1000}},
            "points_per_side must be <= 128 (the grid is side x side SAM2 prompts",
        ),
        ({"segment": {"guided_grid": 129}}, "guided_grid must be <= 128"),
        ({"segment": {"guided_points": 10**6}}, "guided_points must be <= 16384"),
        (
            {"model": {"seed": 2**70}},
            "seed (--weights-seed) must be an integer in [0, 2**63 - 1], got 1180591620717411303424",
        ),
        ({"model": {"seed": -1}}, "seed (--weights-seed) must be an integer in [0, 2**63 - 1], got -1"),
        ({"model": {"random_weights": True, "sam2_checkpoint": "s.pt"}}, "would ignore --sam2-checkpoint"),
        (
            {"model": {"random_weights": True, "sam2_checkpoint": "s.pt", "dinov2_checkpoint": "d.pth"}},
            "would ignore --sam2-checkpoint and --dinov2-checkpoint",
        ),
    ],
)
def test_bad_values_are_refused(overrides, message):
    with pytest.raises(ConfigError) as err:
        get_config("paper", overrides)
    assert message in str(err.value)


def test_the_largest_allowed_values_are_accepted():
    cfg = get_config("smoke", {"segment": {"points_per_side": 128, "guided_grid": 128, "guided_points": 16384}})
    assert cfg.segment.points_per_side == 128
    assert get_config("smoke", {"model": {"seed": 2**63 - 1, "random_weights": True}}).model.seed == 2**63 - 1
    assert get_config(
        "smoke", {"model": {"sam2_checkpoint": "s.pt", "dinov2_checkpoint": "d.pth"}}
    ).model.sam2_checkpoint
