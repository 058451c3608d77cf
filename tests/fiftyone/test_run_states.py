"""Sharded runs stay correct when attempts overlap, reapers race and things change mid-run (in one process, with
the interleavings made exact; ``test_faults.py`` does the same with real processes and a real mongod):

- a request is resolved once into a job: renaming or teaching the bank and renaming the dataset mid-run change
  nothing of the run; its bank version stays on disk until the run ends;
- an attempt declared lost cannot write its shard any more, and no sample is labelled twice;
- every state change is conditional: a shard that finished is never failed, a run never closes while shards
  are pending, a submit that fails part-way says what it queued;
- clones and overwrite: mask files live under the dataset's id; overwrite clears what it could not segment.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from bson import ObjectId

import ntt.fo as nfo
from ntt.fo.jobs import shards
from ntt.fo.jobs import states as run_states
from ntt.fo.jobs.reaper import _give_up
from ntt.fo.jobs.states import move_shard, runs_collection, shards_collection
from ntt.fo.jobs.status import sharded_runs
from ntt.fo.store import bank_root, locate_bank_file
from ntt.steps import drive


@pytest.fixture
def banked(dataset, random_config):
    nfo.mark_references(dataset.limit(3))
    nfo.build_bank(dataset, "pets", label_field="gt", config=random_config)
    yield dataset
    # runs left unfinished on purpose would be reaped by other tests' reapers (their dataset is gone by then)
    for run in runs_collection().find({"dataset_id": dataset._doc.id}, {"_id": 1}):
        shards_collection().delete_many({"run_id": run["_id"]})
        runs_collection().delete_one({"_id": run["_id"]})


def _shards(run_id) -> list[dict]:
    return list(shards_collection().find({"run_id": ObjectId(run_id)}).sort("index", 1))


def _labels(sample, field):
    dets = sample[field].detections if sample[field] is not None else []
    return [(d.label, d.confidence, tuple(np.round(d.bounding_box, 6)), d.mask.tobytes()) for d in dets]


def _run_all(ds, run_id) -> None:
    for shard in _shards(run_id):
        if shard["state"] == "queued":
            drive(nfo.workers.shard_steps(ds, str(shard["_id"]), shard["lease"]))


def _lose(shard: dict) -> None:
    """As if the attempt's worker beat last two minutes ago (server time) and froze."""
    update = {"holder": "ntt-worker://frozen/1/x", "beat_at": {"$subtract": ["$$NOW", 120_000]}}
    shards_collection().update_one({"_id": shard["_id"]}, [{"$set": update}])


def test_an_attempt_declared_lost_stops_writing_and_no_sample_is_labelled_twice(banked):
    ds = banked
    nfo.segment(ds, "pets", label_field="single")
    queued = nfo.submit_job(ds, "pets", label_field="spread", shards=1, batch_size=2)
    [shard] = _shards(queued["run"])
    zombie = nfo.workers.shard_steps(ds, str(shard["_id"]), shard["lease"])
    next(zombie)  # models loaded
    next(zombie)  # its first batch written
    first = {s.id: [d.id for d in s.spread.detections] for s in ds.exists("spread")}
    assert len(first) == 2
    _lose(_shards(queued["run"])[0])
    assert any("worker lost" in line for line in nfo.workers.reap(stale_after=60))
    [retry] = _shards(queued["run"])
    assert retry["state"] == "queued" and retry["lease"] != shard["lease"]
    drive(nfo.workers.shard_steps(ds, str(retry["_id"]), retry["lease"]))  # the retry finishes the shard
    status = nfo.get_job_status(queued["run"])
    assert status["state"] == "completed" and status["summary"]["labelled"] == queued["samples"]
    with pytest.raises(nfo.NTTFiftyOneError, match="no longer holds its shard"):
        next(zombie)  # the frozen attempt wakes up: it may not write
    ds.reload()
    assert {s.id: [d.id for d in s.spread.detections] for s in ds.select(list(first))} == first, "written once"
    for sample in nfo.forms.without_references(ds):
        assert _labels(sample, "spread") == _labels(sample, "single")
    assert shards_collection().find_one({"_id": shard["_id"]})["state"] == "done"
    assert nfo.get_job_status(queued["run"])["summary"] == status["summary"], "the record is not touched again"


def test_the_first_writer_wins_a_sample_and_the_loser_removes_its_mask_files(banked, tmp_path):
    ds = banked
    queued = nfo.submit_job(ds, "pets", label_field="spread", shards=1, mask_dir=str(tmp_path))
    [shard] = _shards(queued["run"])
    target = shard["sample_ids"][0]
    nfo.segment(ds.select(target), "pets", label_field="spread", skip_existing=True, mask_dir=str(tmp_path))
    kept = [d.id for d in ds[target].spread.detections]
    drive(nfo.workers.shard_steps(ds, str(shard["_id"]), shard["lease"]))
    ds.reload()
    assert [d.id for d in ds[target].spread.detections] == kept
    folder = tmp_path / str(ds._doc.id) / "spread"
    on_disk = {p.stem for p in folder.rglob("*.png")}
    named = set(ds.values("spread.detections.id", unwind=True))
    assert on_disk == named, "every file is a label's, every label's file is there"


def test_a_finished_shard_is_never_failed_and_a_stale_reaper_changes_nothing(banked):
    ds = banked
    queued = nfo.submit_job(ds, "pets", label_field="spread", shards=2)
    first, second = _shards(queued["run"])
    seen = dict(first)  # what a reaper read before the shard finished
    drive(nfo.workers.shard_steps(ds, str(first["_id"]), first["lease"]))
    run = runs_collection().find_one({"_id": first["run_id"]})
    assert _give_up(run, {**seen, "stale": True}, "worker lost") is None
    assert shards_collection().find_one({"_id": first["_id"]})["state"] == "done"
    assert move_shard(second["_id"], ("running",), "done", if_lease=second["lease"]) is None, "not running yet"
    with pytest.raises(ValueError, match="no shard moves"):
        move_shard(second["_id"], ("done",), "running")


def test_a_shard_whose_samples_are_all_labelled_is_done_not_failed(banked):
    ds = banked
    queued = nfo.submit_job(ds, "pets", label_field="spread", shards=1)
    [shard] = _shards(queued["run"])
    runner = nfo.workers.shard_steps(ds, str(shard["_id"]), shard["lease"])
    for _ in runner:  # every batch written; the attempt dies before it records the end
        if ds.exists("spread").count() == shard["samples"]:
            break
    _lose(_shards(queued["run"])[0])
    runs_collection().update_one({"_id": shard["run_id"]}, {"$set": {"max_attempts": 1}})
    nfo.workers.reap(stale_after=60)
    status = nfo.get_job_status(queued["run"])
    assert status["state"] == "completed" and status["summary"]["failed_shards"] == [], status
    assert status["summary"]["labelled"] == shard["samples"]


def test_reapers_during_submit_never_close_the_run_early(banked, monkeypatch):
    ds = banked
    seen = []
    queue = shards._queue_shard

    def queue_and_reap(*args, **kwargs):
        seen.append(nfo.workers.reap(stale_after=0.001))  # a reaper in a tight loop, between every two writes of submit
        queue(*args, **kwargs)
        seen.append(nfo.workers.reap(stale_after=0.001))

    monkeypatch.setattr(shards, "_queue_shard", queue_and_reap)
    queued = nfo.submit_job(ds, "pets", label_field="spread", shards=3)
    assert all(lines == [] for lines in seen), seen
    status = nfo.get_job_status(queued["run"])
    assert status["state"] == "running" and status["shards"]["queued"] == 3


def test_a_submit_that_fails_part_way_says_what_it_queued(banked, monkeypatch):
    ds = banked
    queue, calls = shards.queue_attempt, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("connection reset")
        queue(*args, **kwargs)

    monkeypatch.setattr(shards, "queue_attempt", flaky)
    with pytest.raises(nfo.NTTFiftyOneError, match="after queueing 1 of 3 shards: connection reset"):
        nfo.submit_job(ds, "pets", label_field="spread", shards=3)
    [run] = sharded_runs(ds)
    assert run["state"] == "running" and run["shards"]["queued"] == 1 and run["shards"]["failed"] == 2
    _run_all(ds, run["run"])
    status = nfo.get_job_status(run["run"])
    assert status["state"] == "failed" and status["summary"]["labelled"] == _shards(run["run"])[0]["samples"]
    failed = status["summary"]["failed_shards"]
    assert [f["shard"] for f in failed] == [1, 2] and all("never queued" in f["error"] for f in failed)
    assert sorted(i for f in failed for i in f["sample_ids"]) == sorted(
        i for s in _shards(run["run"])[1:] for i in s["sample_ids"]
    )


def test_the_job_is_resolved_once_bank_and_dataset_changes_mid_run_change_nothing(banked):
    ds = banked
    nfo.segment(ds, "pets", label_field="single")
    queued = nfo.submit_job(ds, "pets", label_field="spread", shards=3)
    run = runs_collection().find_one({"_id": ObjectId(queued["run"])})
    version = locate_bank_file(run["job"]["bank_file"])
    assert not Path(run["job"]["bank_file"]).is_absolute() and version.is_relative_to(bank_root())
    first = _shards(queued["run"])[0]
    drive(nfo.workers.shard_steps(ds, str(first["_id"]), first["lease"]))
    # mid-run: the bank taught (a new version), then renamed; the dataset renamed
    some = ds.exists("single").first().single.detections[:1]
    nfo.add_negatives(ds, "pets", "single", label_ids=[d.id for d in some])
    nfo.rename_bank(ds, "pets", "renamed")
    assert version.is_file(), "the run's bank version is kept while the run is unfinished"
    ds.name = ds.name + "-renamed"
    _run_all(ds, queued["run"])
    status = nfo.get_job_status(queued["run"])
    assert status["state"] == "completed" and status["summary"]["labelled"] == queued["samples"], status
    for sample in nfo.forms.without_references(ds):
        assert _labels(sample, "spread") == _labels(sample, "single"), "the bank as it was at submit"
    assert not version.exists(), "released once the run ended: no bank points at it any more"
    assert ds.get_field("spread").info["ntt_bank"] == "pets"


def test_thresholds_are_resolved_at_submit_and_the_device_is_the_workers(banked):
    ds = banked
    with pytest.raises(nfo.NTTFiftyOneError, match="each worker's own device"):
        nfo.submit_job(ds, "pets", label_field="spread", device="cuda:1")
    queued = nfo.submit_job(ds, "pets", label_field="spread", class_thresholds={"person": 0.9})
    job = runs_collection().find_one({"_id": ObjectId(queued["run"])})["job"]
    assert job["settings"]["segment"]["class_thresholds"] == {"person": 0.9}
    assert job["settings"]["model"]["device"] == "auto"


def test_run_states_refuse_moves_the_table_does_not_allow():
    with pytest.raises(ValueError):
        run_states.move_run(ObjectId(), ("completed",), "running")
    with pytest.raises(ValueError):
        run_states.move_shard(ObjectId(), ("failed",), "queued")


def test_a_clone_resegmented_with_overwrite_keeps_the_originals_mask_files(banked, tmp_path):
    ds = banked
    targets = nfo.forms.without_references(ds).limit(3)
    nfo.segment(targets, "pets", label_field="p", mask_dir=str(tmp_path))
    files = {d.mask_path for d in targets.values("p.detections", unwind=True)}
    assert files and all(Path(f).is_file() for f in files)
    clone = ds.clone()
    try:
        nfo.segment(
            nfo.forms.without_references(clone).limit(3),
            "pets",
            label_field="p",
            mask_dir=str(tmp_path),
            overwrite=True,
        )
        assert all(Path(f).is_file() for f in files), "the original's files are intact"
        for det in clone.values("p.detections", unwind=True):
            assert Path(det.mask_path).is_relative_to(tmp_path / str(clone._doc.id))
    finally:
        clone.delete()


def test_overwrite_clears_the_labels_of_samples_it_could_not_segment(banked, tmp_path):
    ds = banked
    targets = nfo.forms.without_references(ds).limit(3)
    nfo.segment(targets, "pets", label_field="p", mask_dir=str(tmp_path))
    broken = targets.first()
    old_files = [d.mask_path for d in broken.p.detections]
    broken.filepath = str(tmp_path / "missing.jpg")
    broken.save()
    summary = nfo.segment(targets, "pets", label_field="p", mask_dir=str(tmp_path), overwrite=True)
    assert [s["id"] for s in summary["skipped"]] == [broken.id]
    assert ds[broken.id].p is None, "no label of the previous run is left in the field"
    assert not any(Path(f).exists() for f in old_files)


def test_a_worker_refuses_a_stale_after_within_two_heartbeats():
    from ntt.fo.jobs.workers import Worker

    with pytest.raises(nfo.NTTFiftyOneError, match="more than twice --heartbeat"):
        Worker(heartbeat=5, stale_after=10)
