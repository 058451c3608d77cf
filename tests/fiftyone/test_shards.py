"""Sharded runs, in one process: submitting splits and records once; a shard labels only its still-empty samples;
the reaper re-queues lost and out-of-memory shards, gives up on the others with their samples listed; status
and stop. The shards run here by calling ``shard_steps`` (what the operator does in a worker)."""

from __future__ import annotations

import numpy as np
import pytest
from bson import ObjectId
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionResult

import ntt.fo as nfo
from ntt.fo.jobs.shards import OPERATOR, runs_collection, shards_collection
from ntt.fo.jobs.status import sharded_runs
from ntt.steps import drive


@pytest.fixture
def banked(dataset, random_config):
    nfo.mark_references(dataset.limit(3))
    nfo.build_bank(dataset, "pets", label_field="gt", config=random_config)
    return dataset


def _shards(run_id: str) -> list[dict]:
    return list(shards_collection().find({"run_id": ObjectId(run_id)}).sort("index", 1))


def _op(shard: dict):
    return DelegatedOperationService().get(shard["op_id"])


def _labels(sample, field):
    dets = sample[field].detections if sample[field] is not None else []
    return [(d.label, d.confidence, tuple(np.round(d.bounding_box, 6)), d.mask.tobytes()) for d in dets]


def _claim(shard: dict, link: str = "ntt-worker://test/1/abc") -> None:
    DelegatedOperationService().set_running(shard["op_id"], run_link=link, required_state="queued")


def test_submit_splits_records_once_and_shards_match_one_process_run(banked):
    ds = banked
    nfo.segment(ds, "pets", label_field="single")
    queued = nfo.submit_job(ds, "pets", label_field="spread", shards=4)
    targets = nfo.forms.without_references(ds)
    assert queued["samples"] == len(targets) == 9 and queued["shards"] == 4
    shards = _shards(queued["run"])
    ids = [i for s in shards for i in s["sample_ids"]]
    assert sorted(ids) == sorted(targets.values("id")), "every target in exactly one shard"
    assert [s["samples"] for s in shards] == [3, 2, 2, 2]
    ops = [_op(s) for s in shards]
    assert {op.operator for op in ops} == {OPERATOR} and {op.delegation_target for op in ops} == {"ntt"}
    assert all(str(op.run_state) in ("queued", "ExecutionRunState.QUEUED") for op in ops)
    field = ds.get_field("spread")
    assert field.info["ntt_bank"] == "pets" and not ds.exists("spread").count(), "declared, nothing written yet"
    assert [r["where"] for r in nfo.list_jobs(ds)] == ["ntt workers"], "one entry for the run, not one per shard"

    for shard in shards:
        _claim(shard)
        summary = drive(nfo.workers.shard_steps(ds, str(shard["_id"])))
        assert summary["labelled"] == shard["samples"]
    status = nfo.get_job_status(queued["run"])
    assert status["state"] == "completed" and status["done"] == 9 and status["shards"]["done"] == 4
    assert status["summary"]["labelled"] == 9 and status["summary"]["failed_shards"] == []
    single = {k: n for k, n in ds.count_values("single.detections.label").items() if k is not None}
    assert status["summary"]["per_class"] == single and status["summary"]["instances"] == sum(single.values())
    for sample in targets:
        assert _labels(sample, "spread") == _labels(sample, "single")
    assert ds.count("spread.detections") == ds.count("single.detections") > 0


def test_a_rerun_shard_labels_only_what_is_still_empty(banked):
    ds = banked
    queued = nfo.submit_job(ds, "pets", label_field="spread", shards=1)
    shard = _shards(queued["run"])[0]
    first = shard["sample_ids"][:4]
    nfo.segment(ds.select(first), "pets", label_field="spread", skip_existing=True)  # as if a killed run wrote these
    before = {s.id: s.spread.detections[0].id if s.spread.detections else None for s in ds.select(first)}
    _claim(shard)
    summary = drive(nfo.workers.shard_steps(ds, str(shard["_id"])))
    assert summary["samples"] == shard["samples"] - 4, "only the empty ones are segmented again"
    after = {s.id: s.spread.detections[0].id if s.spread.detections else None for s in ds.select(first)}
    assert after == before, "labels already written are not written again"
    recorded = nfo.get_job_status(queued["run"])["summary"]
    assert recorded["labelled"] == shard["samples"]
    assert recorded["instances"] == ds.count("spread.detections"), "the first attempt's instances count too"


def _running(shard: dict, beat_age_s: float = 0.0, link: str = "ntt-worker://test/1/abc") -> None:
    """As if an attempt of a worker at ``link`` claimed the shard and last beat ``beat_age_s`` seconds ago (of the
    database server's clock)."""
    _claim(shard, link)
    beat = [{"$set": {"state": "running", "holder": link, "attempts": 1, "batch_used": 4}}]
    beat.append({"$set": {"beat_at": {"$subtract": ["$$NOW", int(beat_age_s * 1000)]}}})
    shards_collection().update_one({"_id": shard["_id"]}, beat)


def test_reaper_requeues_lost_and_out_of_memory_shards_and_gives_up_on_the_rest(banked):
    ds = banked
    queued = nfo.submit_job(ds, "pets", label_field="spread", shards=3, max_attempts=2)
    lost, oom, broken = _shards(queued["run"])
    service = DelegatedOperationService()
    _running(lost, beat_age_s=120)  # a worker that stopped beating two minutes ago (server time)
    _running(oom)
    _running(broken)
    service.set_failed(oom["op_id"], result=ExecutionResult(error="torch.OutOfMemoryError: CUDA out of memory"))
    service.set_failed(broken["op_id"], result=ExecutionResult(error="RuntimeError: a bug"))

    done = nfo.workers.reap(stale_after=60, run_id=queued["run"])
    assert len(done) == 3, done
    states = {s["index"]: s for s in _shards(queued["run"])}
    assert states[0]["state"] == "queued" and "worker lost" in states[0]["error"]
    assert states[1]["state"] == "queued" and states[1]["batch_size"] == 2, "out of memory: half the batch"
    assert states[2]["state"] == "failed" and "a bug" in states[2]["error"], "not transient: no retry"
    for old, new in ((lost, states[0]), (oom, states[1])):
        assert new["op_id"] != old["op_id"] and new["lease"] != old["lease"], "a new attempt: new operation and lease"
        assert str(_op(new).run_state).endswith(("queued", "QUEUED"))
        assert str(_op(old).run_state).endswith(("failed", "FAILED")), "the old attempt's operation is ended"
    assert nfo.workers.reap(stale_after=60, run_id=queued["run"]) == [], (
        "nothing more to do; a second reaper changes nothing"
    )

    # the old attempt of the lost shard cannot claim it again: the lease is the new operation's
    with pytest.raises(nfo.NTTFiftyOneError, match="not waiting for this attempt"):
        drive(nfo.workers.shard_steps(ds, str(lost["_id"]), lost["lease"]))

    # the out-of-memory shard runs with the smaller batch; the lost one is lost again: no attempts left
    _claim(states[1])
    drive(nfo.workers.shard_steps(ds, str(states[1]["_id"]), states[1]["lease"]))
    assert shards_collection().find_one({"_id": states[1]["_id"]})["batch_used"] == 2
    _running(states[0], beat_age_s=120)
    shards_collection().update_one({"_id": lost["_id"]}, {"$set": {"attempts": 2}})
    nfo.workers.reap(stale_after=60)
    status = nfo.get_job_status(queued["run"])
    assert status["state"] == "failed" and status["shards"] == {
        "pending": 0,
        "queued": 0,
        "running": 0,
        "done": 1,
        "failed": 2,
        "stopped": 0,
    }
    failed = {f["shard"]: f for f in status["summary"]["failed_shards"]}
    assert set(failed) == {0, 2} and failed[2]["sample_ids"] == broken["sample_ids"], "failures list their samples"
    assert status["summary"]["labelled"] == oom["samples"]


def test_stop_and_bad_requests(banked):
    ds = banked
    with pytest.raises(nfo.NTTFiftyOneError, match="not both"):
        nfo.submit_job(ds, "pets", shards=2, shard_size=3)
    with pytest.raises(nfo.NTTFiftyOneError, match="whole number"):
        nfo.submit_job(ds, "pets", shards=0)
    with pytest.raises(nfo.NTTFiftyOneError, match="stored with the dataset"):
        nfo.submit_job(ds, nfo.load_bank(ds, "pets"))
    nfo.segment(nfo.forms.without_references(ds).limit(2), "pets", label_field="spread")
    with pytest.raises(nfo.NTTFiftyOneError, match="already has labels on 2 samples"):
        nfo.submit_job(ds, "pets", label_field="spread")
    assert runs_collection().count_documents({"dataset": ds.name}) == 0, "nothing recorded for a bad request"
    replaced = nfo.submit_job(ds, "pets", label_field="spread", shards=1, overwrite=True)
    assert replaced["samples"] == 9 and not ds.exists("spread").count(), "overwrite clears the labels at submit"
    nfo.stop_job(ds, replaced["run"])

    queued = nfo.submit_job(ds, "pets", label_field="spread", shards=2)
    first, second = _shards(queued["run"])
    _claim(first)
    message = nfo.stop_job(ds, queued["run"])
    assert "will not start" in message
    status = nfo.get_job_status(queued["run"])
    assert status["state"] == "stopped" and status["shards"]["stopped"] == 2
    assert all("failed" in str(_op(s).run_state).lower() for s in (first, second))
    with pytest.raises(nfo.NTTFiftyOneError, match="only a queued or running job"):
        nfo.stop_job(ds, queued["run"])


def test_the_segment_operator_submits_and_runs_shards(banked):
    """The form's "Spread over ntt workers" queues shards; FiftyOne's own executor (what any launcher does) runs
    them through the same operator, and the run completes."""
    import asyncio

    from fiftyone.operators.executor import execute_or_delegate_operator

    ds = banked
    params = {"bank": "pets", "label_field": "spread", "workers": True, "shard_size": 4}
    request = dict(dataset_name=ds.name, view=ds.view()._serialize(), params=params)
    result = asyncio.run(execute_or_delegate_operator(OPERATOR, request))
    result.raise_exceptions()
    messages = [(m.body.operator_uri, m.body.params) for m in result.result]
    notes = [p["message"] for uri, p in messages if uri == "notify"]
    assert notes == ["Queued 3 shard(s) of 9 samples for ntt workers: see 'NTT: jobs'"], notes
    [run] = sharded_runs(ds)
    assert run["shards"]["queued"] == 3 and run["done"] == 0

    DelegatedOperationService().execute_queued_operations(dataset_name=ds.name, delegation_target="ntt")
    status = nfo.get_job_status(run["run"])
    assert status["state"] == "completed" and status["done"] == 9, status
    assert nfo.forms.without_references(ds).exists("spread").count() == 9


def test_the_jobs_commands(banked, capsys):
    from ntt.cli import main

    ds = banked
    assert main(["jobs", "submit", ds.name, "--bank", "pets", "--label-field", "cli", "--shards", "2"]) == 0
    out = capsys.readouterr().out
    assert "9 samples in 2 shards queued for target 'ntt'" in out, out
    job = out.split()[1].rstrip(":")
    assert main(["jobs", "status", ds.name]) == 0
    out = capsys.readouterr().out
    assert f"job {job} [running] cli with bank pets" in out and "0/9 samples · shards: 2 queued" in out, out
    assert main(["jobs", "stop", job]) == 0 and "will not start" in capsys.readouterr().out
    assert main(["jobs", "reap"]) == 0 and "nothing to do" in capsys.readouterr().out
    assert main(["jobs", "status", ds.name, "--job", job, "--json"]) == 0
    assert '"state": "stopped"' in capsys.readouterr().out
    # `ntt runs` and `--run`: the old words, kept one release, each saying so on stderr
    assert main(["runs", "status", ds.name, "--run", job]) == 0
    out, err = capsys.readouterr()
    assert f"job {job} [stopped] cli with bank pets" in out, out
    assert err.splitlines() == ["`--run` is deprecated: use `--job`", "`ntt runs` is deprecated: use `ntt jobs`"]
    assert main(["jobs", "submit", "no_such_dataset", "--bank", "pets"]) == 2
    assert "no FiftyOne dataset 'no_such_dataset'" in capsys.readouterr().err
    assert main(["worker", "--idle-exit", "0"]) == 0, "nothing queued: the worker exits when idle"
    assert "ran 0 operation(s)" in capsys.readouterr().out
