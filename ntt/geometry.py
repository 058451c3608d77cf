"""Geometry helpers: point grids, mask boxes, context crops and box format conversions."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def point_grid(points_per_side: int, image_size: int) -> torch.Tensor:
    """The NTT prompt grid: edge-inclusive, in pixel coordinates of a square ``image_size`` input.

    Each axis is ``linspace(0, image_size - 1, n) + 0.5`` (SAM's automatic mask generator insets its
    grid instead; NTT reaches the borders). Points are ordered row by row (x varies fastest).

    Returns:
        float32 tensor (n * n, 2) of (x, y).
    """
    axis = torch.linspace(0, image_size - 1, points_per_side) + 0.5
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1).float()


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Boxes of bool masks (N, H, W) as float32 (N, 4) of (x1, y1, x_max, y_max), max being the last occupied
    index (the reference code's convention, used for its NMS); an empty mask gives [0, 0, 0, 0].

    This is SAM2's own ``batched_mask_to_box``. Exclusive boxes of full-resolution masks come with their
    crops from ``tight_crop``.
    """
    from sam2.utils.amg import batched_mask_to_box  # lazily: light commands never load sam2 (and hydra)

    return batched_mask_to_box(masks).float()


def context_crop_box(
    box_xywh: list[float], image_size: tuple[int, int], context_ratio: float
) -> tuple[int, int, int, int]:
    """The square crop with context around a reference box, as the reference code computes it.

    The COCO box is truncated to integers, the crop is centred on it with side
    max(w, h) * (1 + context_ratio), its limits are ``int(centre -/+ side / 2)`` clipped to the image,
    so near a border the crop is not square (it gets stretched when resized).

    Args:
        box_xywh: pixel [x, y, w, h].
        image_size: (H, W).
    Returns:
        (x1, y1, x2, y2) integer crop limits with exclusive x2/y2, to slice ``image[y1:y2, x1:x2]``.
    """
    h, w = image_size
    x1, y1 = int(box_xywh[0]), int(box_xywh[1])
    x2, y2 = int(box_xywh[0] + box_xywh[2]), int(box_xywh[1] + box_xywh[3])
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    side = max(x2 - x1, y2 - y1) * (1 + context_ratio)
    cx1, cx2 = max(0, int(cx - side / 2)), min(w, int(cx + side / 2))
    cy1, cy2 = max(0, int(cy - side / 2)), min(h, int(cy + side / 2))
    # A degenerate box still needs one pixel to crop.
    return cx1, cy1, max(cx2, cx1 + 1), max(cy2, cy1 + 1)


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """Pixel xyxy (exclusive x2/y2) -> COCO pixel xywh. Shape (N, 4) -> (N, 4)."""
    out = np.asarray(boxes, dtype=np.float64).copy()
    out[:, 2:] -= out[:, :2]
    return out


def tight_crop(mask: np.ndarray) -> tuple[list[int], np.ndarray] | None:
    """A bool mask (H, W) cut to its tight box: ``([x1, y1, x2, y2], crop)`` with exclusive x2/y2, or None
    when the mask is empty."""
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    if len(rows) == 0:
        return None
    y1, y2, x1, x2 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return [x1, y1, x2, y2], mask[y1:y2, x1:x2].copy()


def mask_tight_box_xywh(mask: np.ndarray) -> list[float]:
    """COCO xywh of a bool mask (H, W); raises ValueError when the mask is empty."""
    found = tight_crop(mask)
    if found is None:
        raise ValueError("empty mask")
    x1, y1, x2, y2 = found[0]
    return [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]


def upsample_logits(logits: torch.Tensor, size: tuple[int, int], max_pixels: int = 1 << 24) -> torch.Tensor:
    """Low-resolution mask logits (N, m, m) -> bool masks (N, H, W) at logit > 0 (bilinear, antialias).

    Upsampled a few masks at a time (at most ``max_pixels`` float values) so only bool masks are held at
    full resolution.
    """
    chunk = max(1, max_pixels // max(1, size[0] * size[1]))
    out = torch.zeros((logits.shape[0], *size), dtype=torch.bool, device=logits.device)
    for start in range(0, logits.shape[0], chunk):
        part = logits[start : start + chunk, None].float()
        up = F.interpolate(part, size=size, mode="bilinear", align_corners=False, antialias=True)
        out[start : start + chunk] = up[:, 0] > 0
    return out
