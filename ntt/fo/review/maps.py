"""The predictions as a map, and "more like this": FiftyOne brain runs over a predictions field's patches, built
from the embeddings ``segment`` kept (``ntt.fo.embeddings``), with no model pass.

- ``map_predictions``: a 2-D visualization (the App's Embeddings panel, lasso included) of the predictions; the
  bank's shots are projected with them, in the same coordinates, and those that are labels of this dataset get a
  visualization of their own (``<brain key>_shots``) over their field. Colour the map by ``label`` (the class), by
  an evaluation key (``eval``: tp / fp) or by ``margin``.
- ``index_similarity``: a similarity index over the same patches, for the App's "sort by similarity" (find every
  prediction that looks like the false positive at hand) and ``sort_by_similarity``.

A run replaces an earlier run of the same key only when that run is of the same kind over the same field: it is
what segmenting again and re-mapping asks for; any other run of that key is the user's and is refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from ntt.fo.banks import load_bank
from ntt.fo.embeddings import count_embeddings, load_embeddings
from ntt.fo.references import NTTFiftyOneError, check_collection, check_detections_field, detections_fields
from ntt.fo.store import dataset_of

log = logging.getLogger(__name__)

METHODS = ("umap", "tsne", "pca")
SEED = 51  # projections are seeded: the same predictions give the same map


@dataclass
class Kept:
    """The predictions of a field that have a kept vector: ``view`` (only those labels), ``sample_ids`` and, per
    sample, the vectors of its labels in the field's order (float32 (n_i, D)); ``missing``: labels without one.
    Samples without such a label are left out."""

    view: Any
    sample_ids: list[str]
    per_sample: list[np.ndarray]
    missing: int

    @property
    def count(self) -> int:
        """How many predictions have a vector (rows of ``vectors``)."""
        return sum(len(rows) for rows in self.per_sample)

    @property
    def vectors(self) -> np.ndarray:
        """float32 (N, D): every kept label's vector, in the view's order."""
        return np.concatenate(self.per_sample) if self.per_sample else np.zeros((0, 0), np.float32)


def kept_vectors(coll, label_field: str) -> Kept:
    """The kept vectors of ``label_field``'s predictions in ``coll``.

    Raises:
        NTTFiftyOneError: not a Detections field, or none of its labels has a kept vector (with what to do).
    """
    check_collection(coll)
    check_detections_field(coll, label_field)
    ids = coll.values(f"{label_field}.detections.id", unwind=True)
    if not ids:
        raise NTTFiftyOneError(f"field {label_field!r} has no predictions here to map")
    found = load_embeddings(coll, ids)
    if not found:
        raise NTTFiftyOneError(
            f"none of the {len(ids)} predictions in {label_field!r} has a kept embedding: segment with "
            "keep_embeddings=True (the default; 'Keep each prediction's embedding' in the form) first"
        )
    view = coll if len(found) == len(ids) else coll.select_labels(ids=list(found), fields=label_field)
    sample_ids, per_label = view.values(["id", f"{label_field}.detections.id"])
    labelled = [(sid, labels) for sid, labels in zip(sample_ids, per_label) if labels]
    per_sample = [np.stack([found[i] for i in labels]) for _, labels in labelled]
    return Kept(view, [sid for sid, _ in labelled], per_sample, len(ids) - len(found))


def count_kept_embeddings(coll, label_field: str) -> int:
    """How many of ``label_field``'s predictions in ``coll`` have a kept embedding (cheap enough for forms)."""
    return count_embeddings(coll, coll.values(f"{label_field}.detections.id", unwind=True))


def index_similarity(coll, label_field: str = "ntt", brain_key: str | None = None) -> dict[str, Any]:
    """A similarity index (FiftyOne brain, cosine, sklearn backend) over ``label_field``'s predictions in
    ``coll``, from their kept embeddings; predictions without one are left out and counted.

    Then, in the App, open the field's patches ("sort by similarity" on a prediction) or in Python:
    ``ds.to_patches("ntt").sort_by_similarity(label_id, k=20, brain_key="ntt_sim")``.

    Returns:
        ``{"brain_key", "indexed", "missing"}``; the key defaults to ``<label_field>_sim``.
    """
    return _index(kept_vectors(coll, label_field), coll, label_field, brain_key or f"{label_field}_sim")


def _index(kept: Kept, coll, label_field: str, key: str) -> dict[str, Any]:
    import fiftyone.brain as fob

    _clear_run(coll, key, "similarity", label_field)
    embeddings = dict(zip(kept.sample_ids, kept.per_sample))
    fob.compute_similarity(
        kept.view, patches_field=label_field, embeddings=embeddings, brain_key=key, backend="sklearn", metric="cosine"
    )
    return {"brain_key": key, "indexed": kept.count, "missing": kept.missing}


def map_predictions(
    coll,
    label_field: str = "ntt",
    bank: str | None = None,
    method: str | None = None,
    brain_key: str | None = None,
    similarity: bool = True,
) -> dict[str, Any]:
    """Map ``label_field``'s predictions in ``coll`` in 2-D for the App's Embeddings panel, from their kept
    embeddings, with the bank's shots projected in the same coordinates.

    Args:
        bank: the bank whose shots to place (default: the one the field records, when it still exists). All its
            shots are projected; its positive shots that are labels here are shown over their field.
        method: "umap" (needs ``umap-learn``), "tsne" or "pca"; default "umap" when installed, else "tsne".
        brain_key: the map's key (default ``<label_field>_map``); the shots that are labels of this dataset get
            ``<brain_key>_shots`` over their field.
        similarity: also index the same predictions for "sort by similarity" (``index_similarity``, key
            ``<label_field>_sim``).
    Returns:
        ``{"brain_key", "points", "missing", "method", "shots_brain_key", "shots", "shots_here", "similarity"}``:
        how many predictions were placed and how many had no kept embedding; how many shots were placed and how
        many of them are labels here (the others, e.g. from a COCO file, are only in ``shot_points``);
        ``shot_points`` float (S, 2) and ``shot_classes``, the shots' coordinates and classes.
    """
    method = _method(method)
    key = brain_key or f"{label_field}_map"
    kept = kept_vectors(coll, label_field)
    shots = _shots(coll, label_field, bank)
    points = project(np.concatenate([kept.vectors, shots.vectors]) if len(shots) else kept.vectors, method)
    pred_points, shot_points = points[: kept.count], points[kept.count :]
    _visualize(coll, kept.view, label_field, key, pred_points)
    here = _place_shots(coll, shots, shot_points, f"{key}_shots")
    out = {
        "brain_key": key,
        "points": kept.count,
        "missing": kept.missing,
        "method": method,
        "shots": len(shots),
        "shots_here": here,
        "shots_brain_key": f"{key}_shots" if here else None,
        "shot_points": shot_points,
        "shot_classes": shots.classes,
        "similarity": _index(kept, coll, label_field, f"{label_field}_sim") if similarity else None,
    }
    return out


def project(vectors: np.ndarray, method: str) -> np.ndarray:
    """float (N, D) -> float (N, 2) with FiftyOne brain's reducer ``method`` (seeded); fewer than 3 points are
    laid out on a line (no method fits them)."""
    import fiftyone.brain.visualization as fbv

    n, dim = vectors.shape
    if n < 3:
        return np.stack([np.arange(n, dtype=np.float32), np.zeros(n, np.float32)], axis=1)
    if method == "umap":
        config = fbv.UMAPVisualizationConfig(num_dims=2, num_neighbors=min(15, n - 1), seed=SEED, verbose=False)
    elif method == "tsne":
        pca = 50 if min(n, dim) > 50 else None  # FiftyOne's default reduction, where there is room for it
        perplexity = min(30.0, (n - 1) / 3)
        config = fbv.TSNEVisualizationConfig(num_dims=2, perplexity=perplexity, pca_dims=pca, seed=SEED, verbose=False)
    else:
        config = fbv.PCAVisualizationConfig(num_dims=2, seed=SEED)
    reducer = config.build()
    reducer.ensure_requirements()
    points, _ = reducer.fit_reducer(vectors.astype(np.float32))
    return np.asarray(points, np.float32)


def _method(method: str | None) -> str:
    if method is None:
        return "umap" if _has_umap() else "tsne"
    if method not in METHODS:
        raise NTTFiftyOneError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "umap" and not _has_umap():
        raise NTTFiftyOneError("method 'umap' needs the umap-learn package (pip install umap-learn), or use 'tsne'")
    return method


def _has_umap() -> bool:
    import importlib.util

    return importlib.util.find_spec("umap") is not None


@dataclass
class _Shots:
    """The positive and negative shots of a bank: ``vectors`` float32 (S, D) unit-norm, ``classes`` (S,) names,
    ``label_ids`` of the positive shots that are labels of a dataset (None for the others)."""

    vectors: np.ndarray
    classes: list[str]
    label_ids: list[str | None]

    def __len__(self) -> int:
        return len(self.classes)


def _shots(coll, label_field: str, bank: str | None) -> _Shots:
    name = bank if bank is not None else (dataset_of(coll).get_field(label_field).info or {}).get("ntt_bank")
    empty = _Shots(np.zeros((0, 0), np.float32), [], [])
    if name is None:
        return empty
    try:
        loaded = load_bank(coll, name)
    except NTTFiftyOneError as err:
        if bank is not None:
            raise
        log.info("map of %r: its bank's shots are not placed (%s)", label_field, err)
        return empty
    names = dict(zip(loaded.class_ids, loaded.class_names))
    vectors = loaded.shot_features.astype(np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    # a label of this dataset, placed over its field; negatives are predictions, on the map already
    from_here = [str(s.get("source", "")).startswith("dataset:") and not s.get("negative") for s in loaded.shots]
    return _Shots(
        vectors,
        [names[int(c)] for c in loaded.shot_class_ids],
        [str(s.get("annotation_id")) if here else None for s, here in zip(loaded.shots, from_here)],
    )


def _visualize(coll, view, label_field: str, key: str, points: np.ndarray) -> None:
    import fiftyone.brain as fob

    _clear_run(coll, key, "visualization", label_field)
    fob.compute_visualization(view, patches_field=label_field, points=points, brain_key=key)


def _place_shots(coll, shots: _Shots, points: np.ndarray, key: str) -> int:
    """A visualization of the shots that are labels of ``coll``'s dataset, in the map's coordinates, over the
    field that holds most of them; returns how many it shows."""
    dataset = dataset_of(coll)
    wanted = {i: row for row, i in enumerate(shots.label_ids) if i is not None}
    best, best_ids = None, []
    for name in detections_fields(dataset):
        found = dataset.select_labels(ids=list(wanted), fields=name).values(f"{name}.detections.id", unwind=True)
        if len(found) > len(best_ids):
            best, best_ids = name, found
    if best is None:
        return 0
    view = dataset.select_labels(ids=best_ids, fields=best)
    ordered = view.values(f"{best}.detections.id", unwind=True)
    _visualize(dataset, view, best, key, points[[wanted[i] for i in ordered]])
    return len(ordered)


def _clear_run(coll, key: str, kind: str, label_field: str) -> None:
    """Delete brain run ``key`` when it is ntt's kind of run over ``label_field`` (being made again); refuse to
    touch any other run of that key."""
    dataset = dataset_of(coll)
    if key not in dataset.list_brain_runs():
        return
    config = dataset.get_brain_info(key).config
    same_kind = kind in type(config).__name__.lower()
    if not same_kind or getattr(config, "patches_field", None) != label_field:
        raise NTTFiftyOneError(
            f"brain key {key!r} holds another run ({type(config).__name__} over "
            f"{getattr(config, 'patches_field', None)!r}): choose another key"
        )
    dataset.delete_brain_run(key)
