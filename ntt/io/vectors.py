"""Unit-norm feature vectors as compact bytes: int8 in steps of each row's largest component, plus that step.

A row of D features takes D + 4 bytes (float32 would take 4 D); cosines between decoded rows move by about 1e-3,
far below the gaps that decide a match. The candidate cache keeps its pools' embeddings this way, and the
FiftyOne SDK each prediction's embedding.
"""

from __future__ import annotations

import numpy as np

LEVELS = 127  # int8 steps on each side of zero


def quantize_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float (N, D) -> (int8 codes (N, D), float32 steps (N,)); a row decodes as ``codes * step / LEVELS``."""
    rows = np.asarray(rows, dtype=np.float32)
    scale = np.maximum(np.abs(rows).max(axis=1, initial=0.0), 1e-12).astype(np.float32)
    codes = np.round(rows / scale[:, None] * LEVELS).astype(np.int8)
    return codes, scale


def dequantize_rows(codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The inverse of ``quantize_rows``: float32 (N, D)."""
    return codes.astype(np.float32) * np.asarray(scale, np.float32)[:, None] / LEVELS


def row_to_bytes(row: np.ndarray) -> bytes:
    """One float (D,) vector as D + 4 bytes: its float32 step (little-endian), then its int8 codes."""
    codes, scale = quantize_rows(np.asarray(row)[None])
    return scale.astype("<f4").tobytes() + codes.tobytes()


def row_from_bytes(data: bytes) -> np.ndarray:
    """The float32 (D,) vector that ``row_to_bytes`` wrote."""
    if len(data) < 5:
        raise ValueError(f"an encoded vector has at least 5 bytes, got {len(data)}")
    scale = np.frombuffer(data[:4], "<f4")
    codes = np.frombuffer(data[4:], np.int8)[None]
    return dequantize_rows(codes, scale)[0]
