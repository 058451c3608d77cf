"""Configuration dataclasses and presets.

Every knob of the pipeline is a field here. The defaults are the faithful defaults of the NTT paper's code
(see the project's ALGORITHM spec); presets change a few of them. Configs round-trip through plain dicts
(``to_dict`` / ``from_dict``) so they can travel in JSON (bank metadata, operator params).

Configs are frozen: they are cache keys and get persisted, so nothing changes one after it is made. There is
one way to make one, ``get_config(preset, overrides, device)`` (``layered`` for overrides on a stored config),
and one way to derive one, ``derive(cfg, segment={...})`` (``dataclasses.replace`` per section).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# SAM2 variants: name -> (sam2 package config, Meta's checkpoint file name, Hugging Face hub id)
SAM2_MODELS: dict[str, tuple[str, str, str]] = {
    "sam2_hiera_t": ("configs/sam2/sam2_hiera_t.yaml", "sam2_hiera_tiny.pt", "facebook/sam2-hiera-tiny"),
    "sam2_hiera_s": ("configs/sam2/sam2_hiera_s.yaml", "sam2_hiera_small.pt", "facebook/sam2-hiera-small"),
    "sam2_hiera_b+": (
        "configs/sam2/sam2_hiera_b+.yaml",
        "sam2_hiera_base_plus.pt",
        "facebook/sam2-hiera-base-plus",
    ),
    "sam2_hiera_l": ("configs/sam2/sam2_hiera_l.yaml", "sam2_hiera_large.pt", "facebook/sam2-hiera-large"),
    "sam2.1_hiera_t": (
        "configs/sam2.1/sam2.1_hiera_t.yaml",
        "sam2.1_hiera_tiny.pt",
        "facebook/sam2.1-hiera-tiny",
    ),
    "sam2.1_hiera_s": (
        "configs/sam2.1/sam2.1_hiera_s.yaml",
        "sam2.1_hiera_small.pt",
        "facebook/sam2.1-hiera-small",
    ),
    "sam2.1_hiera_b+": (
        "configs/sam2.1/sam2.1_hiera_b+.yaml",
        "sam2.1_hiera_base_plus.pt",
        "facebook/sam2.1-hiera-base-plus",
    ),
    "sam2.1_hiera_l": (
        "configs/sam2.1/sam2.1_hiera_l.yaml",
        "sam2.1_hiera_large.pt",
        "facebook/sam2.1-hiera-large",
    ),
}

# DINOv2 variants: name -> (timm architecture, Meta's checkpoint file name, timm hub id)
DINOV2_MODELS: dict[str, tuple[str, str, str]] = {
    "dinov2_vits14": (
        "vit_small_patch14_dinov2",
        "dinov2_vits14_pretrain.pth",
        "timm/vit_small_patch14_dinov2.lvd142m",
    ),
    "dinov2_vitb14": (
        "vit_base_patch14_dinov2",
        "dinov2_vitb14_pretrain.pth",
        "timm/vit_base_patch14_dinov2.lvd142m",
    ),
    "dinov2_vitl14": (
        "vit_large_patch14_dinov2",
        "dinov2_vitl14_pretrain.pth",
        "timm/vit_large_patch14_dinov2.lvd142m",
    ),
    "dinov2_vitg14": (
        "vit_giant_patch14_dinov2",
        "dinov2_vitg14_pretrain.pth",
        "timm/vit_giant_patch14_dinov2.lvd142m",
    ),
}


class ConfigError(ValueError):
    """A configuration value is invalid; the message says which and why."""


@dataclass(frozen=True)
class ModelConfig:
    """Which frozen models to run and where their weights come from.

    Attributes:
        sam2: a key of ``SAM2_MODELS`` (the paper used ``sam2_hiera_l``, SAM2.0).
        dinov2: a key of ``DINOV2_MODELS`` (the paper used ``dinov2_vitl14``).
        sam2_checkpoint: an explicit SAM2 checkpoint file (Meta's original format); ``None`` resolves it by
            name (env vars, checkpoint dir, cache, hub; see ``ntt.models.weights``).
        dinov2_checkpoint: the same for DINOv2.
        sam2_image_size: SAM2 input side in pixels (targets are stretched to a square of this size).
        dinov2_image_size: DINOv2 input side in pixels, a multiple of 14 (518 gives a 37x37 patch grid).
        random_weights: build randomly initialised models (seeded by ``seed``) instead of loading
            weights: for smoke runs, tests and benchmarks only; their predictions are meaningless. Not with
            an explicit checkpoint (it would be ignored).
        seed: the seed of random weights, 0 to 2**63 - 1.
        device: "auto" (CUDA when present), "cpu", "cuda" or "cuda:N".
        dtype: "fp32" or "bf16" (autocast for the networks; post-processing stays fp32).
        compile: run SAM2's prompt encoder + mask decoder through ``torch.compile`` (one static shape
            per prompt chunk). Pays on GPUs, where the decoder is memory-bound elementwise work that the
            compiler fuses; the first batch is slow while it compiles. Falls back to eager on failure.
    """

    sam2: str = "sam2_hiera_l"
    dinov2: str = "dinov2_vitl14"
    sam2_checkpoint: str | None = None
    dinov2_checkpoint: str | None = None
    sam2_image_size: int = 1024
    dinov2_image_size: int = 518
    random_weights: bool = False
    seed: int = 0
    device: str = "auto"
    dtype: str = "fp32"
    compile: bool = False

    def validate(self) -> None:
        if self.sam2 not in SAM2_MODELS:
            raise ConfigError(f"unknown sam2 model {self.sam2!r}; choose one of {sorted(SAM2_MODELS)}")
        if self.dinov2 not in DINOV2_MODELS:
            raise ConfigError(f"unknown dinov2 model {self.dinov2!r}; choose one of {sorted(DINOV2_MODELS)}")
        if self.dinov2_image_size < 14 or self.sam2_image_size < 64:
            raise ConfigError("dinov2_image_size must be >= 14 and sam2_image_size >= 64")
        if self.dinov2_image_size % 14:
            raise ConfigError(f"dinov2_image_size must be a multiple of 14, got {self.dinov2_image_size}")
        if self.sam2_image_size % 64:
            raise ConfigError(f"sam2_image_size must be a multiple of 64, got {self.sam2_image_size}")
        if self.dtype not in ("fp32", "bf16"):
            raise ConfigError(f"dtype must be 'fp32' or 'bf16', got {self.dtype!r}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed (--weights-seed) must be an integer in [0, 2**63 - 1], got {self.seed!r}")
        given = [name for name in ("sam2_checkpoint", "dinov2_checkpoint") if getattr(self, name)]
        if self.random_weights and given:
            flags = " and ".join(f"--{name.replace('_', '-')}" for name in given)
            raise ConfigError(
                f"random_weights (--random-weights) builds random models and would ignore {flags} ({', '.join(given)}):"
                " give one or the other"
            )


@dataclass(frozen=True)
class BankConfig:
    """How reference instances become shot prototypes.

    Attributes:
        context_ratio: the square crop around a reference box has side max(w, h) * (1 + context_ratio).
    """

    context_ratio: float = 0.2


@dataclass(frozen=True)
class SegmentConfig:
    """Inference knobs (faithful NTT defaults).

    Attributes:
        points_per_side: the SAM2 prompt grid is points_per_side x points_per_side single points,
            edge-inclusive (linspace(0, S - 1, n) + 0.5 in S-pixel coordinates); at most ``MAX_PROMPT_SIDE``.
        points_batch_size: prompts per decoder call; every prompt is decoded (no remainder dropped).
        pred_iou_thresh: keep masks whose SAM-predicted IoU is > this.
        nms_thresh: IoU threshold of the class-aware box NMS (ranked by SAM-predicted IoU).
        nms_max_keep: keep at most this many candidates after NMS (paper: 8 x max_instances).
        soft_merge: apply semantic-aware soft merging.
        soft_merge_exponent: score *= (1 - IoS x cos) ** exponent.
        merge_resolution: "full" computes IoS on full-resolution masks (faithful); "low" on the
            SAM2 low-resolution masks (cheaper, memory bounded).
        max_instances: detections kept per image after soft merging.
        score_thresh: drop detections whose final score is below this (paper: none, i.e. 0).
        class_thresholds: per-class-name score thresholds, overriding ``score_thresh``.
        add_no_mem_embed: add SAM2's ``no_mem_embed`` to the image embedding (stock SAM2 image
            predictor behaviour); NTT does not, so the faithful default is False.
        prompt_mode: "grid" (faithful: points_per_side^2 prompts) or "guided": prompt SAM2 only at the
            ``guided_points`` patches whose DINOv2 features best match a class prototype (local maxima),
            plus a coarse ``guided_grid`` x ``guided_grid`` grid for recall. Tens of prompts instead of
            1024; instances DINOv2 does not already see as a class can be missed. At most 16384 points and a
            ``MAX_PROMPT_SIDE`` grid.
        batch_size: images per forward pass of the encoders; 0 = automatic: on a GPU, sized after the
            first image from its peak memory and the memory left free (at most ``MAX_AUTO_BATCH``); 1 on
            the CPU. An out-of-memory error halves it either way.
        loader_workers: threads that decode and resize the next images while a batch runs (0: load in
            the main thread, between batches).
        cache: reuse each image's bank-independent work from the candidate cache: with grid prompts its mask
            pool (int8 mask codes: low-res masks exact, full-res edges within a fraction of a cell), so a
            re-run skips encoders and decoder; with guided prompts the encoders' outputs. Off in ``paper``.
        negative_sigma: score x exp(-max(s_neg - s_pos, 0) / negative_sigma) with negative shots (the
            research code's negative-reference scorer; no effect on a bank without negatives).
    """

    points_per_side: int = 32
    points_batch_size: int = 256
    pred_iou_thresh: float = 0.4
    nms_thresh: float = 0.5
    nms_max_keep: int = 800
    soft_merge: bool = True
    soft_merge_exponent: float = 0.5
    merge_resolution: str = "full"
    max_instances: int = 100
    score_thresh: float = 0.0
    class_thresholds: dict[str, float] = field(default_factory=dict)
    add_no_mem_embed: bool = False
    prompt_mode: str = "grid"
    guided_points: int = 32
    guided_grid: int = 4
    batch_size: int = 1
    loader_workers: int = 2
    cache: bool = False
    negative_sigma: float = 1.0

    def validate(self) -> None:
        for name, minimum in _SEGMENT_COUNTS.items():
            _check_min(name, getattr(self, name), minimum)
        for name in ("points_per_side", "guided_grid"):
            _check_max(name, getattr(self, name), MAX_PROMPT_SIDE, _GRID_COST)
        _check_max("guided_points", self.guided_points, MAX_PROMPT_SIDE**2, _POINTS_COST)
        if self.prompt_mode not in ("grid", "guided"):
            raise ConfigError(f"prompt_mode must be 'grid' or 'guided', got {self.prompt_mode!r}")
        if self.merge_resolution not in ("full", "low"):
            raise ConfigError(f"merge_resolution must be 'full' or 'low', got {self.merge_resolution!r}")
        for name in ("score_thresh", "nms_thresh"):
            _check_unit(name, getattr(self, name))
        if not isinstance(self.class_thresholds, dict):
            raise ConfigError("class_thresholds must map class names to thresholds")
        for cls_name, value in self.class_thresholds.items():
            _check_unit(f"class_thresholds[{cls_name!r}]", value)
        if self.soft_merge_exponent < 0:
            raise ConfigError(f"soft_merge_exponent must be >= 0, got {self.soft_merge_exponent!r}")
        if not self.negative_sigma > 0:
            raise ConfigError(f"negative_sigma must be > 0, got {self.negative_sigma!r}")


# The whole-number knobs and their least values (batch_size 0: automatic; loader_workers 0: no threads).
_SEGMENT_COUNTS = {
    "points_per_side": 1,
    "points_batch_size": 1,
    "nms_max_keep": 1,
    "max_instances": 1,
    "guided_points": 0,
    "guided_grid": 0,
    "batch_size": 0,
    "loader_workers": 0,
}


# Every prompt keeps a low-resolution mask (256 x 256 floats at 1024 px) until the filters run: a 128 x 128 grid is
# already 16384 prompts, about 4 GB per image; 1000 per side would be a million prompts, minutes and far more memory.
MAX_PROMPT_SIDE = 128
_GRID_COST = "the grid is side x side SAM2 prompts per image, each keeping a mask in memory: 128 already gives 16384"
_POINTS_COST = "each point is a SAM2 prompt keeping a mask in memory: 16384 is as many as a 128 x 128 grid"
MAX_SEED = 2**63 - 1  # what a seed of torch's generators holds as a signed 64-bit integer


def _check_min(name: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_max(name: str, value: int, maximum: int, why: str) -> None:
    if value > maximum:
        raise ConfigError(f"{name} must be <= {maximum} ({why}), got {value!r}")


def _check_unit(name: str, value) -> None:
    """A threshold in [0, 1] (a bool or a string is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}")


@dataclass(frozen=True)
class NTTConfig:
    """The whole pipeline's configuration: models, bank building and inference."""

    model: ModelConfig = field(default_factory=ModelConfig)
    bank: BankConfig = field(default_factory=BankConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)

    def validate(self) -> NTTConfig:
        self.model.validate()
        self.segment.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NTTConfig:
        """A config from ``{"model": {...}, "bank": {...}, "segment": {...}}``; an unknown section or field
        is an error (a typo must not be silently ignored)."""
        if not isinstance(data, dict):
            raise ConfigError(f"a config is an object of sections, got {type(data).__name__}")
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown config sections: {sorted(unknown)} (known: model, bank, segment)")
        return cls(
            model=_build(ModelConfig, data.get("model", {})),
            bank=_build(BankConfig, data.get("bank", {})),
            segment=_build(SegmentConfig, data.get("segment", {})),
        )


def _build(kind: type, values: dict[str, Any]) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"config section {kind.__name__} must be an object, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(kind)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ConfigError(f"unknown {kind.__name__} fields: {sorted(unknown)}")
    for name, value in values.items():
        _check_type(kind.__name__, fields[name], value)
    return kind(**values)


def _check_type(section: str, spec: dataclasses.Field, value: Any) -> None:
    """A value of the same kind as the field's default (ints for ints, numbers for floats, ...)."""
    default = spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default
    if default is None:  # optional paths
        ok = value is None or isinstance(value, str)
    elif isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        want = {type(None): "be a path or null", dict: "map class names to values"}.get(type(default))
        raise ConfigError(f"{section}.{spec.name} must {want or 'be ' + type(default).__name__}, got {value!r}")


PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # The paper's models and settings.
    "paper": {},
    # The paper's models and prompts the fast way on a GPU: bf16, auto batch, 1024 prompts per decoder call.
    "fast": {
        "model": {"dtype": "bf16", "compile": True},
        "segment": {"batch_size": 0, "points_batch_size": 1024, "merge_resolution": "low", "cache": True},
    },
    # For CPUs and laptops: small models at reduced inputs, DINOv2-guided prompts (32 instead of 1024).
    "lite": {
        "model": {
            "sam2": "sam2.1_hiera_t",
            "dinov2": "dinov2_vits14",
            "sam2_image_size": 768,
            "dinov2_image_size": 448,
        },
        "segment": {
            "prompt_mode": "guided",
            "guided_points": 16,
            "guided_grid": 4,
            "merge_resolution": "low",
            "cache": True,
        },
    },
    # Tiny inputs and 16 prompts: only for smoke tests with random weights (fast on any CPU).
    "smoke": {
        "model": {
            "sam2": "sam2_hiera_t",
            "dinov2": "dinov2_vits14",
            "sam2_image_size": 256,
            "dinov2_image_size": 224,
        },
        "segment": {"points_per_side": 4, "nms_max_keep": 64, "max_instances": 20},
    },
}


def get_config(
    preset: str = "paper",
    overrides: dict[str, dict[str, Any]] | NTTConfig | None = None,
    device: str | None = None,
) -> NTTConfig:
    """The one way to make a config: a preset with optional per-section overrides, and a device.

    Args:
        preset: one of ``PRESETS`` ("paper", "fast", "lite", "smoke").
        overrides: e.g. ``{"model": {"device": "cpu"}, "segment": {"batch_size": 4}}``; ``None``
            values are ignored so CLI flags that were not given leave the preset alone. An ``NTTConfig``
            is used as is (the preset is then ignored); ``layered`` puts overrides on a stored config.
        device: when given, replaces the model device ("auto", "cpu", "cuda", "cuda:N").
    """
    if isinstance(overrides, NTTConfig):
        cfg = overrides.validate()
    elif preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    else:
        cfg = layered(PRESETS[preset], overrides)
    return derive(cfg, model={"device": device}) if device else cfg


def describe_settings(data: dict[str, dict[str, Any]]) -> str:
    """A stored config (``to_dict``) as its closest preset plus what differs, device aside: "lite", or
    "smoke + model.random_weights=True"."""

    def changes(preset: str) -> list[str]:
        base = get_config(preset).to_dict()
        return [
            f"{section}.{key}={value!r}"
            for section, values in data.items()
            for key, value in values.items()
            if key != "device" and base.get(section, {}).get(key, value) != value
        ]

    best = min(PRESETS, key=lambda name: len(changes(name)))
    return " + ".join([best, *changes(best)])


def layered(base: dict[str, dict[str, Any]], overrides: dict[str, dict[str, Any]] | None) -> NTTConfig:
    """A config from per-section settings (a preset's, or a config's ``to_dict``) with per-section
    overrides on top; ``None`` override values leave the base alone."""
    data: dict[str, dict[str, Any]] = {k: dict(v) for k, v in base.items()}
    if not isinstance(overrides or {}, dict):
        raise ConfigError(f"overrides are an object of sections, got {type(overrides).__name__}")
    for section, values in (overrides or {}).items():
        if not isinstance(values, dict):
            raise ConfigError(f"config section {section!r} must be an object, got {type(values).__name__}")
        data.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
    return NTTConfig.from_dict(data).validate()


def derive(cfg: NTTConfig, **sections: dict[str, Any]) -> NTTConfig:
    """A new, validated config with some fields changed: ``derive(cfg, model={"dtype": "fp32"})``.

    Unlike overrides, ``None`` is a value here (e.g. an explicit checkpoint of None)."""
    for name, values in sections.items():
        spec = {f.name: f for f in dataclasses.fields(type(getattr(cfg, name)))}
        for key, value in values.items():
            if key not in spec:
                raise ConfigError(f"unknown {type(getattr(cfg, name)).__name__} fields: {[key]}")
            _check_type(type(getattr(cfg, name)).__name__, spec[key], value)
    changed = {name: dataclasses.replace(getattr(cfg, name), **values) for name, values in sections.items()}
    return dataclasses.replace(cfg, **changed).validate()
