"""Which images to label next, from image vectors (``ntt.predict.image_embeddings``): pure numpy.

- ``k_center``: cover the data set. Greedy k-center (farthest-first traversal) in cosine distance: each pick is the
  image farthest from every image picked or labelled so far, so a few picks already span what the data holds.
- ``unsureness``: where a bank is least sure. Per target image, how far it is from every positive shot of the bank
  and, with predictions, how close its least clear detection came to another class (its smallest ``margin``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def k_center(vectors: np.ndarray, n: int, start: Sequence[int] | None = None) -> list[int]:
    """Greedy k-center over unit-norm vectors in cosine distance (1 - cosine): ``n`` new picks, in pick order.

    Each pick is the vector farthest from its nearest centre; the centres are ``start`` (e.g. the images already
    labelled: never picked again) and the picks so far. Without ``start``, the first pick is the vector nearest
    the mean direction (the most typical image). Deterministic: ties go to the lowest index.

    Args:
        vectors: float (N, D), rows L2-normalised.
        n: how many to pick, >= 0; more than there are left picks all of them.
        start: indices of the initial centres.
    Returns:
        up to ``n`` indices into ``vectors``, none of them in ``start``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    vectors = np.asarray(vectors, dtype=np.float64)
    centres = sorted(set(int(i) for i in start or ()))
    nearest = np.full(len(vectors), np.inf)  # cosine distance of each vector to its nearest centre
    for centre in centres:
        nearest = np.minimum(nearest, cosine_distances(vectors, centre))
    nearest[centres] = -np.inf  # a centre is never picked
    picks: list[int] = []
    while len(picks) < n and len(picks) + len(centres) < len(vectors):
        pick = int(np.argmax(nearest)) if picks or centres else most_typical(vectors)
        picks.append(pick)
        nearest = np.minimum(nearest, cosine_distances(vectors, pick))
        nearest[pick] = -np.inf
    return picks


def cosine_distances(vectors: np.ndarray, index: int) -> np.ndarray:
    """float64 (N,): 1 - cosine of each unit-norm row of ``vectors`` to row ``index``."""
    return 1.0 - vectors @ vectors[index]


def most_typical(vectors: np.ndarray) -> int:
    """The index of the unit-norm row nearest the mean direction (the lowest on ties)."""
    return int(np.argmax(vectors @ vectors.mean(axis=0)))


def shot_distances(vectors: np.ndarray, shots: np.ndarray) -> np.ndarray:
    """float64 (N,): per unit-norm image vector (N, D), 1 - its largest cosine to the shot features (S, D),
    which need not be normalised (a bank's are raw); with no shot, 1 everywhere (nothing is near)."""
    if len(shots) == 0:
        return np.ones(len(vectors))
    shots = np.asarray(shots, dtype=np.float64)
    unit = shots / np.maximum(np.linalg.norm(shots, axis=1, keepdims=True), 1e-12)
    return 1.0 - (np.asarray(vectors, dtype=np.float64) @ unit.T).max(axis=1)


def percentile_ranks(values: np.ndarray) -> np.ndarray:
    """float64 (N,) in (0, 1]: each value's rank among ``values`` in ascending order (1 for the smallest), over
    N: the largest gets 1. Tied values share their average rank; NaN values get NaN and the others are ranked
    among themselves."""
    values = np.asarray(values, dtype=np.float64)
    ranks = np.full(len(values), np.nan)
    known = ~np.isnan(values)
    ordered = np.sort(values[known])
    below = np.searchsorted(ordered, values[known], side="left")
    up_to = np.searchsorted(ordered, values[known], side="right")
    ranks[known] = (below + up_to + 1) / 2 / max(len(ordered), 1)  # the mean of ranks below+1 .. up_to
    return ranks


def unsureness(vectors: np.ndarray, shots: np.ndarray, margins: np.ndarray | None = None) -> np.ndarray:
    """How unsure a bank is about each target image: higher is more unsure.

    Two signals, each turned into its percentile rank among the targets (``percentile_ranks``) so neither one's
    scale dominates, then averaged: (a) the image's distance to the nearest positive shot (``shot_distances``:
    far from everything the bank knows) and (b) the smallest ``margin`` among its predictions (the class score
    minus the best other class's: small is ambiguous), ranked so that the smallest margin is the most unsure.
    A target with no margin (no predictions field, or no detections in it) is scored by (a) alone.

    Args:
        vectors: float (N, D), unit-norm image vectors of the targets.
        shots: float (S, D), the bank's positive shot features (raw or normalised).
        margins: float (N,), per target its smallest prediction margin, NaN where it has none; None: (a) alone.
    Returns:
        float64 (N,) in (0, 1].
    """
    far = percentile_ranks(shot_distances(vectors, shots))
    if margins is None:
        return far
    ambiguous = percentile_ranks(-np.asarray(margins, dtype=np.float64))
    return np.where(np.isnan(ambiguous), far, (far + ambiguous) / 2)
