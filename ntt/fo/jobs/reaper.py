"""Recovery of sharded runs: shards whose worker is lost or whose attempt failed are run again; shards that keep
failing are reported; runs with nothing left to do are completed.

``reap`` looks at every unfinished shard of every unfinished sharded run, from the shard's own record:

- running on an ``ntt worker`` whose heartbeat (the shard's ``beat_at``, stamped with the database server's
  clock) is older than ``stale_after`` seconds of the server's clock: the worker is lost (killed, frozen, its
  machine gone); no two machines' clocks are compared;
- its attempt's operation failed: for a transient reason (worker lost, out of memory, a child process killed,
  the database unreachable) it is queued again, up to the run's ``max_attempts`` attempts, with half the batch
  after running out of memory; otherwise, or too often, it fails for good, its error and samples in the run's
  record (unless every sample of it is labelled: then it is done);
- queued with no operation (a submit or a reaper stopped between the two writes): its operation is queued.

Queuing again gives the shard a new lease and a new operation, and fails the old operation, so the old attempt
(its worker may wake up) can neither write the shard nor end it. Every change is a conditional move of
``run_states``, so any number of reapers may run at once. A run whose submit went silent for
``SUBMIT_PATIENCE`` seconds (or ``stale_after``, if longer) is closed: its shards never queued fail, the queued
ones run.
"""

from __future__ import annotations

from typing import Any

from bson import ObjectId
from pymongo.errors import PyMongoError

from ntt.fo.jobs.follow import state_of
from ntt.fo.jobs.request import Job
from ntt.fo.jobs.shards import (
    _close_submit,
    fail_operation,
    finish_if_done,
    label_counts,
    operation,
    queue_attempt,
    shard_sample_ids,
)
from ntt.fo.jobs.states import NOW, UNFINISHED_RUN, move_run, move_shard, new_lease, runs_collection, shards_collection
from ntt.fo.outages import UNREACHABLE
from ntt.fo.references import NTTFiftyOneError

WORKER_LINK = "ntt-worker://"  # the run link of operations an ntt worker runs
STALE_AFTER = 60.0  # seconds (of the server's clock) without a heartbeat after which a worker counts as lost
SUBMIT_PATIENCE = 300.0  # seconds (server time) of silence after which a submit is taken as dead
STOPPED = "Stopped on request (NTT jobs)"
_OOM = ("out of memory", "outofmemoryerror", "memoryerror", "sigkill")
_DATABASE = (UNREACHABLE, "serverselectiontimeouterror", "autoreconnect", "networktimeout", "connection refused")
_TRANSIENT = ("worker lost", "child process died", "superseded") + _OOM + _DATABASE
_BRIEF = {"sample_ids": 0, "per_class": 0, "skipped": 0}


def reap(stale_after: float = STALE_AFTER, run_id: str | None = None, judge_lost: bool = True) -> list[str]:
    """One pass over the unfinished sharded runs (or run ``run_id``); returns what it did, one line each.

    ``judge_lost=False``: leave running shards alone whatever their heartbeat (a worker that has just seen the
    database come back gives every worker time to beat again)."""
    query: dict[str, Any] = {"state": {"$in": list(UNFINISHED_RUN)}}
    if run_id is not None:
        query["_id"] = ObjectId(run_id)
    done: list[str] = []
    for run in runs_collection().find(query, {"provenance": 0}):
        try:
            _reap_run(run, stale_after, judge_lost, done)
        except PyMongoError:
            raise  # the database is away: the caller waits it out
        except Exception as err:  # one broken run must not stop the reaping of the others
            done.append(f"job {run['_id']}: could not reap it: {type(err).__name__}: {err}")
    return done


def _reap_run(run: dict, stale_after: float, judge_lost: bool, done: list[str]) -> None:
    if run["state"] == "submitting":
        if _silent(runs_collection(), run["_id"], max(stale_after, SUBMIT_PATIENCE)):
            _close_submit(run["_id"], "never queued: the submit stopped before queueing it")
            done.append(f"job {run['_id']}: its submit went silent; the shards it did not queue failed")
        return
    for shard in _unfinished_shards(run["_id"], stale_after):
        line = _reap_shard(run, shard, stale_after, judge_lost)
        if line:
            done.append(f"job {run['_id']} shard {shard['index'] + 1}/{run['shards']}: {line}")
    finished = finish_if_done(run["_id"])
    if finished:
        done.append(f"job {run['_id']}: {finished['state']}")


def stop(run_id: str) -> str:
    """Stop a sharded run: its queued shards will not start, its running ones are terminated by their workers
    (labels already written stay). Returns what will happen."""
    run = move_run(ObjectId(run_id), ("running",), "stopping")
    if run is None:
        raise NTTFiftyOneError(f"sharded job {run_id} is not running: only a running job can be stopped")
    for shard in shards_collection().find({"run_id": run["_id"], "state": {"$in": ["queued", "running"]}}, _BRIEF):
        _stop_shard(shard)
    reap(run_id=run_id)
    return "queued shards will not start; running shards stop at once; labels already written stay"


def _unfinished_shards(run_id, stale_after: float) -> list[dict]:
    """The run's queued and running shards, each with ``stale``: no heartbeat (or, queued without an operation,
    no change) for ``stale_after`` seconds of the server's clock."""
    since = {"$subtract": [NOW, int(stale_after * 1000)]}
    last = {"$ifNull": ["$beat_at", {"$ifNull": ["$queued_at", NOW]}]}
    return list(
        shards_collection().aggregate(
            [
                {"$match": {"run_id": run_id, "state": {"$in": ["queued", "running"]}}},
                {"$project": _BRIEF},
                {"$set": {"stale": {"$lt": [last, since]}}},
            ]
        )
    )


def _silent(collection, doc_id, seconds: float) -> bool:
    since = {"$subtract": [NOW, int(seconds * 1000)]}
    return collection.count_documents({"_id": doc_id, "$expr": {"$lt": ["$beat_at", since]}}) == 1


def _reap_shard(run: dict, shard: dict, stale_after: float, judge_lost: bool) -> str | None:
    if run["state"] == "stopping":
        return _stop_shard(shard)
    if shard["state"] == "queued" and shard.get("op_id") is None:
        return _requeue(run, shard, "its operation was never queued", count=False) if shard["stale"] else None
    op = operation(shard["op_id"]) if shard.get("op_id") else None
    if shard["state"] == "running" and shard.get("holder") and shard["stale"] and judge_lost:
        error = f"worker lost: no heartbeat from {shard['holder']} for over {stale_after:g} s"
        return _retry_or_give_up(run, shard, error)
    if op is None:
        return _give_up(run, shard, "its delegated operation was deleted")
    state = state_of(op)
    if state == "completed" and shard["state"] == "running":
        return _give_up(run, shard, "its operation completed without finishing the shard")
    if state != "failed":
        return None
    error = _error_of(op)
    if error == STOPPED:
        return _stop_shard(shard)
    return _retry_or_give_up(run, shard, error)


def _retry_or_give_up(run: dict, shard: dict, error: str) -> str | None:
    tries = max(shard.get("attempts", 0), shard.get("requeues", 0))  # requeues: also attempts that never started
    if not _transient(error) or tries >= run.get("max_attempts", 1):
        return _give_up(run, shard, error)
    return _requeue(run, shard, error)


def _requeue(run: dict, shard: dict, error: str, count: bool = True) -> str | None:
    """A new attempt: a new lease first (the old attempt can no longer write the shard), then its operation;
    the old operation is failed so its worker stops the old attempt."""
    values: dict[str, Any] = {"error": error, "holder": None, "op_id": None, "queued_at": NOW, "beat_at": None}
    if count and _out_of_memory(error) and shard.get("batch_used"):
        values["batch_size"] = max(1, shard["batch_used"] // 2)
    if count:
        values["requeues"] = {"$expr": {"$add": [{"$ifNull": ["$requeues", 0]}, 1]}}
    lease = new_lease()
    moved = move_shard(shard["_id"], (shard["state"],), "queued", if_lease=shard.get("lease"), lease=lease, **values)
    if moved is None:
        return None  # another reaper, or the attempt itself, moved it first
    _end_operation(shard.get("op_id"), f"superseded: shard queued again after: {error}")
    label = f"shard {shard['index'] + 1}/{run['shards']}, again"
    queue_attempt(Job.from_doc(run["job"]), moved, lease, run["delegation_target"], label)
    smaller = f" with batch size {values['batch_size']}" if "batch_size" in values else ""
    return f"queued again{smaller} after: {error}"


def _give_up(run: dict, shard: dict, error: str) -> str | None:
    """Fail the shard for good, unless each of its samples is labelled (an attempt did the work but could not
    record it): then it is done."""
    sample_ids = shard_sample_ids(shard["_id"])
    labelled, per_class = label_counts(Job.from_doc(run["job"]), sample_ids)
    if labelled == len(sample_ids):
        counts = {"labelled": labelled, "instances": sum(per_class.values()), "per_class": per_class}
        moved = move_shard(shard["_id"], (shard["state"],), "done", if_lease=shard.get("lease"), **counts)
        verdict = "every sample is labelled: done"
    else:
        moved = move_shard(shard["_id"], (shard["state"],), "failed", if_lease=shard.get("lease"), error=error)
        verdict = f"failed for good: {error}"
    if moved is None:
        return None
    _end_operation(shard.get("op_id"), error)
    return verdict


def _stop_shard(shard: dict) -> str | None:
    moved = move_shard(shard["_id"], (shard["state"],), "stopped", if_lease=shard.get("lease"), error=STOPPED)
    if moved is None:
        return None
    _end_operation(shard.get("op_id"), STOPPED)
    return "stopped"


def _end_operation(op_id, error: str) -> None:
    """Fail an attempt's operation if it is still queued or running (its worker then stops the attempt)."""
    if op_id is None:
        return
    op = operation(op_id)
    if op is not None and state_of(op) in ("queued", "running"):
        fail_operation(op_id, error, state_of(op))


def _error_of(op) -> str:
    result = op.result
    if isinstance(result, dict):
        error = result.get("error_message") or result.get("error")
    else:
        error = getattr(result, "error_message", None) or getattr(result, "error", None)
    lines = str(error or "failed without an error message").strip().splitlines()
    return lines[-1] if lines else "failed"


def _transient(error: str) -> bool:
    return any(word in error.lower() for word in _TRANSIENT)


def _out_of_memory(error: str) -> bool:
    return any(word in error.lower() for word in _OOM)
