"""Small stand-ins for the models, shared by tests."""

from __future__ import annotations

import torch


class BoxEchoProposer:
    """Stands in for SAM2 on box prompts: the mask of a box is exactly that box (in its low-res frame)."""

    image_size, mask_size = 256, 64

    def prepare(self, image):
        return torch.zeros(3, 256, 256)

    def encode(self, images):
        return {}

    def decode_boxes(self, feats, index, boxes):
        out = torch.full((len(boxes), 64, 64), -10.0)
        for k, (x1, y1, x2, y2) in enumerate((boxes / 4).round().long().tolist()):
            out[k, y1:y2, x1:x2] = 10.0
        return out


class PerImageDecode:
    """``decode_batch`` for fakes that answer one image at a time through
    ``decode_points(feats, index, coords, chunk)``."""

    def decode_batch(self, feats, prompts, chunk, compiled=False):
        return [self.decode_points(feats, i, coords, chunk) for i, coords in enumerate(prompts)]
