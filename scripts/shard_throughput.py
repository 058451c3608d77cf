"""Throughput of sharded runs with 1, 2, ... ``ntt worker`` processes on this machine, and the overhead of a shard.

Everything runs against a private FiftyOne database in a temporary folder (the workers reach it through
``FIFTYONE_DATABASE_URI``): a dataset of COCO128 images, a bank of 3 reference images, then for each worker count
a sharded run into a fresh field, from submit to the run's record completed. It prints, per worker count:

- wall time and samples/s from submit to completion (worker start-up included: the workers start with the run);
- steady samples/s from the first shard's start to the last shard's end;
- per shard: the operation's wall time (claim to completed), the time segmenting, and their difference, the
  shard overhead (child start on a worker's first shard, model load, bank load, queries, the run record).

A one-process ``segment`` over the same samples is the baseline. On a CPU, k workers get cores / k threads each
(``OMP_NUM_THREADS``): more threads than cores would only make them wait for each other.

    .venv/bin/python scripts/shard_throughput.py --samples 120 --shard-size 15 --workers 1 2
    .venv/bin/python scripts/shard_throughput.py --preset fast --device cuda   # real weights on a GPU
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NTT_TEST_DATA", ROOT.parent / "shared" / "data")) / "coco128-seg"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=120, help="target samples (COCO128 images, reused)")
    parser.add_argument("--shard-size", type=int, default=15, help="samples per shard")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to measure")
    parser.add_argument("--preset", default=None, help="settings (default: smoke with random weights)")
    parser.add_argument("--device", default="cpu", help="device of the bank and the workers (default cpu)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="ntt-throughput-"))
    plugins = scratch / "plugins"
    plugins.mkdir()
    (plugins / "ntt-plugin").symlink_to(ROOT, target_is_directory=True)
    os.environ.update(
        FIFTYONE_DATABASE_DIR=str(scratch / "db"),
        FIFTYONE_PLUGINS_DIR=str(plugins),
        FIFTYONE_DO_NOT_TRACK="true",
        FIFTYONE_DATABASE_VALIDATION="false",
        NTT_BANK_DIR=str(scratch / "banks"),
        NTT_CACHE_DIR=str(scratch / "cache"),
    )
    import fiftyone as fo

    import ntt.fo as nfo
    from ntt.config import get_config

    ds = fo.Dataset.from_dir(
        dataset_type=fo.types.COCODetectionDataset,
        data_path=str(DATA / "images" / "val2017"),
        labels_path=str(DATA / "annotations" / "instances_val2017.json"),
        label_types=["segmentations"],
        label_field="gt",
        max_samples=3,
    )
    images = sorted((DATA / "images" / "val2017").glob("*.jpg"))
    ds.add_samples([fo.Sample(filepath=str(images[i % len(images)])) for i in range(args.samples)])
    nfo.mark_references(ds.limit(3))
    if args.preset is None:
        cfg = get_config("smoke", {"model": {"random_weights": True}}, args.device)
    else:
        cfg = get_config(args.preset, None, args.device)
    nfo.build_bank(ds, "bank", label_field="gt", config=cfg)
    settings = f"{args.preset or 'smoke (random weights)'} on {args.device}, {os.cpu_count()} CPU cores"
    print(f"{args.samples} samples, shards of {args.shard_size}, {settings}")

    start = time.perf_counter()
    nfo.segment(ds, "bank", label_field="single", cache=False)
    single = time.perf_counter() - start
    print(f"one process (segment): {single:.1f} s, {args.samples / single:.2f} samples/s (models loaded once)")
    for count in args.workers:
        _measure(ds, count, args.shard_size, scratch)
    return 0


def _measure(ds, count: int, shard_size: int, scratch: Path) -> None:
    from bson import ObjectId
    from fiftyone.core.odm.database import get_db_client
    from fiftyone.operators.delegated import DelegatedOperationService

    import ntt.fo as nfo
    from ntt.fo.jobs.shards import aware_utc, shards_collection

    host, port = get_db_client().address
    env = {k: v for k, v in os.environ.items() if k not in ("FIFTYONE_PRIVATE_DATABASE_PORT", "FIFTYONE_DATABASE_DIR")}
    env["FIFTYONE_DATABASE_URI"] = f"mongodb://{host}:{port}/"
    if not torch_cuda():  # workers sharing a CPU split its cores, as one would run them
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // count))
    field = f"workers{count}"
    start = time.perf_counter()
    queued = nfo.submit_job(ds, "bank", label_field=field, shard_size=shard_size, cache=False)
    command = [sys.executable, "-m", "ntt.cli", "worker", "--heartbeat", "2", "--idle-exit", "5"]
    logs = [open(scratch / f"{field}-{i}.log", "w") for i in range(count)]
    workers = [subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT) for log in logs]
    while nfo.get_job_status(queued["run"])["state"] == "running":
        time.sleep(0.5)
    wall = time.perf_counter() - start
    for worker in workers:
        worker.wait()
    status = nfo.get_job_status(queued["run"])
    service = DelegatedOperationService()
    shards = list(shards_collection().find({"run_id": ObjectId(queued["run"])}))
    ops = {s["_id"]: service.get(s["op_id"]) for s in shards}
    op_wall = [(ops[s["_id"]].completed_at - ops[s["_id"]].started_at).total_seconds() for s in shards]
    segmenting = [(aware_utc(s["ended_at"]) - aware_utc(s["models_loaded_at"])).total_seconds() for s in shards]
    overhead = [w - g for w, g in zip(op_wall, segmenting)]
    first = min(ops[s["_id"]].started_at for s in shards)
    last = max(ops[s["_id"]].completed_at for s in shards)
    steady = (last - first).total_seconds()
    print(
        f"{count} worker(s): {status['state']}, {queued['shards']} shards, wall {wall:.1f} s "
        f"({queued['samples'] / wall:.2f} samples/s), steady {queued['samples'] / steady:.2f} samples/s; "
        f"shard overhead median {statistics.median(overhead):.2f} s, max {max(overhead):.2f} s "
        f"(of {statistics.median(op_wall):.1f} s per shard)"
    )


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
