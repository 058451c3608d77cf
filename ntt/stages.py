"""What each stage of the prediction hands the next (``ntt.predict.predictor``): a batch through the encoders
(``Encoded``), one image's decoded prompts (``Proposals``), its masks before matching (``MaskPool``, what the
candidate cache keeps) and after (``Candidates``). Tensors on the device; shapes in each docstring.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class Encoded:
    """A batch through both encoders: ``features``, SAM2's image features (as its ``encode`` returns them);
    ``tokens``, float32 (B, g, g, D) DINOv2 patch tokens."""

    features: dict
    tokens: torch.Tensor

    def split(self) -> list[Encoded]:
        """One ``Encoded`` per image (each a batch of one)."""
        return [
            Encoded({k: _take(v, slice(i, i + 1)) for k, v in self.features.items()}, self.tokens[i : i + 1])
            for i in range(len(self.tokens))
        ]

    def __len__(self) -> int:
        return len(self.tokens)

    @staticmethod
    def empty() -> Encoded:
        """A batch of no images: what ``encode`` gives for no images, ``join`` for no parts (``split`` of it is
        empty, and ``Predictor.pools_from`` of it gives no pools)."""
        return Encoded({}, torch.zeros(0, 0, 0, 0))

    @staticmethod
    def join(parts: Sequence[Encoded]) -> Encoded:
        """The batch of several ``Encoded`` (inverse of ``split``); no parts give ``Encoded.empty()``."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return Encoded.empty()
        first = parts[0].features
        features = {
            k: torch.cat([p.features[k] for p in parts])
            if isinstance(v, torch.Tensor)
            else [torch.cat([p.features[k][i] for p in parts]) for i in range(len(v))]
            for k, v in first.items()
        }
        return Encoded(features, torch.cat([p.tokens for p in parts]))


def _take(value, index: slice):
    return value[index] if isinstance(value, torch.Tensor) else [v[index] for v in value]


@dataclass
class Proposals:
    """One image's decoded prompts: float (P, m, m) low-res mask logits and float (P,) SAM-predicted IoU."""

    logits: torch.Tensor
    iou: torch.Tensor


@dataclass
class MaskPool:
    """One image's masks that pass the predicted-IoU filter, with what the bank does not change (cacheable):
    logits float (N, m, m), iou float (N,), embeddings float (N, D) unit-norm mask-pooled DINOv2 features, boxes
    float (N, 4) low-res (x1, y1, x_max, y_max); counts: how many each filter left."""

    logits: torch.Tensor
    iou: torch.Tensor
    embeddings: torch.Tensor
    boxes: torch.Tensor
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class Candidates:
    """One image's masks after filtering, class matching and NMS, on the device.

    logits: float (N, m, m) low-res mask logits; iou: float (N,) SAM-predicted IoU;
    embeddings: float (N, D) unit-norm; scores: float (N,); labels: int64 (N,) bank class indices;
    counts: how many candidates each filter left (diagnostics).
    """

    logits: torch.Tensor
    iou: torch.Tensor
    embeddings: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    counts: dict[str, int] = field(default_factory=dict)

    def take(self, index: torch.Tensor) -> Candidates:
        return Candidates(
            self.logits[index],
            self.iou[index],
            self.embeddings[index],
            self.scores[index],
            self.labels[index],
            self.counts,
        )
