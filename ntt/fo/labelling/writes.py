"""Writing a batch of labels: as a plain replacement, or first writer wins (for shards, which may have two
attempts alive at once: a worker declared lost may still be running).

A first-writer-wins write sets a sample's field only where it is still empty, in one conditional update per
sample (one per sample: its result says who won), so a sample is labelled exactly once whoever else writes it;
the attempt that lost a sample learns which, to remove the mask files it wrote for it.
"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
from bson import ObjectId

from ntt.fo.embeddings import delete_embeddings, save_embeddings


def write_labels(dataset, label_field: str, values: dict, first_writer_wins: bool = False) -> set[str]:
    """Write ``values`` (sample id -> ``fo.Detections`` or None) into ``label_field``; returns the sample ids
    written. ``first_writer_wins``: only samples whose field is still empty are written (None values are
    then not written: nothing to clear)."""
    if not values:
        return set()
    if not first_writer_wins:
        dataset.set_values(label_field, values, key_field="id")
        return set(values)
    now = datetime.now(timezone.utc)  # FiftyOne's own last-modified stamp: informational, never compared here
    written = set()
    for sid, dets in values.items():
        if dets is None:
            continue
        found = dataset._sample_collection.update_one(
            {"_id": ObjectId(sid), label_field: None},  # None matches a missing field too
            {"$set": {label_field: dets.to_mongo(), "last_modified_at": now}},
        )
        if found.modified_count:
            written.add(sid)
    return written


class EmbeddingWrites:
    """A batch's prediction embeddings (``ntt.fo.embeddings``), saved before its labels and settled after, as
    ``MaskFiles`` does with mask files: the vectors of labels that were not written (another attempt labelled
    the sample first) go, and so do those of the labels the batch replaced."""

    def __init__(self, dataset, label_field: str):
        self.dataset = dataset
        self.label_field = label_field
        self.rows: dict[str, list[tuple[str, str, np.ndarray]]] = {}  # this batch's vectors, by sample
        self.touched: list[str] = []  # this batch's samples, labelled or cleared
        self.replaced: dict[str, list[str]] = {}  # the ids of the labels this batch replaces, by sample

    def add(self, sid: str, dets, embeddings: np.ndarray | None) -> None:
        """Sample ``sid``'s new ``fo.Detections`` and their vectors (float (N, D), row i of detection i)."""
        self.touched.append(sid)
        if embeddings is not None:
            self.rows[sid] = [(sid, det.id, vec) for det, vec in zip(dets.detections, embeddings)]

    def clear(self, sid: str) -> None:
        """Sample ``sid``'s label is being cleared."""
        self.touched.append(sid)

    def save(self, replacing: bool) -> None:
        """Before the batch's labels are written; ``replacing``: they may replace labels (note those)."""
        if replacing and self.touched:
            view = self.dataset.select(self.touched)
            before = view.values(["id", f"{self.label_field}.detections.id"])
            self.replaced = {sid: ids or [] for sid, ids in zip(*before)}
        save_embeddings(self.dataset, [row for rows in self.rows.values() for row in rows])

    def settle(self, written: set[str]) -> None:
        """After the batch's write: drop the vectors of samples not written and of the labels replaced."""
        lost = [label_id for sid, rows in self.rows.items() if sid not in written for _, label_id, _ in rows]
        lost += [label_id for sid, ids in self.replaced.items() if sid in written for label_id in ids]
        delete_embeddings(self.dataset, lost)
        self.rows.clear()
        self.touched.clear()
        self.replaced = {}
