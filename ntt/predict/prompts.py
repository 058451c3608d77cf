"""DINOv2-guided prompting: SAM2 is prompted where the target's patches match a class prototype."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def guided_points(
    tokens: torch.Tensor, prototypes: torch.Tensor, count: int, image_size: int, spacing: int = 2
) -> torch.Tensor:
    """Points at the patches that look most like any class, best first, at least ``spacing + 1`` patches
    apart (greedy: take the best patch, suppress its neighbourhood, repeat), so flat regions and several
    objects all get points.

    Args:
        tokens: float (g, g, D) DINOv2 patch features of the target.
        prototypes: float (C, D) unit-norm class prototypes.
        count: at most this many points; patches with no positive cosine to any class are never used.
        image_size: SAM2 input side S; points are patch centres in S-pixel coordinates.
    Returns:
        float (K, 2) of (x, y), K <= count.
    """
    g = tokens.shape[0]
    sims = F.normalize(tokens.reshape(g * g, -1).float(), dim=1) @ prototypes.T.float()
    score = sims.max(dim=1).values.reshape(g, g).clone()
    score[score <= 0] = -math.inf
    picked = []
    for _ in range(count):
        flat = int(torch.argmax(score))
        row, col = divmod(flat, g)
        if score[row, col] == -math.inf:
            break
        picked.append((row, col))
        score[max(0, row - spacing) : row + spacing + 1, max(0, col - spacing) : col + spacing + 1] = -math.inf
    scale = image_size / g
    pts = [[(col + 0.5) * scale, (row + 0.5) * scale] for row, col in picked]
    return torch.tensor(pts, dtype=torch.float32, device=tokens.device).reshape(-1, 2)
