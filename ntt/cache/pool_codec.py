"""A ``MaskPool`` as compact arrays for the candidate cache, and back.

The low-res mask logits are most of a pool's size (1,024 prompts x 256 x 256 floats). Only what decides the
masks is kept: each mask's cells inside its box widened by ``MARGIN`` cells (outside it the mask is empty), as
int8 codes that keep every cell's sign exactly and, on the mask's edge band only, its value in square-root
steps; all of them zlib-compressed in one blob (away from the edge the codes are constant and compress to
almost nothing). So the low-res masks come back exactly, and at full resolution the same masks up to the
pixels that an edge moved by a small fraction of a cell. Embeddings are kept as int8 in steps of each one's
largest component, IoU and boxes exactly.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from ntt.io.vectors import dequantize_rows, quantize_rows
from ntt.stages import MaskPool

FORMAT = "pool-3"  # in every key: a new layout of the arrays is a miss, never a misread
LEVELS = 127  # int8 codes: +-LEVELS is "inside / outside, away from the edge"
CHUNK = 64  # masks quantised at a time (bounds the float work memory)
MARGIN = 3  # cells around the box: bilinear upsampling reads one neighbour, antialiasing a few more
COUNTS = ("prompts", "iou_filter", "nonempty")


def pack(pool: MaskPool) -> dict[str, np.ndarray]:
    """The pool as arrays: ``blob`` (uint8, compressed int8 codes of each crop), ``crops`` int32 (N, 4) x1, y1,
    x2, y2 (exclusive), ``ranges`` float32 (N,) each mask's edge range, ``iou`` float32 (N,), ``embeddings``
    int8 (N, D) with ``embedding_scales`` float32 (N,), ``boxes`` float32 (N, 4), ``shape`` int64 [N, m],
    ``counts`` int64 (3,)."""
    logits = pool.logits
    n, m = logits.shape[0], logits.shape[-1]
    crops = _crops(pool.boxes.cpu(), m)
    pieces, ranges = [], []
    for start in range(0, n, CHUNK):  # on the pool's device: only int8 codes come to the CPU
        codes, edge_range = (t.cpu() for t in _encode(logits[start : start + CHUNK].float()))
        ranges.append(edge_range)
        box = crops[start : start + CHUNK].tolist()
        pieces += [c[y1:y2, x1:x2].numpy().ravel() for c, (x1, y1, x2, y2) in zip(codes, box)]
    flat = np.concatenate(pieces) if pieces else np.zeros(0, np.int8)
    return {
        "blob": np.frombuffer(zlib.compress(flat.tobytes(), 6), np.uint8),
        "crops": crops.numpy().astype(np.int32),
        "ranges": torch.cat(ranges).numpy() if ranges else np.zeros(0, np.float32),
        "iou": pool.iou.float().cpu().numpy(),
        **_pack_embeddings(pool.embeddings.float().cpu()),
        "boxes": pool.boxes.float().cpu().numpy(),
        "shape": np.array([n, m], np.int64),
        "counts": np.array([pool.counts.get(k, 0) for k in COUNTS], np.int64),
    }


def unpack(arrays: dict[str, np.ndarray], device: torch.device) -> MaskPool:
    """The pool ``pack`` made, on ``device``. Outside each mask's crop, its logits are its "outside" value."""
    n, m = (int(v) for v in arrays["shape"])
    flat = torch.from_numpy(np.frombuffer(zlib.decompress(arrays["blob"].tobytes()), np.int8).copy())
    codes = torch.full((n, m, m), -LEVELS, dtype=torch.int8)
    offset = 0
    for i, (x1, y1, x2, y2) in enumerate(arrays["crops"].tolist()):
        size = (y2 - y1) * (x2 - x1)
        codes[i, y1:y2, x1:x2] = flat[offset : offset + size].reshape(y2 - y1, x2 - x1)
        offset += size
    if offset != len(flat):
        raise ValueError(f"candidate cache entry: {len(flat)} logit values for crops of {offset}")
    edge_range = torch.from_numpy(arrays["ranges"].astype(np.float32))
    return MaskPool(
        logits=_decode(codes.to(device), edge_range.to(device)),
        iou=torch.from_numpy(arrays["iou"].astype(np.float32)).to(device),
        embeddings=_unpack_embeddings(arrays).to(device),
        boxes=torch.from_numpy(arrays["boxes"].astype(np.float32)).to(device),
        counts=dict(zip(COUNTS, (int(v) for v in arrays["counts"]))),
    )


def _encode(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float (N, m, m) logits -> int8 codes (N, m, m) and float32 (N,) ranges, on the logits' device.

    A full-resolution pixel is the sign of a bilinear blend of its 2 x 2 nearest cells, so a cell's value
    matters only on the edge band (cells with a neighbour of the other sign); elsewhere its sign is enough.
    Band cells are coded in ``LEVELS`` square-root steps of the band's largest magnitude (fine near zero,
    where the edge is decided), the others as +-``LEVELS``; every cell keeps its sign exactly.
    """
    positive = logits > 0
    band = _spread(positive, torch.logical_or) & ~_spread(positive, torch.logical_and)
    edge_range = torch.where(band, logits.abs(), 0.0).flatten(1).amax(1).clamp(min=1e-6)
    codes = (positive.to(torch.int8) * 2 - 1) * LEVELS
    value, scale = logits[band], edge_range[:, None, None].expand_as(logits)[band]
    steps = ((value.abs() / scale).sqrt() * LEVELS).round().clamp(1, LEVELS)  # a sign never rounds off
    codes[band] = torch.where(value > 0, steps, -steps).to(torch.int8)
    return codes, edge_range.float()


def _spread(cells: torch.Tensor, combine) -> torch.Tensor:
    """Each cell combined with its 8 neighbours inside the grid (dilation with ``or``, erosion with ``and``)."""
    out = cells.clone()
    for dim in (-1, -2):
        n = out.shape[dim]
        spread = out.clone()
        spread.narrow(dim, 1, n - 1).copy_(combine(spread.narrow(dim, 1, n - 1), out.narrow(dim, 0, n - 1)))
        spread.narrow(dim, 0, n - 1).copy_(combine(spread.narrow(dim, 0, n - 1), out.narrow(dim, 1, n - 1)))
        out = spread
    return out


def _decode(codes: torch.Tensor, edge_range: torch.Tensor) -> torch.Tensor:
    steps = codes.float()
    return steps.mul_(steps.abs()).mul_((edge_range / LEVELS**2)[:, None, None])  # sign(q) (q / LEVELS)^2 range


def _pack_embeddings(embeddings: torch.Tensor) -> dict[str, np.ndarray]:
    """Unit-norm features (N, D) as int8 in steps of each row's largest component (``ntt.io.vectors``)."""
    codes, scale = quantize_rows(embeddings.numpy())
    return {"embeddings": codes, "embedding_scales": scale}


def _unpack_embeddings(arrays: dict[str, np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(dequantize_rows(arrays["embeddings"], arrays["embedding_scales"]))


def _crops(boxes: torch.Tensor, m: int) -> torch.Tensor:
    """Each box (inclusive low-res x1, y1, x_max, y_max) widened by ``MARGIN`` cells, clipped to the grid, as
    exclusive int64 (N, 4)."""
    lo = (boxes[:, :2].floor() - MARGIN).clamp(min=0)
    hi = (boxes[:, 2:].ceil() + MARGIN + 1).clamp(max=m)
    return torch.cat([lo, hi], dim=1).long()
