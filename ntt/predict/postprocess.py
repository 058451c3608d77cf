"""Matching and post-processing of candidate masks: pooling, cosine matching, NMS, soft merging."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ntt.geometry import tight_crop, upsample_logits  # noqa: F401 - also reached here (predictor, refinish, tests)


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


def match_classes(
    embeddings: torch.Tensor, prototypes: torch.Tensor, negatives: Negatives | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine of each mask embedding to each class prototype, clamped at 0; best class per mask.

    With negative shots, per class c: ``s_c = pos_c * exp(-max(neg_c - pos_c, 0) / sigma)``, ``neg_c`` the best
    clamped cosine to c's negatives (0 for a class without any), as the research code's negative-reference
    scorer (``_compute_sim_global_avg_with_neg``); then the best class. Without negatives nothing changes.

    Args:
        embeddings: float (N, D) unit-norm; prototypes: float (C, D) unit-norm.
    Returns:
        (scores, labels): float (N,) best score, int64 (N,) class index into ``prototypes``.
    """
    sims = (embeddings @ prototypes.T).clamp_min(0.0)
    if negatives is not None and len(negatives.classes):
        sims = sims * torch.exp(-(negatives.best(embeddings, sims.shape[1]) - sims).clamp_min(0.0) / negatives.sigma)
    scores, labels = sims.max(dim=1)
    return scores, labels


@dataclass
class Negatives:
    """A bank's negative shots on the device: ``units`` float (K, D) unit-norm, ``classes`` int64 (K,) class
    indices, and the decay's ``sigma``."""

    units: torch.Tensor
    classes: torch.Tensor
    sigma: float

    def best(self, embeddings: torch.Tensor, n_classes: int) -> torch.Tensor:
        """float (N, C): per mask and class, the best clamped cosine to that class's negatives (0 if none)."""
        sims = (embeddings @ self.units.T).clamp_min(0.0)
        best = sims.new_zeros((len(embeddings), n_classes))
        index = self.classes[None].expand(len(embeddings), -1)
        return best.scatter_reduce(1, index, sims, reduce="amax", include_self=True)


def class_aware_nms(
    boxes: torch.Tensor, ranking: torch.Tensor, labels: torch.Tensor, iou_thresh: float, max_keep: int
) -> torch.Tensor:
    """Box NMS within each class, ranked by ``ranking`` (SAM's predicted IoU in NTT).

    Ties in ``ranking`` (common when SAM2's IoU head runs in bf16) are broken by candidate index, the lower
    (earlier prompt) first, so the kept set and its order never depend on the sort's implementation.

    Returns:
        int64 indices of the kept candidates in descending ``ranking`` order, at most ``max_keep``.
    """
    from torchvision.ops import batched_nms  # lazily: importing torchvision takes a second forms need not wait

    keep = batched_nms(boxes.float(), strict_ranks(ranking), labels, iou_thresh)
    return keep[:max_keep]


def strict_ranks(ranking: torch.Tensor) -> torch.Tensor:
    """Float scores with the order of ``ranking`` (descending) and ties broken by index: n - rank."""
    order = torch.argsort(ranking.float(), descending=True, stable=True)
    ranks = torch.empty(len(order), dtype=torch.float32, device=ranking.device)
    ranks[order] = torch.arange(len(order), 0, -1, dtype=torch.float32, device=ranking.device)
    return ranks


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


def merge_size(n: int, size: tuple[int, int], budget: int = 256 * 2**20) -> tuple[int, int]:
    """Resolution for IoS of n masks: the image's own (faithful) unless n x H x W bool masks exceed
    ``budget`` bytes, then scaled down keeping the aspect ratio (only very large images)."""
    h, w = size
    scale = min(1.0, math.sqrt(budget / max(1, n * h * w)))
    return max(1, int(h * scale)), max(1, int(w * scale))


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


def logits_to_crops(logits: torch.Tensor, size: tuple[int, int]) -> list:
    """Full-resolution masks of low-res logits (N, m, m), each computed only inside its own box.

    Equal to ``upsample_logits`` followed by cropping each mask to its tight box, without ever holding a
    full-resolution tensor per mask: bilinear upsampling can only be positive where one of the two
    neighbouring low-res cells is, so each mask is evaluated (``grid_sample``, which matches
    ``interpolate(bilinear, align_corners=False)`` when upsampling) on the window of its positive cells
    dilated by one cell. Images smaller than the mask grid take the full-frame path (antialiased).

    Returns:
        per mask, ``([x1, y1, x2, y2], crop)`` with exclusive x2/y2 and a tight bool crop, or None when
        the mask is empty at full resolution.
    """
    h, w = size
    m = logits.shape[-1]
    if h < m or w < m:
        return [tight_crop(full) for full in upsample_logits(logits, size).cpu().numpy()]
    out = []
    for logit in logits:
        pos = logit > 0
        rows, cols = torch.nonzero(pos.any(1)).flatten(), torch.nonzero(pos.any(0)).flatten()
        if len(rows) == 0:
            out.append(None)
            continue
        x0, x1 = _pixel_window(int(cols[0]), int(cols[-1]), m, w)
        y0, y1 = _pixel_window(int(rows[0]), int(rows[-1]), m, h)
        out.append(_offset(tight_crop(_window_mask(logit.float(), (x0, x1, y0, y1), (h, w))), x0, y0))
    return out


def _offset(found, x0: int, y0: int):
    if found is None:
        return None
    (x1, y1, x2, y2), crop = found
    return [x1 + x0, y1 + y0, x2 + x0, y2 + y0], crop


def _pixel_window(first: int, last: int, cells: int, pixels: int) -> tuple[int, int]:
    """Pixels whose bilinear source coordinate u = (p + 0.5) * cells / pixels - 0.5 lies in
    [first - 1, last + 1): the only pixels that can see a positive cell."""
    scale = cells / pixels
    lo = math.floor((first - 1 + 0.5) / scale - 0.5) - 1
    hi = math.ceil((last + 1 + 0.5) / scale - 0.5) + 1
    return max(0, lo), min(pixels, hi)


def _window_mask(logit: torch.Tensor, window, size, max_pixels: int = 1 << 22) -> np.ndarray:
    """Bool mask of the window, sampled in bands of rows so no float tensor exceeds ``max_pixels``."""
    x0, x1, y0, y1 = window
    band = max(1, max_pixels // max(1, x1 - x0))
    parts = [
        (_sample_window(logit, (x0, x1, top, min(y1, top + band)), size) > 0).cpu().numpy()
        for top in range(y0, y1, band)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, x1 - x0), bool)


def _sample_window(logit: torch.Tensor, window, size) -> torch.Tensor:
    x0, x1, y0, y1 = window
    h, w = size
    m = logit.shape[-1]
    # Source coordinates of the window's pixels, normalised for grid_sample (align_corners=False).
    us = ((torch.arange(x0, x1, device=logit.device) + 0.5) * (m / w) - 0.5 + 0.5) / m * 2 - 1
    vs = ((torch.arange(y0, y1, device=logit.device) + 0.5) * (m / h) - 0.5 + 0.5) / m * 2 - 1
    grid = torch.stack(torch.meshgrid(vs, us, indexing="ij")[::-1], dim=-1)[None]
    out = F.grid_sample(logit[None, None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, 0]
