"""A dataset's NTT jobs, to follow and to stop: the jobs of this process (what the App runs immediately, in its
server), the background jobs queued for ``fiftyone delegated launch`` and the sharded jobs of ``ntt worker``s.

("Run" keeps FiftyOne's meaning, a run with a key: a bank is stored as one, and so is a stored grading.)

A job of this process is stopped at its next step (the SDK's jobs step after each batch or reference image),
which keeps the work finished so far. A background job is stopped the FiftyOne way: its delegated operation is
marked failed, and a worker started with ``fiftyone delegated launch --monitor`` terminates it. A sharded job
is stopped through its record (``reaper.stop``).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Generator
from datetime import datetime, timezone
from typing import Any

from ntt.fo.references import NTTFiftyOneError
from ntt.fo.store import dataset_of
from ntt.steps import Step, Steps, T

PLUGIN_PREFIX = "@ntt/ntt/"
_KEEP_FINISHED = 20  # finished runs of this process still listed
_LIVE: dict[str, dict[str, Any]] = {}
_LOCK = threading.Lock()


class JobStopped(NTTFiftyOneError):
    """A job was stopped on request; the message says at which step and that the work done so far stays."""


def tracked(steps: Steps[T], dataset_name: str, operation: str) -> Generator[Step, None, T]:
    """``steps`` as a job of this process: listed by ``list_jobs`` with its progress, stopped by ``stop_job`` at
    its next step (``JobStopped`` is raised there; closing the job keeps what it finished)."""
    run = {"id": "live-" + uuid.uuid4().hex[:10], "dataset": dataset_name, "operation": operation, "where": "this App"}
    run.update(state="running", progress=0.0, label="starting", started=_now(), error=None, stop=False)
    with _LOCK:
        _LIVE[run["id"]] = run
    try:
        while True:
            if run["stop"]:
                raise JobStopped(f"stopped at '{run['label']}' on request: the work finished before it stays")
            try:
                step = next(steps)
            except StopIteration as done:
                run.update(state="completed", progress=1.0)
                return done.value
            run.update(progress=step.fraction, label=step.label)
            yield step
    except BaseException as err:
        run.update(state="stopped" if run["stop"] else "failed", error=str(err) or type(err).__name__)
        raise
    finally:
        steps.close()
        _forget_old_runs()


def list_jobs(coll) -> list[dict[str, Any]]:
    """The NTT jobs of ``coll``'s dataset, newest first: ``id``, ``operation``, ``where`` ("this App",
    "background" or "ntt workers": a sharded job, its progress summed over its shards), ``state`` (queued,
    running, completed, failed, stopped), ``progress`` in [0, 1] or None, ``label`` (the last step),
    ``started`` (ISO time) and ``error``."""
    from ntt.fo.jobs.status import sharded_runs

    name = dataset_of(coll).name
    with _LOCK:
        live = [_public(run) for run in _LIVE.values() if run["dataset"] == name]
    background = [_describe(op) for op in _delegated(name)]
    spread = [_describe_sharded(status) for status in sharded_runs(coll)]
    return sorted(live + background + spread, key=lambda run: run["started"] or "", reverse=True)


def stop_job(coll, job_id: str) -> str:
    """Stop a running or queued job of ``coll``'s dataset (an id from ``list_jobs``); returns what will happen.

    Raises:
        NTTFiftyOneError: no such job, or it has ended already.
    """
    run = next((r for r in list_jobs(coll) if r["id"] == job_id), None)
    if run is None or run["state"] not in ("queued", "running"):
        state = "no job" if run is None else f"job {job_id} is {run['state']}"
        raise NTTFiftyOneError(f"{state}: only a queued or running job can be stopped")
    if run["where"] == "this App":
        with _LOCK:
            _LIVE[job_id]["stop"] = True
        return f"{run['operation']} stops after its current step; the work finished so far stays"
    if run["where"] == "ntt workers":
        from ntt.fo.jobs.reaper import stop

        return f"{run['operation']}: {stop(job_id)}"
    from bson import ObjectId

    from ntt.fo.jobs.reaper import STOPPED
    from ntt.fo.jobs.shards import fail_operation

    fail_operation(ObjectId(job_id), STOPPED, run["state"])
    if run["state"] == "queued":
        return f"{run['operation']} will not start: it is marked failed"
    return (
        f"{run['operation']} is marked failed: a worker started with `fiftyone delegated launch --monitor` stops it; "
        "batches it finished keep their labels"
    )


def get_job_status(job_id: str) -> dict[str, Any]:
    """Where a job stands, by its id (from ``submit_job`` or ``list_jobs``).

    Returns:
        for a sharded job, ``job`` (its id), ``dataset``, ``label_field``, ``bank``, ``state`` (submitting,
        running, stopping, completed, failed, stopped), ``samples`` (to label), ``done`` (labelled or skipped so
        far), ``progress`` in [0, 1], ``shards`` (how many are pending / queued / running / done / failed /
        stopped), ``samples_per_s``, ``workers`` (the run links of the workers running shards now), ``started``
        and ``ended`` (ISO times), ``wall_s``, ``failures`` (``[{"shard", "error", "attempts", "samples"}]``) and
        once finished its ``summary`` (``labelled``, ``instances``, ``per_class``, ``skipped``,
        ``failed_shards``, ``wall_s``); ``run`` repeats ``job`` (deprecated). For a job of this process or a
        background one, its entry as ``list_jobs`` describes it.

    Raises:
        NTTFiftyOneError: no job has that id.
    """
    from ntt.fo.jobs.status import run_status

    with _LOCK:
        live = _LIVE.get(job_id)
        if live is not None:
            return _public(live)
    try:
        return run_status(job_id)
    except NTTFiftyOneError:
        op = _operation(job_id)
        if op is None:
            raise NTTFiftyOneError(f"no job {job_id!r}: `list_jobs` (or `ntt jobs status`) lists them") from None
        return _describe(op)


def _operation(job_id: str):
    """The NTT delegated operation ``job_id`` names, or None."""
    from bson import ObjectId
    from bson.errors import InvalidId

    from ntt.fo.jobs.shards import operation

    try:
        op = operation(ObjectId(job_id))
    except (InvalidId, TypeError):  # not an operation's id
        return None
    return op if op is not None and str(op.operator).startswith(PLUGIN_PREFIX) else None


def _delegated(dataset_name: str) -> list:
    from fiftyone.operators.delegated import DelegatedOperationService

    shard = {"context.request_params.params.ntt_shard": {"$exists": False}}  # listed as their run
    ops = DelegatedOperationService().list_operations(dataset_name=dataset_name, **shard)
    return [op for op in ops if str(op.operator).startswith(PLUGIN_PREFIX)]


def _describe(op) -> dict[str, Any]:
    status, result = op.status, op.result
    error = getattr(result, "error_message", None) or getattr(result, "error", None) if result is not None else None
    started = op.started_at or op.queued_at or op.scheduled_at
    return {
        "id": str(op.id),
        "operation": str(op.operator).removeprefix(PLUGIN_PREFIX),
        "where": "background",
        "state": state_of(op),
        "progress": getattr(status, "progress", None),
        "label": getattr(status, "label", None),
        "started": started.replace(tzinfo=timezone.utc).isoformat(timespec="seconds") if started else None,
        "error": str(error).strip().splitlines()[-1] if error else None,
    }


def state_of(op) -> str:
    """A delegated operation's run state as a plain string ("queued", "running", "completed", "failed", ...)."""
    return str(getattr(op.run_state, "value", op.run_state))


def _describe_sharded(status: dict[str, Any]) -> dict[str, Any]:
    from ntt.fo.jobs.status import status_line

    failures = status["failures"]
    return {
        "id": status["job"],
        "operation": f"segment_with_bank in {sum(status['shards'].values())} shards",
        "where": "ntt workers",
        "state": {"running": "running", "stopping": "running"}.get(status["state"], status["state"]),
        "progress": status["progress"],
        "label": status_line(status),
        "started": status["started"],
        "error": f"{len(failures)} shard(s): {failures[0]['error']}" if failures else None,
    }


def _public(run: dict[str, Any]) -> dict[str, Any]:
    """A job of this process as ``list_jobs`` describes every job (without its dataset and stop flag)."""
    return {key: value for key, value in run.items() if key not in ("dataset", "stop")}


def _forget_old_runs() -> None:
    with _LOCK:
        finished = [key for key, run in _LIVE.items() if run["state"] not in ("running",)]
        for key in finished[:-_KEEP_FINISHED]:
            del _LIVE[key]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
