"""Fault injection for sharded runs, in real processes against a real, dedicated ``mongod`` (faults.py): a worker
frozen past ``stale_after``, workers under skewed clocks, the database stopped mid-run, reapers racing through a
slow link (also while ``submit`` is still queueing), the bank and the dataset changed mid-run, and a clone
re-segmented into a shared ``mask_dir``.

Every scenario starts from a copy of one template (12 targets, bank ``b`` of tiny random models, the
one-process answer in ``single``), runs ``ntt worker`` processes (``--heartbeat 1 --stale-after 6``) over a run
submitted into ``spread`` with MongoDB's profiler on, and ends with the same checks (``Scenario.check``): every
target written exactly once (counted by the profiler) with the one-process labels; the run's record exact; no
shard failed whose samples are all labelled; every worker alive, no traceback in their logs.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from faults import STALE_AFTER, DelayProxy, Mongod, RunWatch, Scenario, Template, require_faketime

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A dedicated mongod and the template (made once: the dataset, the bank, the one-process answer)."""
    root = tmp_path_factory.mktemp("faults")
    mongod = Mongod(root / "mongod")
    mongod.start()
    try:
        yield Template(root, mongod)
    finally:
        mongod.stop()


@pytest.fixture
def scenario(world, tmp_path):
    started = time.monotonic()
    scenario = world.scenario(tmp_path / "scenario")
    yield scenario
    scenario.close()
    print(f"scenario took {time.monotonic() - started:.1f} s")


def _mid_shard(scenario: Scenario, run_id: str, need_worker: bool = True):
    """A running shard with a batch written and more to do (and the worker running it)."""
    if scenario.run_ended(run_id):
        pytest.fail(f"the run ended before a shard was caught half done\n{scenario.describe(run_id)}")
    for shard in scenario.shards(run_id):
        if shard["state"] == "running" and 0 < shard.get("labelled", 0) < shard["samples"]:
            worker = scenario.worker_of(shard)
            if worker is not None or not need_worker:
                return shard, worker
    return None


def _finish(scenario: Scenario, queued: dict, timeout: float = 150.0) -> dict:
    return scenario.wait(lambda: scenario.run_ended(queued["run"]), "the run's end", timeout=timeout)


def _once_each(scenario: Scenario, queued: dict) -> None:
    """No shard ran more than once (no live worker's shard was taken from it)."""
    again = [(s["index"], s.get("attempts"), s.get("error")) for s in scenario.shards(queued["run"])]
    again = [a for a in again if a[1] != 1]
    assert not again, f"shards run more than once (index, attempts, error): {again}\n{scenario.logs()}"


def test_no_fault_two_workers_label_every_sample_once(scenario):
    """The harness itself: two workers, no fault; the checks pass and each sample is written once."""
    scenario.start_worker("w1")
    scenario.start_worker("w2")
    scenario.profile()
    queued = scenario.driver("submit", "ds", "--shards", 4)
    _finish(scenario, queued)
    found = scenario.check("ds", queued)
    _once_each(scenario, queued)
    # the measure itself: one more write of a sample's labels (the same values) is counted
    again = found["compared"]["target_ids"][0]
    scenario.driver("rewrite", "ds", "spread", again)
    assert scenario.label_writes("ds", "spread")[again] == 2, scenario.profile_entries("ds", again)


def test_worker_frozen_past_stale_after_then_resumed(scenario):
    """A worker and its child frozen (SIGSTOP, as a paused VM) mid-shard for stale_after + 4 s (longer if the
    other worker has not taken the shard over by then): the other worker takes the shard over; the frozen one,
    resumed, writes nothing more and lives on."""
    # one shard of 12 samples (6 batches): the other worker is idle, so it reaps and takes over while the
    # first is frozen
    scenario.start_worker("w1")
    scenario.start_worker("w2")
    scenario.profile()
    queued = scenario.driver("submit", "ds", "--shards", 1)
    shard, frozen = scenario.wait(lambda: _mid_shard(scenario, queued["run"]), "a shard half done")
    other = next(w for w in scenario.workers if w is not frozen)

    def taken_over():
        now = scenario.shards(queued["run"])[0]
        return now.get("attempts", 0) >= 2 and now["state"] in ("running", "done") and scenario.worker_of(now) is other

    frozen.signal_tree(signal.SIGSTOP)
    try:
        time.sleep(STALE_AFTER + 4)
        took = taken_over() or scenario.wait(taken_over, "the other worker's takeover", timeout=4 * STALE_AFTER)
    finally:
        frozen.signal_tree(signal.SIGCONT)
    scenario.mark("the frozen worker resumed")
    assert took
    _finish(scenario, queued)
    scenario.check("ds", queued)
    final = scenario.shards(queued["run"])[0]
    assert final["attempts"] == 2, f"the shard ran twice: on the frozen worker, then on the other: {final}"
    assert scenario.worker_of(final) is other, "the other worker finished the shard"


def test_workers_under_skewed_clocks(scenario):
    """One worker's clock 2 minutes behind, the other's 2 minutes ahead (faketime): no live worker is taken
    for lost, no shard runs twice."""
    require_faketime()
    scenario.start_worker("behind", faketime="-120s")
    scenario.start_worker("ahead", faketime="+120s")
    scenario.profile()
    queued = scenario.driver("submit", "ds", "--shards", 4)
    _finish(scenario, queued)
    scenario.check("ds", queued)
    _once_each(scenario, queued)
    ran = {scenario.worker_of(s).name for s in scenario.shards(queued["run"]) if scenario.worker_of(s)}
    assert ran == {"behind", "ahead"}, f"both skewed workers ran shards (each reaping the other's): {ran}"
    for worker, offset in zip(scenario.workers, ("-120s", "+120s")):
        pythons = [p for p in worker.tree() if "python" in p.name()]
        assert len(pythons) >= 2, f"{worker.name}: the worker and its child: {pythons}"
        for proc in pythons:  # the child inherits the skew (LD_PRELOAD and FAKETIME)
            env = proc.environ()
            assert "faketime" in env.get("LD_PRELOAD", "") and env.get("FAKETIME") == offset, (proc, env)


def test_database_stopped_for_30s_mid_run(scenario):
    """mongod stopped for 30 s after some batches are written, then started again (same port and data): the
    workers survive and the run completes."""
    scenario.start_worker("w1")
    scenario.start_worker("w2")
    scenario.profile()
    queued = scenario.driver("submit", "ds", "--shards", 2)  # 6 samples each: 3 batches
    scenario.wait(lambda: _mid_shard(scenario, queued["run"], need_worker=False), "some batches written")
    scenario.client.close()
    scenario.mongod.stop()
    try:
        time.sleep(30)
    finally:
        scenario.mongod.start("--profile", "2")  # the profiler's level is not kept across restarts
        scenario.client = scenario.mongod.client()
    for worker in scenario.workers:
        assert worker.alive(), f"worker {worker.name} exited while the database was down\n{scenario.logs()}"
    _finish(scenario, queued)
    scenario.check("ds", queued)


@pytest.mark.parametrize("during_submit", [False, True], ids=["after-submit", "during-submit"])
def test_three_reapers_in_a_tight_loop_over_a_slow_link(scenario, during_submit):
    """One-sample shards (12); three extra processes reap in a tight loop through a proxy that delays every chunk
    by 20 ms; with ``during_submit`` they loop already while ``submit`` (through the proxy too) is queueing.
    No shard runs twice, and the run never reads completed while shards remain (the checks watch that)."""
    proxy = DelayProxy(scenario.mongod.port, delay=0.02)
    stop = scenario.root / "stop-reapers"

    def reapers():
        found = [
            scenario.start_driver(
                f"reaper{i}", "reap-loop", "--stale-after", STALE_AFTER, "--stop-file", stop, uri=proxy.uri
            )
            for i in range(3)
        ]
        scenario.wait(lambda: all("looping" in r.text() for r in found), "the reapers' first pass", timeout=120)
        return found

    try:
        scenario.start_worker("w1")
        scenario.start_worker("w2")
        scenario.profile()
        if during_submit:
            loops = reapers()
            queued = scenario.driver("submit", "ds", "--shard-size", 1, uri=proxy.uri)
        else:
            queued = scenario.driver("submit", "ds", "--shard-size", 1)
            loops = reapers()
        assert queued["shards"] == queued["samples"], "one shard per sample"
        scenario.mark(f"submit queued {queued['shards']} shards in {queued['submit_s']} s")
        _finish(scenario, queued)
        stop.touch()
        for loop in loops:
            loop.process.wait(timeout=60)
        for loop in loops:
            assert loop.process.returncode == 0 and "Traceback" not in loop.text(), loop.text()[-3000:]
        scenario.check("ds", queued)
        _once_each(scenario, queued)
    finally:
        stop.touch()
        proxy.close()


@pytest.mark.parametrize("change", ["rename-bank", "teach", "rename-dataset"])
def test_bank_or_dataset_changed_mid_run(scenario, change):
    """The bank renamed, the bank taught (negatives added: a new version) or the dataset renamed while shards
    are still queued: the run completes with the bank version it was submitted with (``spread`` equals
    ``single``, made with that version) and the workers survive."""
    scenario.start_worker("w1")
    scenario.start_worker("w2")
    scenario.profile()
    queued = scenario.driver("submit", "ds", "--shard-size", 1)  # 12 shards: some still queued after the change
    scenario.wait(
        lambda: any(s["state"] == "running" for s in scenario.shards(queued["run"])), "a shard running", timeout=120
    )
    name = "ds"
    if change == "rename-bank":
        scenario.driver("rename-bank", "ds", "b", "b2")
    elif change == "teach":
        scenario.driver("teach", "ds")
    else:
        scenario.driver("rename-dataset", "ds", "ds-renamed")
        name = "ds-renamed"
    states = [s["state"] for s in scenario.shards(queued["run"])]
    assert "queued" in states, f"the change came too late to test anything: shards {states}"
    _finish(scenario, queued)
    scenario.check(name, queued)
    if change == "teach":  # the taught bank labels differently: the check tells the two versions apart
        scenario.driver("segment", "ds", "after")
        assert scenario.driver("check", "ds", "after", "single")["different"], "teaching changed no label"


def test_clone_resegmented_with_overwrite_into_a_shared_mask_dir(scenario):
    """The original segmented with ``mask_dir=D`` (one process), cloned, the clone re-segmented (sharded) with
    ``overwrite=True`` and the same ``mask_dir``: the clone passes the checks, and every mask file the
    original's labels name still exists and holds the same mask."""
    masks = scenario.root / "masks"
    scenario.start_worker("w1")
    scenario.start_worker("w2")
    scenario.driver("segment", "ds", "spread", "--mask-dir", masks)
    before = scenario.driver("masks", "ds", "spread")["masks"]
    assert before and all(m["digest"] for m in before.values()), "the original's masks are files"
    cloned = scenario.driver("clone", "ds", "ds-clone")
    scenario.mark(f"the clone kept the sample ids: {cloned['same_sample_ids']}")
    scenario.profile()
    queued = scenario.driver("submit", "ds-clone", "--shards", 4, "--overwrite", "--mask-dir", masks)
    _finish(scenario, queued)
    scenario.check("ds-clone", queued)
    after = scenario.driver("masks", "ds", "spread")["masks"]
    lost = {label: m["path"] for label, m in before.items() if after.get(label, {}).get("digest") != m["digest"]}
    assert not lost, (
        f"{len(lost)} of the original's {len(before)} mask files gone or changed (clone kept sample ids: "
        f"{cloned['same_sample_ids']}): {list(lost.values())[:3]}"
    )
    shared = {Path(m["path"]).parent for m in before.values()} & {
        Path(m["path"]).parent for m in scenario.driver("masks", "ds-clone", "spread")["masks"].values()
    }
    scenario.mark(f"mask folders the original and the clone share: {len(shared)}")
    original = scenario.driver("check", "ds", "spread", "single")
    assert not original["different"] and not original["unlabelled"], "the original's labels read back as before"


def test_mongod_restarts_on_the_same_port(tmp_path):
    """The harness: a stopped mongod starts again on its port with its data."""
    mongod = Mongod(tmp_path / "m")
    mongod.start()
    try:
        with mongod.client() as client:
            client["x"]["y"].insert_one({"a": 1})
        port = mongod.port
        mongod.stop()
        mongod.start()
        assert mongod.port == port
        with mongod.client() as client:
            assert client["x"]["y"].count_documents({"a": 1}) == 1
    finally:
        mongod.stop()


def test_delay_proxy_delays_and_passes_through(tmp_path):
    """The harness: the proxy reaches mongod and adds latency."""
    mongod = Mongod(tmp_path / "m")
    mongod.start()
    proxy = DelayProxy(mongod.port, delay=0.05)
    try:
        import pymongo

        with pymongo.MongoClient(proxy.uri, serverSelectionTimeoutMS=10000) as client:
            client.admin.command("ping")
            started = time.monotonic()
            for _ in range(5):
                client.admin.command("ping")
            assert time.monotonic() - started >= 5 * 0.1, "each round trip holds two chunks 50 ms each"
    finally:
        proxy.close()
        mongod.stop()


def test_run_watch_sees_a_run_completed_while_shards_remain(tmp_path):
    """The harness: the watch flags a run that reads completed while a shard is queued, or not yet recorded."""
    from bson import ObjectId

    mongod = Mongod(tmp_path / "m")
    mongod.start()
    try:
        with mongod.client() as client:
            db = client["w"]
            ok, early, short = ObjectId(), ObjectId(), ObjectId()
            db["ntt_runs"].insert_many([{"_id": run, "state": "completed", "shards": 2} for run in (ok, early, short)])
            db["ntt_shards"].insert_many(
                [{"run_id": ok, "index": i, "state": "done"} for i in range(2)]
                + [{"run_id": early, "index": 0, "state": "done"}, {"run_id": early, "index": 1, "state": "queued"}]
                + [{"run_id": short, "index": 0, "state": "done"}]
            )
            watch = RunWatch(mongod, "w")
            time.sleep(0.5)
            found = watch.close()
        flagged = {line.split()[1] for line in found}
        assert flagged == {str(early), str(short)}, found
    finally:
        mongod.stop()
