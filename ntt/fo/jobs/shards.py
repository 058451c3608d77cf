"""One segment request spread over many workers: a sharded run.

``submit`` checks the request as ``segment`` would and resolves it once into a job (``jobs.Job``: the bank
version, the settings with thresholds resolved, the field, the provenance), records the run with its job,
splits the samples to label into shards by sample id and queues each shard as a delegated operation of the
plugin's segment operator (``fiftyone delegated`` sees them; ``ntt worker`` runs them, on any machine that
reaches the same database, media and bank folder).

Each queued operation carries a lease, a token naming that attempt; only the attempt holding the shard's lease
may claim it, note progress or end it, and re-queueing a shard gives it a new lease and a new operation. A
shard labels only its samples that are still empty, first writer wins (``writes``), so however many attempts
are alive at once (a worker declared lost may still run) every sample is labelled once. The last shard to end
completes the run's record. Every state change goes through ``run_states`` (its table says who moves what).
"""

from __future__ import annotations

import math
from collections import Counter
from datetime import datetime, timezone
from typing import Any

from bson import ObjectId

from ntt.fo.checks import check_weights, whole_number
from ntt.fo.embeddings import delete_embeddings
from ntt.fo.jobs.request import Job, job_bank, job_of, job_settings
from ntt.fo.jobs.states import (
    NOW,
    UNFINISHED_SHARD,
    move_run,
    move_shard,
    new_lease,
    note_shard,
    runs_collection,
    server_time,
    shards_collection,
)
from ntt.fo.labelling.provenance import declare_field, record_done
from ntt.fo.labelling.segment import LeaseLost, _run, new_segmenter, plan_segment
from ntt.fo.outages import patiently
from ntt.fo.references import NTTFiftyOneError
from ntt.fo.store import dataset_key, dataset_of
from ntt.steps import Step, Steps, relay

OPERATOR = "@ntt/ntt/segment_with_bank"
TARGET = "ntt"  # the delegation target of shard operations: what `ntt worker` claims by default
SHARD_SIZE = 500  # samples per shard by default: a few minutes of GPU work, cheap to retry, many to balance
MAX_ATTEMPTS = 3
_SHOWN = (
    "score_thresh class_thresholds max_instances batch_size preset tag cache thresholds mask_dir keep_embeddings"
).split()


def submit_job(
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

    Every argument is checked here, as ``segment`` checks it (no model loads; the workers need the weights),
    and resolved once: renaming, teaching or deleting the bank, re-calibrating it or renaming the dataset
    mid-job changes nothing of this job. ``overwrite=True`` clears the target samples' labels once every shard
    is recorded; ``skip_existing=True`` leaves labelled samples out. Each worker runs on its own device (its
    ``CUDA_VISIBLE_DEVICES``): ``device`` may only be None or "auto".

    Args:
        bank: the name of a bank stored with the dataset (its current version is the job's).
        shards: how many shards (default: one per ``shard_size`` samples, 500).
        delegation_target: the name workers claim (``ntt worker --target``).
        max_attempts: how often a shard runs at most when its worker dies or runs out of memory.
    Returns:
        ``{"job": job id, "shards", "samples", "label_field", "delegation_target"}`` (and ``"run"``, the same
        id, deprecated); follow it with ``get_job_status``. If queueing fails part-way, the job records which
        shards were queued (they run) and which were not (failed, with their samples), and
        ``NTTFiftyOneError`` says so.
    """
    if not isinstance(bank, str):
        raise NTTFiftyOneError("a sharded job needs a bank stored with the dataset (its name): workers load it")
    if segment_args.get("device") not in (None, "auto"):
        raise NTTFiftyOneError(
            f"a sharded job runs on each worker's own device (its CUDA_VISIBLE_DEVICES), not device="
            f"{segment_args['device']!r}: leave device out"
        )
    max_attempts = whole_number(max_attempts)
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise NTTFiftyOneError(f"max_attempts must be a whole number >= 1, got {max_attempts!r}")
    plan = plan_segment(coll, bank, label_field, **segment_args)
    dataset = dataset_of(coll)
    ids = sorted(plan.view.values("id"))
    if not ids:
        raise NTTFiftyOneError("nothing to segment: the chosen samples are all references or already labelled")
    count = _shard_count(len(ids), shards, shard_size)
    info = declare_field(dataset, label_field, plan.source.info(plan.excluded))
    job = job_of(coll, plan, label_field, info, segment_args.get("mask_dir"), segment_args.get("keep_embeddings", True))
    run_id = _record_run(dataset, job, segment_args, delegation_target, max_attempts, len(ids), count)
    parts = [ids[index::count] for index in range(count)]
    shard_ids = (
        shards_collection()
        .insert_many(
            [
                {"run_id": run_id, "index": i, "sample_ids": part, "samples": len(part), "state": "pending"}
                | {"attempts": 0, "op_id": None, "lease": None}
                for i, part in enumerate(parts)
            ]
        )
        .inserted_ids
    )
    queued = 0
    try:
        if segment_args.get("overwrite"):  # nothing is queued yet: no shard can write before this clears
            _clear(dataset, job, ids)
        for index, shard_id in enumerate(shard_ids):
            _queue_shard(job, run_id, shard_id, f"shard {index + 1}/{count}", delegation_target)
            queued += 1
    except Exception as err:
        _close_submit(run_id, f"never queued: submitting the run failed: {err}")
        raise NTTFiftyOneError(
            f"submitting job {run_id} failed after queueing {queued} of {count} shards: {err}; the queued ones run, "
            "the others are recorded as failed with their samples (see `ntt jobs status`)"
        ) from err
    if move_run(run_id, ("submitting",), "running") is None:
        raise NTTFiftyOneError(f"job {run_id} was closed while it was being submitted (the submit was too slow?)")
    return {
        "job": str(run_id),
        "run": str(run_id),  # deprecated: the same id as "job", kept one release
        "shards": count,
        "samples": len(ids),
        "label_field": label_field,
        "delegation_target": delegation_target,
    }


def _record_run(dataset, job: Job, args: dict, target: str, max_attempts: int, samples: int, count: int):
    run = {
        "dataset_id": dataset._doc.id,
        "dataset": dataset.name,
        "label_field": job.label_field,
        "bank": job.bank_name,
        "fingerprint": job.fingerprint,
        "job": job.to_doc(),
        "args": {k: args[k] for k in _SHOWN if args.get(k) is not None},
        "delegation_target": target,
        "max_attempts": max_attempts,
        "samples": samples,
        "shards": count,
        "queued": 0,
        "state": "submitting",
    }
    run_id = runs_collection().insert_one(run).inserted_id
    runs_collection().update_one({"_id": run_id}, [{"$set": {"created_at": NOW, "beat_at": NOW}}])
    return run_id


def _clear(dataset, job: Job, ids: list[str]) -> None:
    """``overwrite``: the samples' labels go, and with them their mask files and embeddings of this dataset."""
    from ntt.fo.labelling.segment import MaskFiles

    labels = dataset.select(ids).values(f"{job.label_field}.detections.id")
    dataset.select(ids).set_values(job.label_field, [None] * len(ids))
    delete_embeddings(dataset, [label_id for found in labels for label_id in found or []])
    if job.mask_dir:
        masks = MaskFiles(dataset, job.mask_dir, job.label_field)
        for sid in ids:
            masks.clear(sid)
        masks.settle(set(ids), replacing=True)


def _close_submit(run_id, error: str) -> None:
    """A submit that stopped part-way: its shards never queued (pending, or queued without an operation) fail,
    their samples listed; the run goes on with the others."""
    unqueued = {"run_id": run_id, "$or": [{"state": "pending"}, {"state": "queued", "op_id": None}]}
    for shard in shards_collection().find(unqueued, {"state": 1, "lease": 1}):
        move_shard(shard["_id"], (shard["state"],), "failed", if_lease=shard.get("lease"), error=error)
    move_run(run_id, ("submitting",), "running")
    finish_if_done(run_id)


def queue_attempt(job: Job, shard: dict, lease: str, target: str, label: str) -> None:
    """Queue the operation of an attempt at ``shard`` of a run of ``job``; the shard must hold ``lease`` already
    (in state queued). Record it on the shard only if the lease is still that (else fail the operation at once)."""
    from fiftyone.operators.executor import ExecutionContext

    request = {
        "dataset_id": job.dataset_id,
        "operator_uri": OPERATOR,
        "delegated": True,
        "delegation_target": target,
        "params": {"bank": job.bank_name, "ntt_shard": str(shard["_id"]), "ntt_lease": lease},
    }
    request["dataset_name"] = _dataset_name(job.dataset_id)  # now: the dataset may have been renamed
    op = delegated_service().queue_operation(
        operator=OPERATOR,
        label=f"NTT: segment with {job.bank_name} ({label}, run {shard['run_id']})",
        delegation_target=target,
        context=ExecutionContext(request_params=request),
    )
    found = shards_collection().update_one({"_id": shard["_id"], "lease": lease}, {"$set": {"op_id": op.id}})
    if not found.matched_count:
        fail_operation(op.id, "superseded: its shard was queued again or ended", "queued")


def _queue_shard(job: Job, run_id, shard_id, label: str, target: str) -> None:
    lease = new_lease()
    shard = move_shard(shard_id, ("pending",), "queued", lease=lease, queued_at=NOW)
    if shard is None:
        raise NTTFiftyOneError(f"shard {shard_id} is no longer pending: its job was closed meanwhile")
    queue_attempt(job, shard, lease, target, label)
    runs_collection().update_one({"_id": run_id}, [{"$set": {"queued": {"$add": ["$queued", 1]}, "beat_at": NOW}}])


def shard_steps(dataset, shard_id: str, lease: str | None = None) -> Steps[dict[str, Any]]:
    """Run one attempt at a shard (what its delegated operation does): claim it with ``lease`` (default: the
    shard's current one), segment its samples that are still empty, first writer wins, noting progress while it
    holds the lease; returns the shard's summary.

    Raises:
        LeaseLost: the shard is not waiting for this attempt, or stopped being held by it mid-run.
    """
    shard = shards_collection().find_one({"_id": ObjectId(shard_id)}, {"sample_ids": 0})
    if shard is None:
        raise NTTFiftyOneError(f"no shard {shard_id}: its job was deleted")
    lease = lease or shard.get("lease")
    attempt = {"$expr": {"$add": [{"$ifNull": ["$attempts", 0]}, 1]}}
    claimed = move_shard(
        shard["_id"], ("queued",), "running", if_lease=lease, attempts=attempt, started_at=NOW, beat_at=NOW
    )
    if claimed is None:
        raise LeaseLost(f"shard {shard_id} is not waiting for this attempt (it is {shard['state']}): nothing done")
    run = runs_collection().find_one({"_id": claimed["run_id"]}, {"job": 1})
    job = Job.from_doc(run["job"])
    if dataset_key(dataset) != job.dataset_id:
        raise NTTFiftyOneError(f"shard {shard_id} belongs to dataset {job.dataset_id}, not {dataset.name!r}")
    bank, cfg = job_bank(job), job_settings(job, claimed.get("batch_size"))
    check_weights(cfg)
    yield Step(0.0, "Loading models")
    segmenter = new_segmenter(bank, cfg)

    def holds(**values) -> bool:
        return patiently(lambda: note_shard(claimed["_id"], lease, **values))

    if not holds(batch_used=segmenter.batch_size, models_loaded_at=NOW):
        raise LeaseLost(f"shard {shard_id}: this attempt lost its lease while loading models")
    sample_ids = shard_sample_ids(claimed["_id"])
    field = job.label_field

    def noted(step: Step) -> Step:  # the shard's progress, for run_status
        holds(labelled=label_counts(job, sample_ids)[0])
        return step

    view = dataset.select(sample_ids).exists(field, False)
    run = _run(dataset, view, segmenter, field, job.mask_dir, holds=holds, keep=job.keep_embeddings)
    summary = yield from relay(run, noted)
    # counted on the dataset: an earlier attempt's batches are part of the shard too
    labelled, per_class = label_counts(job, sample_ids)
    done = {"labelled": labelled, "instances": sum(per_class.values()), "per_class": per_class}
    ended = move_shard(
        claimed["_id"], ("running",), "done", if_lease=lease, skipped=summary["skipped"], ended_at=NOW, **done
    )
    if ended is None:
        raise LeaseLost(f"shard {shard_id}: this attempt lost its lease at the end (its labels are written)")
    patiently(lambda: finish_if_done(claimed["run_id"]))
    return {"run": str(claimed["run_id"]), "shard": claimed["index"], **summary}


def finish_if_done(run_id) -> dict[str, Any] | None:
    """Complete the run's record once no shard is pending, queued or running (exactly once, whoever calls it):
    counts, failures with their errors and samples, wall time (server time); record the bank on the field again
    (the dataset found by its id) and release the run's bank version if no bank points at it any more. Returns
    the record when this call completed it."""
    run_id = ObjectId(run_id)
    shards = list(shards_collection().find({"run_id": run_id}, {"sample_ids": 0}))
    if any(s["state"] in UNFINISHED_SHARD for s in shards):
        return None
    run = runs_collection().find_one({"_id": run_id})
    if run is None or run["state"] not in ("running", "stopping"):
        return None
    failed = [s for s in shards if s["state"] != "done"]
    per_class = sum((Counter(s.get("per_class") or {}) for s in shards), Counter())
    summary = {
        "labelled": sum(s.get("labelled", 0) for s in shards if s["state"] == "done"),
        "instances": sum(s.get("instances", 0) for s in shards if s["state"] == "done"),
        "per_class": dict(per_class),
        "skipped": [item for s in shards for item in s.get("skipped") or []],
        "failed_shards": [_failure(s) for s in failed],
        "wall_s": round((server_time() - aware_utc(run["created_at"])).total_seconds(), 1),
    }
    if failed:  # a failed or stopped shard's samples labelled by an earlier attempt count too
        job = Job.from_doc(run["job"])
        summary["labelled"] += sum(label_counts(job, shard_sample_ids(s["_id"]))[0] for s in failed)
    state = "stopped" if run["state"] == "stopping" else ("failed" if failed else "completed")
    done = move_run(run_id, (run["state"],), state, ended_at=NOW, summary=summary)
    if done is None:
        return None
    _after_run(Job.from_doc(run["job"]))
    return done


def _after_run(job: Job) -> None:
    """The finisher's clean-up: the field's provenance again, and the bank version released if no bank record
    points at it any more (it was replaced mid-run)."""
    from fiftyone.core.odm.database import load_dataset

    from ntt.fo.banks import _records
    from ntt.fo.store import locate_bank_file, release

    path = locate_bank_file(job.bank_file)
    release(path, _records(path))
    try:
        dataset = load_dataset(id=job.dataset_id)
    except ValueError:  # the dataset was deleted mid-run: nothing to record on
        return
    record_done(dataset, job.label_field, job.provenance)


def shard_sample_ids(shard_id) -> list[str]:
    return shards_collection().find_one({"_id": shard_id}, {"sample_ids": 1})["sample_ids"]


def label_counts(job: Job, sample_ids: list[str]) -> tuple[int, dict[str, int]]:
    """How many of these samples have labels in the job's field, and how many labels of each class, read from
    the database by the dataset's id (a renamed dataset is still found)."""
    from fiftyone.core.odm.database import get_db_conn

    conn = get_db_conn()
    found = conn.datasets.find_one({"_id": ObjectId(job.dataset_id)}, {"sample_collection_name": 1})
    if found is None:
        return 0, {}
    samples, field = conn[found["sample_collection_name"]], job.label_field
    query = {"_id": {"$in": [ObjectId(i) for i in sample_ids]}, field: {"$ne": None}}
    labels = samples.aggregate(
        [
            {"$match": query},
            {"$unwind": f"${field}.detections"},
            {"$group": {"_id": f"${field}.detections.label", "n": {"$sum": 1}}},
        ]
    )
    return samples.count_documents(query), {doc["_id"]: doc["n"] for doc in labels if doc["_id"] is not None}


def _failure(shard: dict) -> dict[str, Any]:
    return {
        "shard": shard["index"],
        "error": shard.get("error"),
        "attempts": shard.get("attempts", 0),
        "sample_ids": shard_sample_ids(shard["_id"]),
    }


def _shard_count(samples: int, shards: int | None, shard_size: int | None) -> int:
    if shards is not None and shard_size is not None:
        raise NTTFiftyOneError("give shards (how many) or shard_size (samples per shard), not both")
    for name, value in (("shards", shards), ("shard_size", shard_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise NTTFiftyOneError(f"{name} must be a whole number >= 1, got {value!r}")
    count = shards if shards is not None else math.ceil(samples / (shard_size or SHARD_SIZE))
    return max(1, min(count, samples))


def _dataset_name(dataset_id: str) -> str | None:
    from fiftyone.core.odm.database import get_db_conn

    found = get_db_conn().datasets.find_one({"_id": ObjectId(dataset_id)}, {"name": 1})
    return found["name"] if found else None


def operation(op_id):
    """The delegated operation ``op_id``, or None when it is gone (FiftyOne's ``get`` raises then)."""
    try:
        return delegated_service().get(op_id)
    except ValueError:
        return None


def fail_operation(op_id, error: str, required_state: str) -> bool:
    """Mark a delegated operation failed if it is still in ``required_state``; returns whether it was."""
    from fiftyone.operators.executor import ExecutionResult

    result = ExecutionResult(error=error, error_message=error)
    return delegated_service().set_failed(op_id, result=result, required_state=required_state) is not None


def delegated_service():
    """FiftyOne's delegated-operation service (the queue shards go through)."""
    from fiftyone.operators.delegated import DelegatedOperationService

    return DelegatedOperationService()


def aware_utc(when: datetime) -> datetime:
    """MongoDB hands datetimes back naive (in UTC)."""
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)
