"""Recovery of sharded runs: shards whose worker died are run again; shards that keep failing are reported.

``reap`` looks at every shard of every unfinished sharded run:

- running, on an ``ntt worker`` whose heartbeat (the operation's ``updated_at``) is older than ``stale_after``:
  the worker is lost (killed, its machine gone); the operation is marked failed;
- failed for a transient reason (worker lost, out of memory, a child process killed): queued again, up to the
  run's ``max_attempts`` runs, with half the batch after running out of memory;
- failed otherwise, or too often: the shard is failed for good, its error and samples in the run's record.

When no shard is left queued or running the run's record is completed. Every change is a conditional update
(only if the operation is still in the state seen), so any number of workers may reap at once.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from bson import ObjectId

from .references import NTTFiftyOneError
from .runs import state_of
from .shards import aware_utc, delegated_service, finish_if_done, runs_collection, shards_collection

WORKER_LINK = "ntt-worker://"  # the run link of operations an ntt worker runs (it beats their heartbeat)
STALE_AFTER = 60.0  # seconds without a heartbeat after which a worker counts as lost
STOPPED = "Stopped on request (NTT runs)"
_OOM = ("out of memory", "outofmemoryerror", "memoryerror", "sigkill")
_TRANSIENT = ("worker lost", "child process died") + _OOM


def reap(stale_after: float = STALE_AFTER, run_id: str | None = None) -> list[str]:
    """One pass over the unfinished sharded runs (or run ``run_id``); returns what it did, one line each."""
    query = {"state": {"$in": ["running", "stopping"]}}
    if run_id is not None:
        query["_id"] = ObjectId(run_id)
    done = []
    for run in runs_collection().find(query, {"provenance": 0}):
        for shard in shards_collection().find({"run_id": run["_id"], "state": {"$in": ["queued", "running"]}}, _BRIEF):
            line = _reap_shard(run, shard, stale_after)
            if line:
                done.append(f"run {run['_id']} shard {shard['index'] + 1}/{run['shards']}: {line}")
        finished = finish_if_done(run["_id"])
        if finished:
            done.append(f"run {run['_id']}: {finished['state']}")
    return done


def stop(run_id: str) -> str:
    """Stop a sharded run: its queued shards will not start, its running ones are terminated by their workers
    (labels already written stay). Returns what will happen."""
    from fiftyone.operators.executor import ExecutionResult

    run = runs_collection().find_one_and_update(
        {"_id": ObjectId(run_id), "state": "running"}, {"$set": {"state": "stopping"}}
    )
    if run is None:
        raise NTTFiftyOneError(f"sharded run {run_id} is not running: only a running run can be stopped")
    service = delegated_service()
    for shard in shards_collection().find({"run_id": run["_id"], "state": {"$in": ["queued", "running"]}}, _BRIEF):
        op = service.get(shard["op_id"])
        if op is not None and state_of(op) in ("queued", "running"):
            result = ExecutionResult(error=STOPPED, error_message=STOPPED)
            service.set_failed(op.id, result=result, required_state=state_of(op))
    reap(run_id=run_id)
    return "queued shards will not start; running shards stop at once; labels already written stay"


_BRIEF = {"sample_ids": 0, "per_class": 0, "skipped": 0}


def _reap_shard(run: dict, shard: dict, stale_after: float) -> str | None:
    service = delegated_service()
    op = service.get(shard["op_id"])
    if op is None:
        return _give_up(shard, "its delegated operation was deleted")
    state = state_of(op)
    if state == "running" and _lost(op, stale_after):
        from fiftyone.operators.executor import ExecutionResult

        error = f"worker lost: no heartbeat from {op.run_link} since {op.updated_at:%H:%M:%S} UTC"
        if service.set_failed(op.id, result=ExecutionResult(error=error), required_state="running") is None:
            return None
        op, state = service.get(op.id), "failed"
    if state == "completed" and shard["state"] != "done":
        return _give_up(shard, "its operation completed without finishing the shard")
    if state != "failed":
        return None
    error = _error_of(op)
    if run["state"] == "stopping" or error == STOPPED:
        _set(shard, state="stopped", error=STOPPED)
        return "stopped"
    if not _transient(error) or shard.get("attempts", 0) >= run.get("max_attempts", 1):
        return _give_up(shard, error)
    return _requeue(service, op, shard, error)


def _requeue(service, op, shard: dict, error: str) -> str | None:
    if service.set_queued(op.id, required_state="failed") is None:
        return None  # another reaper did it
    values: dict[str, Any] = {"state": "queued", "error": error}
    if _out_of_memory(error) and shard.get("batch_used"):
        values["batch_size"] = max(1, shard["batch_used"] // 2)
    _set(shard, **values)
    smaller = f" with batch size {values['batch_size']}" if "batch_size" in values else ""
    return f"queued again{smaller} after: {error}"


def _give_up(shard: dict, error: str) -> str:
    _set(shard, state="failed", error=error)
    return f"failed for good: {error}"


def _lost(op, stale_after: float) -> bool:
    """A running operation of an ntt worker whose heartbeat is older than ``stale_after`` seconds (operations
    run by other launchers beat no heartbeat that ntt knows of: they are left alone)."""
    if not str(op.run_link or "").startswith(WORKER_LINK):
        return False
    return datetime.now(timezone.utc) - aware_utc(op.updated_at) > timedelta(seconds=stale_after)


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


def _set(shard: dict, **values) -> None:
    shards_collection().update_one({"_id": shard["_id"]}, {"$set": values})
