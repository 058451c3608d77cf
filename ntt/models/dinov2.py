"""DINOv2 through timm: Meta's checkpoints (or timm's hub weights), patch-token grids."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F

from ntt.config import DINOV2_MODELS
from ntt.models.weights import CheckpointError, read_state_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DinoV2Encoder(torch.nn.Module):
    """Frozen DINOv2 ViT returning its patch tokens after the final LayerNorm as a grid.

    Args:
        vit: a timm DINOv2 VisionTransformer built for ``image_size``.
        name: the ``DINOV2_MODELS`` key.
        image_size: input side in pixels (multiple of 14).
    """

    def __init__(self, vit: torch.nn.Module, name: str, image_size: int):
        super().__init__()
        self.vit = vit
        self.name = name
        self.image_size = image_size
        self.grid = image_size // 14
        self.dim = vit.embed_dim
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Patch features of RGB images.

        Args:
            images: float tensor (B, 3, S, S) in [0, 1], S = ``image_size`` (not yet normalised).
        Returns:
            float tensor (B, g, g, D) of raw (not L2-normalised) patch tokens, g = S / 14.
        """
        x = (images - self.mean) / self.std
        tokens = self.vit.forward_features(x)[:, self.vit.num_prefix_tokens :]
        return tokens.reshape(images.shape[0], self.grid, self.grid, -1)

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """Bicubic resize (no antialias, as the reference code) of (B, 3, h, w) to the input size."""
        size = (self.image_size, self.image_size)
        if tuple(images.shape[-2:]) == size:
            return images
        return F.interpolate(images, size=size, mode="bicubic", align_corners=False)


def build_dinov2(name: str, image_size: int, checkpoint: Path | None, seed: int = 0) -> DinoV2Encoder:
    """Build a DINOv2 encoder on the CPU in eval mode.

    Args:
        name: ``DINOV2_MODELS`` key.
        image_size: input side (multiple of 14).
        checkpoint: Meta's ``dinov2_*_pretrain.pth`` or a timm ``.safetensors``; None builds a random-init
            model seeded with ``seed`` (same seed, same weights).
    """
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    arch = DINOV2_MODELS[name][0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vit = timm.create_model(arch, pretrained=False, img_size=image_size, num_classes=0)
    if checkpoint is not None:
        state = read_state_dict(checkpoint)
        try:  # timm's filter resamples what it finds: tensors of odd shapes fail inside it in many ways
            vit.load_state_dict(checkpoint_filter_fn(state, vit), strict=True)
        except (RuntimeError, KeyError, ValueError, IndexError, TypeError, AttributeError) as err:
            raise CheckpointError(f"{checkpoint}: not a {name} checkpoint ({_first_line(err)})") from err
    encoder = DinoV2Encoder(vit.eval(), name, image_size).eval()
    encoder.weights_id = f"checkpoint:{Path(checkpoint).name}" if checkpoint is not None else f"random:seed={seed}"
    encoder.fingerprint = weights_fingerprint(vit)
    return encoder


def weights_fingerprint(vit: torch.nn.Module) -> str:
    """A short sha256 of a few weight tensors that no input size or file format changes.

    The patch embedding, the first block's qkv, the last block's MLP and the final norm: the same weights
    loaded from Meta's ``.pth`` or timm's safetensors hash alike, different weights do not. (The position
    embedding is left out: it is resampled to the input size.)
    """
    state = vit.state_dict()
    last = len(vit.blocks) - 1
    names = ["patch_embed.proj.weight", "blocks.0.attn.qkv.weight", f"blocks.{last}.mlp.fc2.weight", "norm.weight"]
    digest = hashlib.sha256()
    for key in names:
        digest.update(key.encode())
        digest.update(state[key].detach().float().cpu().contiguous().numpy().tobytes())
    return "sha256:" + digest.hexdigest()[:16]


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__
