"""One segment request spread over many workers: a sharded run.

``submit`` checks the request as ``segment`` would, declares the output field and records the run once, splits
the samples to label into shards by sample id and queues each shard as a delegated operation of the plugin's
segment operator (``fiftyone delegated`` sees them; ``ntt worker`` runs them, on any machine that reaches the
same database, media and bank folder). A shard labels only its own samples that are still unlabelled and
writes after every batch, so running a shard again (after a worker died) finishes it without labelling a
sample twice. The last shard to end completes the run's record (counts, failures, wall time).

The run and its shards are documents in two collections of FiftyOne's database (``ntt_runs``, ``ntt_shards``);
each shard names its delegated operation, which holds its state, heartbeat and progress.
"""

from __future__ import annotations

import math
from collections import Counter
from datetime import datetime, timezone
from typing import Any

from bson import ObjectId

from ..steps import Step, Steps, relay
from .checks import check_weights
from .provenance import declare_field, record_done
from .references import NTTFiftyOneError
from .segment import _run, new_segmenter, plan_segment
from .store import dataset_of

OPERATOR = "@ntt/ntt/segment_with_bank"
TARGET = "ntt"  # the delegation target of shard operations: what `ntt worker` claims by default
SHARD_SIZE = 500  # samples per shard by default: a few minutes of GPU work, cheap to retry, many to balance
MAX_ATTEMPTS = 3
_PASSED_ON = (  # segment's arguments a shard runs with (the samples and references are the run's)
    "score_thresh class_thresholds max_instances batch_size device preset config tag cache thresholds mask_dir"
).split()


def submit(
    coll,
    bank: str,
    label_field: str = "ntt",
    shards: int | None = None,
    shard_size: int | None = None,
    delegation_target: str = TARGET,
    max_attempts: int = MAX_ATTEMPTS,
    **segment_args,
) -> dict[str, Any]:
    """Queue ``segment(coll, bank, label_field, **segment_args)`` as shards for ``ntt worker`` processes.

    Every argument is checked here, as ``segment`` checks it (no model loads; the workers need the weights).
    ``overwrite=True`` clears the target samples' labels now; ``skip_existing=True`` leaves labelled samples
    out. ``device`` None: each worker's own (its ``CUDA_VISIBLE_DEVICES``).

    Args:
        bank: the name of a bank stored with the dataset (workers load it from the bank folder).
        shards: how many shards (default: one per ``shard_size`` samples, 500).
        delegation_target: the name workers claim (``ntt worker --target``).
        max_attempts: how often a shard runs at most when its worker dies or runs out of memory.
    Returns:
        ``{"run": run id, "shards", "samples", "label_field", "delegation_target"}``; follow it with
        ``run_status``.
    """
    if not isinstance(bank, str):
        raise NTTFiftyOneError("a sharded run needs a bank stored with the dataset (its name): workers load it")
    plan = plan_segment(coll, bank, label_field, **segment_args)
    dataset = dataset_of(coll)
    ids = sorted(plan.view.values("id"))
    if not ids:
        raise NTTFiftyOneError("nothing to segment: the chosen samples are all references or already labelled")
    count = _shard_count(len(ids), shards, shard_size)
    info = declare_field(dataset, label_field, plan.source.info(plan.excluded))
    if segment_args.get("overwrite"):  # cleared now: the shards label what is empty
        dataset.select(ids).set_values(label_field, [None] * len(ids))
    now = _now()
    run = {
        "dataset_id": dataset._doc.id,
        "dataset": dataset.name,
        "label_field": label_field,
        "bank": bank,
        "fingerprint": plan.source.fingerprint,
        "provenance": info,
        "args": {k: segment_args[k] for k in _PASSED_ON if segment_args.get(k) is not None},
        "delegation_target": delegation_target,
        "max_attempts": int(max_attempts),
        "samples": len(ids),
        "shards": count,
        "state": "running",
        "created_at": now,
    }
    run_id = runs_collection().insert_one(run).inserted_id
    for index in range(count):
        _queue_shard(dataset, run_id, (index, count), ids[index::count], delegation_target, bank)
    return {
        "run": str(run_id),
        "shards": count,
        "samples": len(ids),
        "label_field": label_field,
        "delegation_target": delegation_target,
    }


def shard_steps(dataset, shard_id: str) -> Steps[dict[str, Any]]:
    """Run one shard (what its delegated operation does): segment its samples that are still unlabelled,
    writing after every batch and noting progress on the shard; returns the shard's summary."""
    shard = shards_collection().find_one_and_update(
        {"_id": ObjectId(shard_id)}, {"$inc": {"attempts": 1}, "$set": {"state": "running", "started_at": _now()}}
    )
    if shard is None:
        raise NTTFiftyOneError(f"no shard {shard_id}: its run was deleted")
    run = runs_collection().find_one({"_id": shard["run_id"]})
    field = run["label_field"]
    args = {**run["args"], **({"batch_size": shard["batch_size"]} if shard.get("batch_size") else {})}
    view = dataset.select(shard["sample_ids"])
    plan = plan_segment(view, run["bank"], field, skip_existing=True, exclude_references=False, **args)
    if plan.source.fingerprint != run["fingerprint"]:
        raise NTTFiftyOneError(
            f"bank {run['bank']!r} changed after run {run['_id']} was submitted: its shards would mix two banks; "
            "stop the run and submit it again"
        )
    check_weights(plan.cfg)
    yield Step(0.0, "Loading models")
    segmenter = new_segmenter(plan.source.bank, plan.cfg)
    _update(shard, {"batch_used": segmenter.batch_size, "models_loaded_at": _now()})

    def noted(step: Step) -> Step:  # the shard's progress, for run_status
        _update(shard, {"labelled": view.exists(field).count()})
        return step

    summary = yield from relay(_run(dataset, plan.view, segmenter, field, run["args"].get("mask_dir")), noted)
    # counted on the dataset: an earlier attempt's batches are part of the shard too
    per_class = {k: n for k, n in view.count_values(f"{field}.detections.label").items() if k is not None}
    done = {"labelled": view.exists(field).count(), "instances": sum(per_class.values()), "per_class": per_class}
    done.update(skipped=summary["skipped"], state="done", ended_at=_now())
    _update(shard, done)
    finish_if_done(run["_id"], dataset)
    return {"run": str(run["_id"]), "shard": shard["index"], **summary}


def finish_if_done(run_id, dataset=None) -> dict[str, Any] | None:
    """Complete the run's record once no shard is queued or running (exactly once, whoever calls it): counts,
    failures with their errors and samples, wall time; and record the bank on the field again. Returns the
    record when this call completed it."""
    run_id = ObjectId(run_id)
    shards = list(shards_collection().find({"run_id": run_id}, {"sample_ids": 0}))
    if any(s["state"] in ("queued", "running") for s in shards):
        return None
    failed = [s for s in shards if s["state"] != "done"]
    per_class = sum((Counter(s.get("per_class") or {}) for s in shards), Counter())
    summary = {
        "labelled": sum(s.get("labelled", 0) for s in shards),
        "instances": sum(s.get("instances", 0) for s in shards),
        "per_class": dict(per_class),
        "skipped": [item for s in shards for item in s.get("skipped") or []],
        "failed_shards": [_failure(s) for s in failed],
    }
    run = runs_collection().find_one({"_id": run_id})
    ended = _now()
    state = "stopped" if run["state"] == "stopping" else ("failed" if failed else "completed")
    summary["wall_s"] = round((ended - aware_utc(run["created_at"])).total_seconds(), 1)
    done = runs_collection().find_one_and_update(
        {"_id": run_id, "state": {"$in": ["running", "stopping"]}},
        {"$set": {"state": state, "ended_at": ended, "summary": summary}},
    )
    if done is None:
        return None
    if dataset is None:
        import fiftyone as fo

        dataset = fo.load_dataset(run["dataset"])
    record_done(dataset, run["label_field"], run["provenance"])
    return {**done, "state": state, "summary": summary}


def _failure(shard: dict) -> dict[str, Any]:
    ids = shards_collection().find_one({"_id": shard["_id"]}, {"sample_ids": 1})["sample_ids"]
    return {
        "shard": shard["index"],
        "error": shard.get("error"),
        "attempts": shard.get("attempts", 0),
        "sample_ids": ids,
    }


def _shard_count(samples: int, shards: int | None, shard_size: int | None) -> int:
    if shards is not None and shard_size is not None:
        raise NTTFiftyOneError("give shards (how many) or shard_size (samples per shard), not both")
    for name, value in (("shards", shards), ("shard_size", shard_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise NTTFiftyOneError(f"{name} must be a whole number >= 1, got {value!r}")
    count = shards if shards is not None else math.ceil(samples / (shard_size or SHARD_SIZE))
    return max(1, min(count, samples))


def _queue_shard(dataset, run_id, position: tuple[int, int], ids: list[str], target: str, bank: str) -> None:
    """Record shard ``position`` = (index, count) of the run and queue its operation."""
    index, count = position
    from fiftyone.operators.executor import ExecutionContext

    record = {"run_id": run_id, "index": index, "sample_ids": ids, "samples": len(ids), "state": "queued"}
    shard_id = shards_collection().insert_one({**record, "attempts": 0}).inserted_id
    request = {
        "dataset_name": dataset.name,
        "dataset_id": str(dataset._doc.id),
        "operator_uri": OPERATOR,
        "delegated": True,
        "delegation_target": target,
        "params": {"bank": bank, "ntt_shard": str(shard_id)},
    }
    op = delegated_service().queue_operation(
        operator=OPERATOR,
        label=f"NTT: segment with {bank} (shard {index + 1}/{count}, run {run_id})",
        delegation_target=target,
        context=ExecutionContext(request_params=request),
    )
    shards_collection().update_one({"_id": shard_id}, {"$set": {"op_id": op.id}})


def _update(shard: dict, values: dict) -> None:
    shards_collection().update_one({"_id": shard["_id"]}, {"$set": values})


def runs_collection():
    from fiftyone.core.odm.database import get_db_conn

    return get_db_conn()["ntt_runs"]


def shards_collection():
    from fiftyone.core.odm.database import get_db_conn

    return get_db_conn()["ntt_shards"]


def delegated_service():
    """FiftyOne's delegated-operation service (the queue shards go through)."""
    from fiftyone.operators.delegated import DelegatedOperationService

    return DelegatedOperationService()


def _now() -> datetime:
    return datetime.now(timezone.utc)


def aware_utc(when: datetime) -> datetime:
    """MongoDB hands datetimes back naive (in UTC)."""
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)
