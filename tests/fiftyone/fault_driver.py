"""The FiftyOne side of the fault-injection tests (``faults.py``), run in subprocesses against the dedicated
``mongod`` that ``FIFTYONE_DATABASE_URI`` names. One subcommand per action; each prints one JSON line last.

    setup DATASET        a dataset of COCO128 val images, 3 references with ``gt`` masks, bank ``b`` (tiny random
                         models), and the one-process answer in ``single``
    submit DATASET       nfo.submit_job(..., label_field="spread")
    segment DATASET      one-process nfo.segment
    rename-bank / teach / rename-dataset / clone
    check DATASET FIELD ORACLE   each target's labels in FIELD against ORACLE
    masks DATASET FIELD  each label's mask file and a digest of the mask it holds
    reap-loop            ntt.fo.jobs.reaper.reap in a tight loop until a stop file appears
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("NTT_TEST_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
COCO128 = DATA / "coco128-seg"
BANK = "b"
# what tests/fiftyone/conftest.py's random_config is: tiny random-weight models, filters opened up
CONFIG = {"model": {"random_weights": True, "device": "cpu"}, "segment": {"pred_iou_thresh": 0.0, "nms_thresh": 1.0}}


def _out(value) -> None:
    print(json.dumps(value, default=str), flush=True)


def _load(name: str):
    import fiftyone as fo

    dataset = fo.load_dataset(name)
    dataset.reload()  # a served process keeps datasets cached; workers changed it since
    return dataset


def setup(args) -> dict:
    import fiftyone as fo

    import ntt.fo as nfo
    from ntt.config import get_config

    if fo.dataset_exists(args.dataset):
        fo.delete_dataset(args.dataset)
    ds = fo.Dataset.from_dir(
        dataset_type=fo.types.COCODetectionDataset,
        data_path=str(COCO128 / "images" / "val2017"),
        labels_path=str(COCO128 / "annotations" / "instances_val2017.json"),
        label_types=["segmentations"],
        label_field="gt",
        max_samples=args.samples,
        name=args.dataset,
        persistent=True,
    )
    nfo.mark_references(ds.limit(3))
    nfo.build_bank(ds, BANK, label_field="gt", config=get_config("smoke", CONFIG))
    started = time.monotonic()
    summary = nfo.segment(ds, BANK, label_field="single", batch_size=args.batch_size)
    return {
        "dataset": ds.name,
        "samples": len(ds),
        "targets": len(nfo.forms.without_references(ds)),
        "instances": summary["instances"],
        "segment_s": round(time.monotonic() - started, 1),
    }


def submit(args) -> dict:
    import ntt.fo as nfo

    kwargs = {"shards": args.shards} if args.shards else {"shard_size": args.shard_size}
    if args.mask_dir:
        kwargs["mask_dir"] = args.mask_dir
    if args.overwrite:
        kwargs["overwrite"] = True
    started = time.monotonic()
    queued = nfo.submit_job(
        _load(args.dataset), args.bank, label_field=args.field, batch_size=args.batch_size, **kwargs
    )
    return {**queued, "submit_s": round(time.monotonic() - started, 2)}


def segment(args) -> dict:
    import ntt.fo as nfo

    kwargs = {"mask_dir": args.mask_dir} if args.mask_dir else {}
    summary = nfo.segment(
        _load(args.dataset),
        args.bank,
        label_field=args.field,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        **kwargs,
    )
    return {k: summary[k] for k in ("samples", "labelled", "instances")}


def rename_bank(args) -> dict:
    import ntt.fo as nfo

    nfo.rename_bank(_load(args.dataset), args.old, args.new)
    return {"renamed": [args.old, args.new]}


def teach(args) -> dict:
    """Make the first few labels of ``single`` on targets negatives of bank ``b``: a new version of the bank."""
    import ntt.fo as nfo

    ds = _load(args.dataset)
    before = nfo.get_bank_info(ds, args.bank).get("fingerprint")
    ids = nfo.forms.without_references(ds).values("single.detections.id", unwind=True)[: args.labels]
    nfo.add_negatives(ds, args.bank, "single", label_ids=ids)
    return {
        "negatives": ids,
        "fingerprint_before": before,
        "fingerprint": nfo.get_bank_info(ds, args.bank).get("fingerprint"),
    }


def rename_dataset(args) -> dict:
    ds = _load(args.dataset)
    ds.name = args.new
    return {"renamed": [args.dataset, args.new]}


def clone(args) -> dict:
    ds = _load(args.dataset)
    copy = ds.clone(args.new, persistent=True)
    same = sorted(ds.values("id")) == sorted(copy.values("id"))
    return {"clone": copy.name, "same_sample_ids": same}


def rewrite(args) -> dict:
    """Write one sample's labels again, the same values (to show that the profiler counts a second write)."""
    ds = _load(args.dataset)
    sample = ds[args.sample_id]
    ds.set_values(args.field, {sample.id: sample[args.field]}, key_field="id")
    return {"rewritten": sample.id}


def _mask_of(det) -> np.ndarray | None:
    if det.mask is not None:
        return np.asarray(det.mask, dtype=bool)
    if det.mask_path:
        from PIL import Image

        with Image.open(det.mask_path) as img:
            return np.asarray(img) > 0
    return None


def _labels(sample, field: str) -> list:
    dets = sample[field].detections if sample[field] is not None else []
    out = []
    for d in dets:
        mask = _mask_of(d)
        digest = None if mask is None else (mask.shape, hashlib.sha256(mask.tobytes()).hexdigest()[:16])
        out.append((d.label, d.confidence, tuple(np.round(d.bounding_box, 6).tolist()), digest))
    return out


def check(args) -> dict:
    """Every target's labels in ``field`` against ``oracle`` (label, confidence, box to 6 decimals, mask)."""
    import ntt.fo as nfo

    ds = _load(args.dataset)
    targets = nfo.forms.without_references(ds)
    ids, different, unlabelled, labelled = [], [], [], []
    for sample in targets.iter_samples():
        ids.append(sample.id)
        if sample[args.field] is None:
            unlabelled.append(sample.id)
            continue
        labelled.append(sample.id)
        got, want = _labels(sample, args.field), _labels(sample, args.oracle)
        if got != want:
            different.append({"id": sample.id, "got": got[:2], "want": want[:2], "n": [len(got), len(want)]})
    return {
        "targets": len(ids),
        "target_ids": ids,
        "labelled_ids": labelled,
        "unlabelled": unlabelled,
        "different": different,
        "instances": targets.count(f"{args.field}.detections"),
        "oracle_instances": targets.count(f"{args.oracle}.detections"),
    }


def masks(args) -> dict:
    """Each label's mask file and a digest of the mask read back from it (None when the file is missing)."""
    ds = _load(args.dataset)
    found = {}
    for sample in ds.exists(args.field).iter_samples():
        for det in sample[args.field].detections:
            path = det.mask_path
            digest = None
            if path and Path(path).is_file():
                mask = _mask_of(det)
                digest = hashlib.sha256(mask.tobytes()).hexdigest()
            found[det.id] = {"path": path, "digest": digest}
    return {"masks": found}


def reap_loop(args) -> dict:
    """``reap(stale_after)`` again and again until ``stop_file`` exists; each line it returns is printed."""
    from ntt.fo.jobs.reaper import reap

    passes, lines = 0, 0
    stop = Path(args.stop_file)
    while not stop.exists():
        for line in reap(args.stale_after):
            print(f"reaper: {line}", flush=True)
            lines += 1
        passes += 1
        if passes == 1:
            print("looping", flush=True)
        time.sleep(args.pause)
    return {"passes": passes, "lines": lines}


ACTIONS = {
    "setup": setup,
    "submit": submit,
    "segment": segment,
    "rename-bank": rename_bank,
    "teach": teach,
    "rename-dataset": rename_dataset,
    "clone": clone,
    "check": check,
    "masks": masks,
    "rewrite": rewrite,
    "reap-loop": reap_loop,
}


def serve(_args) -> dict:
    """Run one command per line of stdin (a JSON list of arguments), answering each with a line ``@@`` + JSON
    (``{"ok": result}`` or ``{"error": traceback}``): one process, so fiftyone and torch import once."""
    import traceback

    served = 0
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            args = _parser().parse_args(json.loads(line))
            answer = {"ok": ACTIONS[args.cmd](args)}
        except BaseException:  # noqa: BLE001 - reported to the caller, who fails the test
            answer = {"error": traceback.format_exc()}
        print("@@" + json.dumps(answer, default=str), flush=True)
        served += 1
    return {"served": served}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fault_driver", exit_on_error=False)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("setup")
    p.add_argument("dataset")
    p.add_argument("--samples", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=2)
    p = sub.add_parser("submit")
    p.add_argument("dataset")
    p.add_argument("--bank", default=BANK)
    p.add_argument("--field", default="spread")
    p.add_argument("--shards", type=int, default=None)
    p.add_argument("--shard-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--mask-dir", default=None)
    p.add_argument("--overwrite", action="store_true")
    p = sub.add_parser("segment")
    p.add_argument("dataset")
    p.add_argument("field")
    p.add_argument("--bank", default=BANK)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--mask-dir", default=None)
    p.add_argument("--overwrite", action="store_true")
    p = sub.add_parser("rename-bank")
    p.add_argument("dataset")
    p.add_argument("old")
    p.add_argument("new")
    p = sub.add_parser("teach")
    p.add_argument("dataset")
    p.add_argument("--bank", default=BANK)
    p.add_argument("--labels", type=int, default=3)
    p = sub.add_parser("rename-dataset")
    p.add_argument("dataset")
    p.add_argument("new")
    p = sub.add_parser("clone")
    p.add_argument("dataset")
    p.add_argument("new")
    p = sub.add_parser("check")
    p.add_argument("dataset")
    p.add_argument("field")
    p.add_argument("oracle")
    p = sub.add_parser("masks")
    p.add_argument("dataset")
    p.add_argument("field")
    p = sub.add_parser("rewrite")
    p.add_argument("dataset")
    p.add_argument("field")
    p.add_argument("sample_id")
    p = sub.add_parser("reap-loop")
    p.add_argument("--stale-after", type=float, default=6.0)
    p.add_argument("--stop-file", required=True)
    p.add_argument("--pause", type=float, default=0.0)
    sub.add_parser("serve")
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    _out((serve if args.cmd == "serve" else ACTIONS[args.cmd])(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
