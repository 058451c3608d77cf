"""What keeping each prediction's embedding costs (``segment(keep_embeddings=True)``, the default): time and bytes.

Against a private FiftyOne database in a temporary folder: a dataset of COCO128 images, a bank of 3 reference
images, then ``segment`` over the same targets, alternately without and with the embeddings kept (``--rounds``
pairs, each into a fresh field, the candidate cache off so every run does the same work). It prints:

- each run's wall time, the median of each kind, and their ratio (with / without);
- the time spent writing and settling the vectors (``EmbeddingWrites``), timed inside the same runs: the cost
  itself, free of the run-to-run noise of the model passes;
- bytes per detection: the documents as stored (BSON) and on disk (collection + its index, compressed by
  MongoDB), from ``collStats``.

The filters are opened (``pred_iou_thresh 0``, ``nms_thresh 1``) so that random weights give the worst case of
``max_instances`` (100) detections per image.

    .venv/bin/python scripts/embedding_cost.py --images 16 --rounds 3            # lite, random weights, CPU
    .venv/bin/python scripts/embedding_cost.py --preset fast --device cuda --no-random-weights
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NTT_TEST_DATA", ROOT.parent / "shared" / "data")) / "coco128-seg"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=16, help="target images (COCO128 val)")
    parser.add_argument("--rounds", type=int, default=3, help="pairs of runs (without, with)")
    parser.add_argument("--preset", default="lite")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--no-random-weights", dest="random_weights", action="store_false")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="ntt-embedding-cost-"))
    os.environ.update(
        FIFTYONE_DATABASE_DIR=str(scratch / "db"),
        FIFTYONE_DO_NOT_TRACK="true",
        FIFTYONE_DATABASE_VALIDATION="false",
        NTT_BANK_DIR=str(scratch / "banks"),
        NTT_CACHE_DIR=str(scratch / "cache"),
    )
    import fiftyone as fo

    import ntt.fo as nfo
    import ntt.fo.labelling.writes as writes
    from ntt.config import get_config
    from ntt.fo.embeddings import storage_bytes

    ds = fo.Dataset.from_dir(
        dataset_type=fo.types.COCODetectionDataset,
        data_path=str(DATA / "images" / "val2017"),
        labels_path=str(DATA / "annotations" / "instances_val2017.json"),
        label_types=["segmentations"],
        label_field="gt",
        max_samples=args.images + 3,
    )
    overrides = {
        "model": {"random_weights": args.random_weights, "device": args.device},
        "segment": {"pred_iou_thresh": 0.0, "nms_thresh": 1.0, "cache": False, "batch_size": args.batch_size},
    }
    cfg = get_config(args.preset, overrides)
    nfo.mark_references(ds.limit(3))
    nfo.build_bank(ds, "bench", label_field="gt", config=cfg)
    spent = _time_vector_writes(writes)
    nfo.segment(ds, "bench", label_field="warmup", keep_embeddings=False)  # models loaded, caches warm

    times: dict[bool, list[float]] = {False: [], True: []}
    for round_ in range(args.rounds):
        for keep in (False, True):
            spent[0] = 0.0
            start = time.perf_counter()
            nfo.segment(ds, "bench", label_field=f"run{round_}_{int(keep)}", keep_embeddings=keep)
            total = time.perf_counter() - start
            times[keep].append(total)
            share = f", vectors {spent[0]:.3f} s ({100 * spent[0] / total:.2f} %)" if keep else ""
            print(f"round {round_}: keep_embeddings={keep}: {total:.2f} s{share}", flush=True)
        if round_ == 0:
            writes_share = spent[0] / times[True][-1]
    without, with_ = statistics.median(times[False]), statistics.median(times[True])
    kept = [f"run{r}_1" for r in range(args.rounds)]
    detections = sum(ds.count(f"{f}.detections") for f in kept)
    stored = storage_bytes()
    dim = cfg.model.dinov2
    print(f"\n{args.images} images, {args.preset} ({dim}), {args.device}, batch {args.batch_size}")
    print(f"median segment time: without {without:.2f} s, with {with_:.2f} s: ratio {with_ / without:.3f}")
    print(f"vector writes inside the first run with them: {100 * writes_share:.2f} % of its time")
    print(f"detections kept: {detections} ({detections / (args.images * args.rounds):.0f} per image)")
    print(f"stored {stored['count']} vectors: {stored['data'] / stored['count']:.0f} bytes each as documents, ")
    print(f"  {stored['disk'] / stored['count']:.0f} bytes each on disk (collection + _id index, compressed)")
    return 0


def _time_vector_writes(writes) -> list[float]:
    """Charge the time of every ``EmbeddingWrites.save`` and ``settle`` to a counter (returned, reset by caller)."""
    spent = [0.0]
    for name in ("save", "settle"):
        real = getattr(writes.EmbeddingWrites, name)

        def timed(self, *a, _real=real, **k):
            start = time.perf_counter()
            try:
                return _real(self, *a, **k)
            finally:
                spent[0] += time.perf_counter() - start

        setattr(writes.EmbeddingWrites, name, timed)
    return spent


if __name__ == "__main__":
    raise SystemExit(main())
