"""Writing a batch of labels: as a plain replacement, or first writer wins (for shards, which may have two
attempts alive at once: a worker declared lost may still be running).

A first-writer-wins write sets a sample's field only where it is still empty, in one conditional update per
sample (one per sample: its result says who won), so a sample is labelled exactly once whoever else writes it;
the attempt that lost a sample learns which, to remove the mask files it wrote for it.
"""

from __future__ import annotations

from datetime import datetime, timezone

from bson import ObjectId


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
