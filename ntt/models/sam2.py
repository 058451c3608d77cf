"""SAM2 through Meta's official ``sam2`` package, driven the way NTT drives it.

The image encoder runs once per image; the prompt encoder and mask decoder are called directly with the
high-resolution features from ``forward_image`` and, by default, *without* adding ``no_mem_embed`` to the
image embedding (NTT's behaviour; the stock ``SAM2ImagePredictor`` adds it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import SAM2_MODELS
from .dinov2 import IMAGENET_MEAN, IMAGENET_STD


class SAM2Proposer(torch.nn.Module):
    """Frozen SAM2 image encoder + prompt encoder + mask decoder.

    Features for a batch are a dict with ``image_embed`` (B, 256, S/16, S/16) and ``high_res``
    [(B, 32, S/4, S/4), (B, 64, S/8, S/8)], S = ``image_size``. Low-resolution mask logits are
    (S/4, S/4) (256x256 for S = 1024).
    """

    def __init__(self, model: torch.nn.Module, name: str, add_no_mem_embed: bool = False):
        super().__init__()
        self.model = model
        self.name = name
        self.image_size = int(model.image_size)
        self.mask_size = self.image_size // 4
        self.add_no_mem_embed = add_no_mem_embed
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """RGB uint8 (H, W, 3) -> float (3, S, S) in [0, 1]: a square stretch with PIL bicubic, as NTT."""
        size = (self.image_size, self.image_size)
        resized = np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC), dtype=np.float32)
        return torch.from_numpy(resized / 255.0).permute(2, 0, 1)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> dict:
        """Run the image encoder on (B, 3, S, S) images in [0, 1]."""
        out = self.model.forward_image((images - self.mean) / self.std)
        embed = out["vision_features"]
        if self.add_no_mem_embed:
            embed = embed + self.model.no_mem_embed.view(1, -1, 1, 1)
        return {"image_embed": embed, "high_res": [out["backbone_fpn"][0], out["backbone_fpn"][1]]}

    @torch.no_grad()
    def decode_points(self, feats: dict, index: int, coords: torch.Tensor, chunk: int):
        """Decode single positive point prompts on image ``index`` of a feature batch, best of 3 masks.

        Args:
            coords: float (P, 2) of (x, y) in S-pixel coordinates.
            chunk: prompts per decoder call; every prompt is decoded.
        Returns:
            (logits, iou): float (P, S/4, S/4) mask logits of the mask with the highest predicted IoU
            among the 3 multimask outputs, and float (P,) that predicted IoU.
        """
        logits, ious = [], []
        for start in range(0, coords.shape[0], chunk):
            pts = coords[start : start + chunk, None, :]
            labels = torch.ones(pts.shape[:2], dtype=torch.int, device=pts.device)
            masks, iou = self._decode(feats, index, (pts, labels), multimask=True)
            best = iou.argmax(dim=1)
            rows = torch.arange(len(best), device=best.device)
            logits.append(masks[rows, best].float())
            ious.append(iou[rows, best].float())
        return torch.cat(logits), torch.cat(ious)

    @torch.no_grad()
    def decode_boxes(self, feats: dict, index: int, boxes: torch.Tensor) -> torch.Tensor:
        """One mask per box prompt (single-mask output) on image ``index``.

        Args:
            boxes: float (K, 4) pixel xyxy in S-pixel coordinates.
        Returns:
            float (K, S/4, S/4) mask logits.
        """
        pts = boxes.reshape(-1, 2, 2)
        labels = torch.tensor([[2, 3]], dtype=torch.int, device=boxes.device).expand(len(boxes), 2)
        masks, _ = self._decode(feats, index, (pts, labels), multimask=False)
        return masks[:, 0].float()

    def _decode(self, feats: dict, index: int, points, multimask: bool):
        sparse, dense = self.model.sam_prompt_encoder(points=points, boxes=None, masks=None)
        masks, iou, _, _ = self.model.sam_mask_decoder(
            image_embeddings=feats["image_embed"][index : index + 1],
            image_pe=self.model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
            repeat_image=True,
            high_res_features=[f[index : index + 1] for f in feats["high_res"]],
        )
        return masks, iou


def build_sam2_model(
    name: str,
    image_size: int,
    checkpoint: Path | None,
    seed: int = 0,
    add_no_mem_embed: bool = False,
) -> SAM2Proposer:
    """Build SAM2 on the CPU in eval mode.

    Args:
        name: ``SAM2_MODELS`` key (SAM2.0 or SAM2.1 config, hiera t/s/b+/l).
        image_size: input side (1024 for the released weights; smaller sizes for fast tests).
        checkpoint: Meta's ``.pt`` file (``{"model": state_dict}``, loaded with weights_only=True);
            None builds a random-init model seeded with ``seed``.
    """
    from sam2.build_sam import build_sam2

    config = SAM2_MODELS[name][0]
    overrides = [] if image_size == 1024 else [f"++model.image_size={image_size}"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_sam2(
            config,
            ckpt_path=str(checkpoint) if checkpoint else None,
            device="cpu",
            apply_postprocessing=False,
            hydra_overrides_extra=overrides,
        )
    return SAM2Proposer(model.eval(), name, add_no_mem_embed).eval()
