"""Matching and post-processing of candidate masks: pooling, cosine matching, NMS, soft merging."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms


def interpolation_matrix(src: int, dst: int, device=None) -> torch.Tensor:
    """The (dst, src) matrix of 1-D linear upsampling (align_corners=False) from ``src`` to ``dst`` samples.

    Bilinear upsampling of a (src, src) map to (dst, dst) is ``A @ X @ A.T`` with this ``A``.
    """
    eye = torch.eye(src, device=device).reshape(src, 1, src)
    return F.interpolate(eye, size=dst, mode="linear", align_corners=False)[:, 0, :].T.contiguous()


def pool_mask_features(masks: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Mean of bilinearly upsampled patch features inside each binary mask, L2-normalised.

    Equal to upsampling ``features`` (g, g, D) bilinearly to the mask grid (m, m) and averaging inside
    each mask (NTT's matmul of [N, m*m] by [m*m, D]), but computed exactly on the patch grid: the
    adjoint of the upsampling turns each mask into (g, g) weights ``A.T @ M @ A``.

    Args:
        masks: bool (N, m, m), none empty.
        features: float (g, g, D) patch features.
    Returns:
        float32 (N, D) unit-norm mask embeddings.
    """
    n, m, _ = masks.shape
    g, _, d = features.shape
    interp = interpolation_matrix(g, m, device=masks.device)  # (m, g)
    mf = masks.float()
    weights = interp.T @ mf @ interp  # (N, g, g)
    pooled = weights.reshape(n, g * g) @ features.reshape(g * g, d).float()
    pooled = pooled / mf.flatten(1).sum(1, keepdim=True).clamp_min(1.0)
    return F.normalize(pooled, dim=1)


def match_classes(embeddings: torch.Tensor, prototypes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine of each mask embedding to each class prototype, clamped at 0; best class per mask.

    Args:
        embeddings: float (N, D) unit-norm; prototypes: float (C, D) unit-norm.
    Returns:
        (scores, labels): float (N,) max clamped cosine, int64 (N,) class index into ``prototypes``.
    """
    sims = (embeddings @ prototypes.T).clamp_min(0.0)
    scores, labels = sims.max(dim=1)
    return scores, labels


def class_aware_nms(
    boxes: torch.Tensor, ranking: torch.Tensor, labels: torch.Tensor, iou_thresh: float, max_keep: int
) -> torch.Tensor:
    """Box NMS within each class, ranked by ``ranking`` (SAM's predicted IoU in NTT).

    Returns:
        int64 indices of the kept candidates in descending ``ranking`` order, at most ``max_keep``.
    """
    keep = batched_nms(boxes.float(), ranking.float(), labels, iou_thresh)
    return keep[:max_keep]


def soft_merge_decay(
    intersections: torch.Tensor,
    areas: torch.Tensor,
    labels: torch.Tensor,
    embeddings: torch.Tensor,
) -> torch.Tensor:
    """NTT's semantic overlap d_i = max over same-class j ranked before i of IoS(i, j) x max(0, cos(i, j)).

    Candidates must be given in rank order (index 0 ranked first). IoS(i, j) = |M_i and M_j| / |M_i|.

    Args:
        intersections: float (N, N) pixel counts |M_i and M_j|.
        areas: float (N,) pixel counts |M_i| (0 allowed: such a mask gets d = 0).
        labels: int (N,) class indices; embeddings: float (N, D) unit-norm.
    Returns:
        float (N,) d in [0, 1]; the first mask of each class has d = 0.
    """
    n = len(areas)
    ios = intersections / areas.clamp_min(1.0)[:, None]
    cos = (embeddings @ embeddings.T).clamp_min(0.0)
    same = labels[:, None] == labels[None, :]
    earlier = torch.ones(n, n, dtype=torch.bool, device=areas.device).tril(-1)
    overlap = torch.where(same & earlier, ios * cos, torch.zeros_like(ios))
    if n == 0:
        return areas.new_zeros(0)
    return overlap.max(dim=1).values.clamp(0.0, 1.0)


def apply_decay(scores: torch.Tensor, decay: torch.Tensor, exponent: float) -> torch.Tensor:
    """score x (1 - d) ** exponent."""
    return scores * (1.0 - decay).clamp_min(0.0) ** exponent


def mask_intersections(masks: torch.Tensor, chunk: int = 1 << 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise intersections and areas of binary masks, accumulated over pixel chunks (bounded memory).

    Args:
        masks: bool (N, H, W).
    Returns:
        (intersections float (N, N), areas float (N,)) as exact pixel counts.
    """
    flat = masks.flatten(1)
    n, p = flat.shape
    inter = torch.zeros(n, n, dtype=torch.float64, device=masks.device)
    for start in range(0, p, chunk):
        part = flat[:, start : start + chunk].float()
        inter += (part @ part.T).double()
    return inter.float(), flat.sum(1).float()


def upsample_logits(logits: torch.Tensor, size: tuple[int, int], chunk: int = 32) -> torch.Tensor:
    """Low-resolution mask logits (N, m, m) -> bool masks (N, H, W) at logit > 0 (bilinear, antialias).

    Upsampled ``chunk`` masks at a time so only bool masks are held at full resolution.
    """
    out = torch.zeros((logits.shape[0], *size), dtype=torch.bool, device=logits.device)
    for start in range(0, logits.shape[0], chunk):
        part = logits[start : start + chunk, None].float()
        up = F.interpolate(part, size=size, mode="bilinear", align_corners=False, antialias=True)
        out[start : start + chunk] = up[:, 0] > 0
    return out


def select_top(
    scores: torch.Tensor,
    labels: torch.Tensor,
    max_instances: int,
    score_thresh: float,
    class_thresh: torch.Tensor | None = None,
) -> torch.Tensor:
    """Indices of the final detections: score >= threshold (per class if given), best first, at most K.

    Args:
        class_thresh: float (C,) per-class thresholds indexed by label, or None for ``score_thresh``.
    """
    thresh = class_thresh[labels] if class_thresh is not None else torch.full_like(scores, score_thresh)
    order = torch.argsort(scores, descending=True, stable=True)
    order = order[scores[order] >= thresh[order]]
    return order[:max_instances]
