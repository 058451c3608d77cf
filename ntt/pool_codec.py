"""A ``MaskPool`` as compact arrays for the candidate cache, and back.

The low-res mask logits are most of a pool's size (1,024 prompts x 256 x 256 floats). Only what decides the
masks is kept: each mask's logits inside its box widened by ``MARGIN`` cells (outside it the mask is empty),
clipped to its own range (at most +-``CLIP``) and quantised to int8 in 127 steps of that range, all of them
zlib-compressed in one blob (the clipped plateaus compress to almost nothing). Upsampled to full resolution
they give the same masks up to the few pixels whose logit is within one step of zero. Embeddings are kept as
int8 in steps of each one's largest component, IoU and boxes exactly.
"""

from __future__ import annotations

import hashlib
import logging
import zlib

import numpy as np
import torch

from .cache import entry_key, image_digest
from .models import encoder_identity
from .predictor import MaskPool

log = logging.getLogger(__name__)
FORMAT = "pool-2"  # in every key: a new layout of the arrays is a miss, never a misread
CLIP = 8.0  # logits beyond this are the mask's inside or outside, far from its edge
MARGIN = 3  # cells around the box: bilinear upsampling reads one neighbour, antialiasing a few more
COUNTS = ("prompts", "iou_filter", "nonempty")


def pack(pool: MaskPool) -> dict[str, np.ndarray]:
    """The pool as arrays: ``blob`` (uint8, compressed int8 crops), ``crops`` int32 (N, 4) x1, y1, x2, y2
    (exclusive), ``ranges`` float32 (N,) each crop's quantisation range, ``iou`` float32 (N,), ``embeddings``
    int8 (N, D) with ``embedding_scales`` float32 (N,), ``boxes`` float32 (N, 4), ``shape`` int64 [N, m],
    ``counts`` int64 (3,)."""
    logits = pool.logits.float().cpu()
    n, m = logits.shape[0], logits.shape[-1]
    crops = _crops(pool.boxes.cpu(), m)
    windows = [logits[i, y1:y2, x1:x2] for i, (x1, y1, x2, y2) in enumerate(crops.tolist())]
    # per mask, the int8 step follows its own logits (up to CLIP): fine steps where logits are small
    ranges = np.array([min(CLIP, max(float(w.abs().max()), 1e-6)) for w in windows], np.float32)
    pieces = [
        (w.clamp(-r, r) * (127.0 / r)).round().to(torch.int8).numpy().ravel() for w, r in zip(windows, ranges.tolist())
    ]
    flat = np.concatenate(pieces) if pieces else np.zeros(0, np.int8)
    return {
        "blob": np.frombuffer(zlib.compress(flat.tobytes(), 6), np.uint8),
        "crops": crops.numpy().astype(np.int32),
        "ranges": ranges,
        "iou": pool.iou.float().cpu().numpy(),
        **_pack_embeddings(pool.embeddings.float().cpu()),
        "boxes": pool.boxes.float().cpu().numpy(),
        "shape": np.array([n, m], np.int64),
        "counts": np.array([pool.counts.get(k, 0) for k in COUNTS], np.int64),
    }


def unpack(arrays: dict[str, np.ndarray], device: torch.device) -> MaskPool:
    """The pool ``pack`` made, on ``device``: logits outside each mask's crop are -``CLIP`` (outside the mask)."""
    n, m = (int(v) for v in arrays["shape"])
    flat = np.frombuffer(zlib.decompress(arrays["blob"].tobytes()), np.int8)
    logits = torch.full((n, m, m), -CLIP)
    offset = 0
    for i, ((x1, y1, x2, y2), value_range) in enumerate(zip(arrays["crops"].tolist(), arrays["ranges"].tolist())):
        size = (y2 - y1) * (x2 - x1)
        crop = torch.from_numpy(flat[offset : offset + size].astype(np.float32)).reshape(y2 - y1, x2 - x1)
        logits[i, y1:y2, x1:x2] = crop * (value_range / 127.0)
        offset += size
    if offset != len(flat):
        raise ValueError(f"candidate cache entry: {len(flat)} logit values for crops of {offset}")
    return MaskPool(
        logits=logits.to(device),
        iou=torch.from_numpy(arrays["iou"].astype(np.float32)).to(device),
        embeddings=_unpack_embeddings(arrays).to(device),
        boxes=torch.from_numpy(arrays["boxes"].astype(np.float32)).to(device),
        counts=dict(zip(COUNTS, (int(v) for v in arrays["counts"]))),
    )


def _pack_embeddings(embeddings: torch.Tensor) -> dict[str, np.ndarray]:
    """Unit-norm features (N, D) as int8 in steps of each row's largest component (cosines move by ~1e-3)."""
    scale = embeddings.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)
    codes = (embeddings / scale * 127).round().to(torch.int8)
    return {"embeddings": codes.numpy(), "embedding_scales": scale[:, 0].numpy().astype(np.float32)}


def _unpack_embeddings(arrays: dict[str, np.ndarray]) -> torch.Tensor:
    codes = torch.from_numpy(arrays["embeddings"].astype(np.float32))
    return codes * torch.from_numpy(arrays["embedding_scales"])[:, None] / 127


def _crops(boxes: torch.Tensor, m: int) -> torch.Tensor:
    """Each box (inclusive low-res x1, y1, x_max, y_max) widened by ``MARGIN`` cells, clipped to the grid, as
    exclusive int64 (N, 4)."""
    lo = (boxes[:, :2].floor() - MARGIN).clamp(min=0)
    hi = (boxes[:, 2:].ceil() + MARGIN + 1).clamp(max=m)
    return torch.cat([lo, hi], dim=1).long()


class PoolCache:
    """The candidate cache as a ``Segmenter`` uses it: one key per image for this predictor's models and settings,
    hits unpacked onto its device, misses stored. Only for grid prompts (guided prompts depend on the bank).

    The key: the image's bytes, both models with their weights' fingerprints, the input sizes, the precision and
    device type, and the settings that shape the pool (grid, IoU filter, no-mem embedding) and this format.
    """

    def __init__(self, predictor, store):
        model, seg = predictor.cfg.model, predictor.cfg.segment
        self.parts = {
            "format": FORMAT,
            "sam2": [model.sam2, getattr(predictor.sam, "fingerprint", type(predictor.sam).__name__)],
            "dinov2": [predictor.dinov2.name, encoder_identity(predictor.dinov2, model)["fingerprint"]],
            "sizes": [int(predictor.sam.image_size), int(predictor.dinov2.image_size)],
            "numerics": [model.dtype, predictor.device.type],
            "prompts": [seg.points_per_side, seg.pred_iou_thresh, seg.add_no_mem_embed],
        }
        self.store, self.device = store, predictor.device
        self.hits = self.misses = 0

    def key(self, source, image: np.ndarray) -> str:
        """The entry key of an image: from its file's bytes, or from the array itself."""
        if isinstance(source, np.ndarray):
            digest = hashlib.sha256(repr(image.shape).encode() + np.ascontiguousarray(image).tobytes()).hexdigest()
        else:
            digest = image_digest(source)
        return entry_key(image=digest, **self.parts)

    def get(self, key: str) -> MaskPool | None:
        arrays = self.store.get(key)
        if arrays is not None:
            try:
                pool = unpack(arrays, self.device)
                self.hits += 1
                return pool
            except (KeyError, ValueError, zlib.error) as err:
                log.warning("candidate cache: ignoring entry %s (%s)", key[:12], err)
        self.misses += 1
        return None

    def put(self, key: str, pool: MaskPool) -> MaskPool:
        """Store ``pool``; returns it as a later hit will see it, so the run that fills the cache and the runs
        that read it give the same detections."""
        arrays = pack(pool)
        try:
            self.store.put(key, arrays)
        except OSError as err:  # a full disk must not stop segmenting: the cache is only a shortcut
            log.warning("candidate cache: not stored (%s)", err)
        return unpack(arrays, self.device)
