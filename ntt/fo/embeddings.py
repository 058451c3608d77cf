"""Each prediction's embedding, kept outside the sample documents, by label id: what maps and "more like this"
search read (``review/maps.py``).

Segmenting already computes every prediction's mask-pooled DINOv2 feature (its class is matched with it), so
keeping it costs no model pass. A sample document is capped at 16 MB and is read whole by the App, so the
vectors live in their own collection of FiftyOne's database, ``ntt_embeddings``, one document per prediction:

- ``_id``: ``<dataset id><label id>`` (48 hex characters): each dataset owns its vectors (a clone, which keeps
  the label ids, keeps its own after either is segmented again), and a dataset's vectors are one ``_id``
  prefix (an index range);
- ``s``: the sample id; ``v``: the vector as D + 4 bytes (``ntt.io.vectors``: int8 in steps of its largest
  component; cosines move by ~1e-3).

Writers write a batch's vectors before its labels (a label that exists has its vector) and remove them after
where the labels were not written (another attempt labelled the sample first) or were replaced. Writes are
upserts by key, so an attempt that runs twice writes the same documents. A vector whose label is gone (a run
killed between the two writes, labels replaced by ``apply_model`` or deleted by hand) is only disk space:
nothing reads a vector but by its label's id; ``delete_dataset_embeddings`` drops a dataset's vectors.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from bson import Binary, ObjectId
from pymongo import DeleteMany, ReplaceOne

from ntt.fo.store import dataset_key
from ntt.io.vectors import row_from_bytes, row_to_bytes

COLLECTION = "ntt_embeddings"
_CHUNK = 5000  # ids per query: far below MongoDB's 16 MB command limit


def embeddings_collection():
    from fiftyone.core.odm.database import get_db_conn

    return get_db_conn()[COLLECTION]


def save_embeddings(coll, rows: Iterable[tuple[str | None, str, np.ndarray]]) -> int:
    """Store ``(sample id or None, label id, float (D,) unit-norm vector)`` rows for ``coll``'s dataset (an
    existing one of a label is replaced). Returns how many."""
    prefix = dataset_key(coll)
    ops = [
        ReplaceOne(
            {"_id": prefix + str(label_id)},
            {"s": None if sample_id is None else ObjectId(sample_id), "v": Binary(row_to_bytes(vector))},
            upsert=True,
        )
        for sample_id, label_id, vector in rows
    ]
    for start in range(0, len(ops), _CHUNK):
        embeddings_collection().bulk_write(ops[start : start + _CHUNK], ordered=False)
    return len(ops)


def load_embeddings(coll, label_ids: Iterable[str]) -> dict[str, np.ndarray]:
    """The kept vectors of these labels of ``coll``'s dataset: label id -> float32 (D,); labels without one are
    absent."""
    prefix = dataset_key(coll)
    found: dict[str, np.ndarray] = {}
    for chunk in _key_chunks(coll, label_ids):
        for doc in embeddings_collection().find({"_id": {"$in": chunk}}, {"v": 1}):
            found[doc["_id"][len(prefix) :]] = row_from_bytes(bytes(doc["v"]))
    return found


def count_embeddings(coll, label_ids: Iterable[str]) -> int:
    """How many of these labels of ``coll``'s dataset have a kept vector (one indexed count per 5,000 ids)."""
    chunks = _key_chunks(coll, label_ids)
    return sum(embeddings_collection().count_documents({"_id": {"$in": chunk}}) for chunk in chunks)


def delete_embeddings(coll, label_ids: Iterable[str]) -> int:
    """Remove the kept vectors of these labels of ``coll``'s dataset; returns how many went."""
    ops = [DeleteMany({"_id": {"$in": chunk}}) for chunk in _key_chunks(coll, label_ids)]
    if not ops:
        return 0
    return embeddings_collection().bulk_write(ops, ordered=False).deleted_count


def delete_dataset_embeddings(coll) -> int:
    """Remove every kept vector of ``coll``'s dataset (e.g. before deleting it); returns how many went."""
    prefix = dataset_key(coll)  # hex: no regex metacharacters
    return embeddings_collection().delete_many({"_id": {"$regex": f"^{prefix}"}}).deleted_count


def storage_bytes() -> dict[str, float]:
    """What the kept vectors take in the database: ``count``, ``data`` (uncompressed documents), ``disk`` (the
    collection and its index on disk) in bytes."""
    stats = embeddings_collection().database.command("collStats", COLLECTION)
    return {
        "count": stats.get("count", 0),
        "data": stats.get("size", 0),
        "disk": stats.get("storageSize", 0) + stats.get("totalIndexSize", 0),
    }


def _key_chunks(coll, label_ids: Iterable[str]) -> Iterable[list[str]]:
    """The documents' keys of these labels of ``coll``'s dataset, ``_CHUNK`` at a time."""
    prefix = dataset_key(coll)
    keys = [prefix + str(i) for i in label_ids]
    for start in range(0, len(keys), _CHUNK):
        yield keys[start : start + _CHUNK]
