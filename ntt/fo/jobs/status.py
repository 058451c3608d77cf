"""Progress of sharded jobs across their shards: for ``ntt jobs status``, 'NTT: jobs' and the SDK
(``get_job_status``). In the records a sharded job is a "run" document: the storage keeps its old name."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from bson import ObjectId

from ntt.fo.jobs.shards import aware_utc, delegated_service
from ntt.fo.jobs.states import runs_collection, server_time, shards_collection
from ntt.fo.references import NTTFiftyOneError
from ntt.fo.store import dataset_of

SHARD_STATES = ("pending", "queued", "running", "done", "failed", "stopped")


def sharded_runs(coll) -> list[dict[str, Any]]:
    """The sharded runs of ``coll``'s dataset, newest first, each as ``run_status`` describes it."""
    dataset = dataset_of(coll)
    found = runs_collection().find({"dataset_id": dataset._doc.id}, {"_id": 1}).sort("created_at", -1)
    return [run_status(str(run["_id"])) for run in found]


def run_status(run_id: str) -> dict[str, Any]:
    """Where a sharded run stands.

    Returns:
        ``run``, ``dataset``, ``label_field``, ``bank``, ``state`` (submitting, running, stopping, completed,
        failed, stopped), ``samples`` (to label), ``done`` (labelled or skipped so far), ``progress`` in [0, 1],
        ``shards`` (how many are pending / queued / running / done / failed / stopped), ``samples_per_s``
        (since the first shard started), ``workers`` (the run links of the workers running shards now), ``started`` and
        ``ended`` (ISO times), ``wall_s``, ``failures`` (``[{"shard", "error", "attempts", "samples"}]``) and
        once finished its ``summary`` (``labelled``, ``instances``, ``per_class``, ``skipped``,
        ``failed_shards`` with their sample ids, ``wall_s``).
    """
    run = runs_collection().find_one({"_id": _object_id(run_id)}, {"provenance": 0})
    if run is None:
        raise NTTFiftyOneError(f"no sharded job {run_id}")
    shards = list(shards_collection().find({"run_id": run["_id"]}, {"sample_ids": 0, "per_class": 0}))
    done = sum(s.get("labelled", 0) + len(s.get("skipped") or []) for s in shards)
    states = Counter(s["state"] for s in shards)
    starts = [aware_utc(s["started_at"]) for s in shards if s.get("started_at")]
    end = aware_utc(run["ended_at"]) if run.get("ended_at") else server_time()  # the clock that stamped them
    busy = (end - min(starts)).total_seconds() if starts else 0.0
    status = {
        "job": str(run["_id"]),
        "run": str(run["_id"]),  # deprecated: the same id as "job", kept one release
        "dataset": run["dataset"],
        "label_field": run["label_field"],
        "bank": run["bank"],
        "state": run["state"],
        "samples": run["samples"],
        "done": done,
        "progress": done / run["samples"] if run["samples"] else 1.0,
        "shards": {state: states.get(state, 0) for state in SHARD_STATES},
        "samples_per_s": round(done / busy, 2) if busy > 0 else None,
        "workers": _workers([s["op_id"] for s in shards if s["state"] == "running" and s.get("op_id")]),
        "started": _iso(run.get("created_at")),
        "ended": _iso(run.get("ended_at")),
        "wall_s": round((end - aware_utc(run["created_at"])).total_seconds(), 1) if run.get("created_at") else 0.0,
        "failures": [_failure(s) for s in shards if s.get("error") and s["state"] != "done"],
    }
    if "summary" in run:
        status["summary"] = run["summary"]
    return status


def status_line(status: dict[str, Any]) -> str:
    """One line for a person: samples done, shards by state, throughput."""
    shards = ", ".join(f"{n} {state}" for state, n in status["shards"].items() if n)
    speed = f" · {status['samples_per_s']} samples/s" if status["samples_per_s"] else ""
    return f"{status['done']}/{status['samples']} samples · shards: {shards}{speed}"


def _workers(op_ids: list) -> list[str]:
    if not op_ids:
        return []
    from fiftyone.factory import DelegatedOperationPagingParams

    ops = delegated_service().list_operations(_id={"$in": op_ids}, paging=DelegatedOperationPagingParams(limit=0))
    return sorted({op.run_link for op in ops if op.run_link})


def _failure(shard: dict) -> dict[str, Any]:
    return {
        "shard": shard["index"],
        "error": shard["error"],
        "attempts": shard.get("attempts", 0),
        "samples": shard["samples"],
    }


def _object_id(run_id: str) -> ObjectId:
    try:
        return ObjectId(run_id)
    except Exception as err:  # noqa: BLE001 - bson raises InvalidId or TypeError
        raise NTTFiftyOneError(f"{run_id!r} is not a job id (24 hex digits, as `ntt jobs status` lists them)") from err


def _iso(when: datetime | None) -> str | None:
    return aware_utc(when).isoformat(timespec="seconds") if when else None
