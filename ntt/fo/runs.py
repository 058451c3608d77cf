"""A dataset's NTT runs, to follow and to stop: the runs of this process (what the App runs immediately, in its
server) and the background runs queued for ``fiftyone delegated launch``.

A run of this process is stopped at its next step (the SDK's runs step after each batch or reference image),
which keeps the work finished so far. A background run is stopped the FiftyOne way: its delegated operation is
marked failed, and a worker started with ``fiftyone delegated launch --monitor`` terminates it.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Generator
from datetime import datetime, timezone
from typing import Any

from ..steps import Step, Steps, T
from .references import NTTFiftyOneError
from .store import dataset_of

PLUGIN_PREFIX = "@ntt/ntt/"
_KEEP_FINISHED = 20  # finished runs of this process still listed
_LIVE: dict[str, dict[str, Any]] = {}
_LOCK = threading.Lock()


class RunStopped(NTTFiftyOneError):
    """A run was stopped on request; the message says at which step and that the work done so far stays."""


def tracked(steps: Steps[T], dataset_name: str, operation: str) -> Generator[Step, None, T]:
    """``steps`` as a run of this process: listed by ``list_runs`` with its progress, stopped by ``stop_run`` at
    its next step (``RunStopped`` is raised there; closing the run keeps what it finished)."""
    run = {"id": "live-" + uuid.uuid4().hex[:10], "dataset": dataset_name, "operation": operation, "where": "this App"}
    run.update(state="running", progress=0.0, label="starting", started=_now(), error=None, stop=False)
    with _LOCK:
        _LIVE[run["id"]] = run
    try:
        while True:
            if run["stop"]:
                raise RunStopped(f"stopped at '{run['label']}' on request: the work finished before it stays")
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


def list_runs(coll) -> list[dict[str, Any]]:
    """The NTT runs of ``coll``'s dataset, newest first: ``id``, ``operation``, ``where`` ("this App",
    "background" or "ntt workers": a sharded run, its progress summed over its shards), ``state`` (queued,
    running, completed, failed, stopped), ``progress`` in [0, 1] or None, ``label`` (the last step),
    ``started`` (ISO time) and ``error``."""
    from .shard_status import sharded_runs

    name = dataset_of(coll).name
    with _LOCK:
        live = [_public(run) for run in _LIVE.values() if run["dataset"] == name]
    background = [_describe(op) for op in _delegated(name)]
    spread = [_describe_sharded(status) for status in sharded_runs(coll)]
    return sorted(live + background + spread, key=lambda run: run["started"] or "", reverse=True)


def stop_run(coll, run_id: str) -> str:
    """Stop a running or queued run of ``coll``'s dataset; returns what will happen.

    Raises:
        NTTFiftyOneError: no such run, or it has ended already.
    """
    run = next((r for r in list_runs(coll) if r["id"] == run_id), None)
    if run is None or run["state"] not in ("queued", "running"):
        state = "no run" if run is None else f"run {run_id} is {run['state']}"
        raise NTTFiftyOneError(f"{state}: only a queued or running run can be stopped")
    if run["where"] == "this App":
        with _LOCK:
            _LIVE[run_id]["stop"] = True
        return f"{run['operation']} stops after its current step; the work finished so far stays"
    if run["where"] == "ntt workers":
        from .reaper import stop

        return f"{run['operation']}: {stop(run_id)}"
    from bson import ObjectId

    from .reaper import STOPPED
    from .shards import fail_operation

    fail_operation(ObjectId(run_id), STOPPED, run["state"])
    if run["state"] == "queued":
        return f"{run['operation']} will not start: it is marked failed"
    return (
        f"{run['operation']} is marked failed: a worker started with `fiftyone delegated launch --monitor` stops it; "
        "batches it finished keep their labels"
    )


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
    from .shard_status import status_line

    failures = status["failures"]
    return {
        "id": status["run"],
        "operation": f"segment_with_bank in {sum(status['shards'].values())} shards",
        "where": "ntt workers",
        "state": {"running": "running", "stopping": "running"}.get(status["state"], status["state"]),
        "progress": status["progress"],
        "label": status_line(status),
        "started": status["started"],
        "error": f"{len(failures)} shard(s): {failures[0]['error']}" if failures else None,
    }


def _public(run: dict[str, Any]) -> dict[str, Any]:
    """A run of this process as ``list_runs`` describes every run (without its dataset and stop flag)."""
    return {key: value for key, value in run.items() if key not in ("dataset", "stop")}


def _forget_old_runs() -> None:
    with _LOCK:
        finished = [key for key, run in _LIVE.items() if run["state"] not in ("running",)]
        for key in finished[:-_KEEP_FINISHED]:
            del _LIVE[key]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
