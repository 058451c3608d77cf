"""The frozen networks: SAM2 (``sam2``) and DINOv2 (``dinov2``) wrappers, their checkpoints found and read safely
(``weights``), the one device resolver (``devices``), and loading with a per-process cache keyed by (model,
checkpoint, device, dtype, size, seed).

May import: the base modules, ``ntt.io``.
"""

from __future__ import annotations

import logging

import torch

from ntt.config import DINOV2_MODELS, SAM2_MODELS, ModelConfig
from ntt.models.devices import resolve_device
from ntt.models.dinov2 import DinoV2Encoder, build_dinov2
from ntt.models.sam2 import SAM2Proposer, build_sam2_model
from ntt.models.weights import (
    CLI_RANDOM_HINT,
    WeightsNotFoundError,
    available,
    local_checkpoint,
    missing_message,
    resolve_checkpoint,
)

__all__ = [
    "DinoV2Encoder",
    "SAM2Proposer",
    "encoder_identity",
    "get_dinov2",
    "get_sam2",
    "resolve_device",
    "weights_id",
]

log = logging.getLogger(__name__)
_CACHE: dict[tuple, torch.nn.Module] = {}

RANDOM_WEIGHTS_WARNING = (
    "RANDOM WEIGHTS: models are randomly initialised (--random-weights); predictions are meaningless. "
    "Use this only for smoke runs, tests and benchmarks."
)


def weights_id(cfg: ModelConfig, kind: str) -> str:
    """How a model's weights are identified in bank metadata: "random:seed=S" or the checkpoint's name."""
    if cfg.random_weights:
        return f"random:seed={cfg.seed}"
    return f"checkpoint:{_checkpoint(cfg, kind).name}"


def missing_weights(cfg: ModelConfig, kinds=("sam2", "dinov2")) -> list[tuple[str, str, str]]:
    """``(kind, Meta's file name, hub id)`` of each checkpoint of ``kinds`` a job could not get now (neither on
    this machine nor downloadable); none with random weights. Downloads nothing."""
    if cfg.random_weights:
        return []
    specs = [(kind, *_spec(cfg, kind)) for kind in kinds]
    return [(kind, name, hub) for kind, name, hub, explicit in specs if not available(kind, name, explicit)]


def ensure_weights(cfg: ModelConfig, kinds=("sam2", "dinov2"), random_hint: str = CLI_RANDOM_HINT) -> None:
    """Fail at once, naming every missing file, when a job could not get the checkpoints it will need."""
    missing = missing_weights(cfg, kinds)
    if missing:
        raise WeightsNotFoundError(missing_message(missing, random_hint))


def describe_checkpoint(cfg: ModelConfig, kind: str) -> str:
    """Where a model's checkpoint is on this machine, or that it would be downloaded (nothing is)."""
    file_name, hub, explicit = _spec(cfg, kind)
    path = local_checkpoint(kind, file_name, explicit)
    return str(path) if path is not None else f"{file_name}: not here; downloaded from {hub} on first use"


def encoder_identity(encoder, cfg: ModelConfig) -> dict:
    """What a bank records about the encoder its features come from, and what a segmenter must match.

    ``weights`` says where the weights came from (for messages); ``fingerprint`` identifies them by
    content (``DinoV2Encoder.fingerprint``), so the same weights read from Meta's ``.pth`` or timm's
    safetensors match and two different files of the same name do not. Custom encoders may set
    ``weights_id`` / ``fingerprint`` attributes; the fingerprint falls back to ``weights``.
    """
    weights = getattr(encoder, "weights_id", None) or weights_id(cfg, "dinov2")
    return {
        "name": encoder.name,
        "image_size": int(encoder.image_size),
        "weights": weights,
        "fingerprint": getattr(encoder, "fingerprint", None) or weights,
        "dim": int(encoder.dim),
    }


def _spec(cfg: ModelConfig, kind: str) -> tuple[str, str, str | None]:
    """A model's (Meta's file name, hub id, explicit checkpoint path or None)."""
    if kind == "sam2":
        return SAM2_MODELS[cfg.sam2][1], SAM2_MODELS[cfg.sam2][2], cfg.sam2_checkpoint
    return DINOV2_MODELS[cfg.dinov2][1], DINOV2_MODELS[cfg.dinov2][2], cfg.dinov2_checkpoint


def _checkpoint(cfg: ModelConfig, kind: str):
    return resolve_checkpoint(kind, *_spec(cfg, kind))


def get_sam2(cfg: ModelConfig, add_no_mem_embed: bool = False) -> SAM2Proposer:
    """The (cached) SAM2 proposer for a model config, on its device."""
    ckpt = None if cfg.random_weights else _checkpoint(cfg, "sam2")
    key = ("sam2", cfg.sam2, str(ckpt), cfg.device, cfg.sam2_image_size, cfg.seed, add_no_mem_embed)
    if key not in _CACHE:
        _warn_if_random(cfg)
        model = build_sam2_model(cfg.sam2, cfg.sam2_image_size, ckpt, cfg.seed, add_no_mem_embed)
        _CACHE[key] = model.to(resolve_device(cfg.device))
    return _CACHE[key]


def get_dinov2(cfg: ModelConfig) -> DinoV2Encoder:
    """The (cached) DINOv2 encoder for a model config, on its device."""
    ckpt = None if cfg.random_weights else _checkpoint(cfg, "dinov2")
    key = ("dinov2", cfg.dinov2, str(ckpt), cfg.device, cfg.dinov2_image_size, cfg.seed)
    if key not in _CACHE:
        _warn_if_random(cfg)
        model = build_dinov2(cfg.dinov2, cfg.dinov2_image_size, ckpt, cfg.seed)
        _CACHE[key] = model.to(resolve_device(cfg.device))
    return _CACHE[key]


def clear_cache() -> None:
    """Drop every cached model (frees their memory)."""
    _CACHE.clear()


def autocast(cfg: ModelConfig):
    """The autocast context for the networks: bf16 when asked for, else a no-op."""
    device = resolve_device(cfg.device)
    enabled = cfg.dtype == "bf16"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


_warned: set[int] = set()


def _warn_if_random(cfg: ModelConfig) -> None:
    if cfg.random_weights and cfg.seed not in _warned:
        _warned.add(cfg.seed)
        log.warning(RANDOM_WEIGHTS_WARNING)
