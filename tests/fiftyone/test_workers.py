"""Three ``ntt worker`` processes share this test's FiftyOne database through ``FIFTYONE_DATABASE_URI`` and run a
sharded request over 200+ samples in 10 shards; one worker is killed with SIGKILL mid-shard (the reaper of
another re-queues its shard), another worker's child is killed as the out-of-memory killer would (its worker
fails the shard, which is re-queued with half its batch), and every sample ends up labelled once, exactly as
one process labels it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fiftyone as fo
import numpy as np
import psutil
import pytest
from bson import ObjectId
from fiftyone.operators.delegated import DelegatedOperationService

import ntt.fo as nfo
from ntt.fo.jobs.shards import shards_collection

pytestmark = pytest.mark.slow
WORKERS = 3
SHARDS = 10


@pytest.fixture
def big_dataset(dataset, coco128, random_config):
    """The 12-sample dataset plus 200 samples of COCO128's images (some twice): 209 targets after 3 references."""
    images = sorted((coco128 / "images" / "val2017").glob("*.jpg"))
    dataset.add_samples([fo.Sample(filepath=str(images[i % len(images)])) for i in range(200)])
    nfo.mark_references(dataset.limit(3))
    nfo.build_bank(dataset, "pets", label_field="gt", config=random_config)
    return dataset


def _start_worker(tmp_path: Path, index: int) -> tuple[subprocess.Popen, Path]:
    from fiftyone.core.odm.database import get_db_client

    host, port = get_db_client().address
    env = {k: v for k, v in os.environ.items() if k not in ("FIFTYONE_PRIVATE_DATABASE_PORT", "FIFTYONE_DATABASE_DIR")}
    env["FIFTYONE_DATABASE_URI"] = f"mongodb://{host}:{port}/"  # the one database every worker shares
    log = tmp_path / f"worker{index}.log"
    command = [sys.executable, "-m", "ntt.cli", "worker", "--heartbeat", "0.5", "--stale-after", "4"]
    with open(log, "w") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT), log


def _wait(condition, what: str, logs: list[Path], timeout: float = 600.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.2)
    tails = "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in logs)
    pytest.fail(f"timed out waiting for {what}\n{tails}")


def _labels(sample, field):
    dets = sample[field].detections if sample[field] is not None else []
    return [(d.label, d.confidence, tuple(np.round(d.bounding_box, 6)), d.mask.tobytes()) for d in dets]


def test_three_workers_survive_a_killed_worker_and_label_every_sample_once(big_dataset, tmp_path):
    ds = big_dataset
    nfo.segment(ds, "pets", label_field="single")  # the one-process answer
    started = [_start_worker(tmp_path, i) for i in range(WORKERS)]
    workers, logs = [w for w, _ in started], [log for _, log in started]
    try:
        queued = nfo.submit_job(ds, "pets", label_field="spread", shards=SHARDS)
        assert queued["samples"] >= 200 and queued["shards"] == SHARDS
        run = ObjectId(queued["run"])

        def mid_shard(not_on=()):  # a shard with a batch written and more to do, on a worker we can name
            for shard in shards_collection().find({"run_id": run, "state": "running"}):
                if 0 < shard.get("labelled", 0) < shard["samples"] - 2:
                    link = DelegatedOperationService().get(shard["op_id"]).run_link or ""
                    pid = int(link.split("/")[3])
                    if pid not in not_on:
                        return shard, pid
            return None

        # a worker killed outright: its heartbeat stops, another worker's reaper re-queues its shard
        victim_shard, victim_pid = _wait(mid_shard, "a shard half done", logs)
        victim = next(w for w in workers if w.pid == victim_pid)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        # a worker's child killed (as the kernel's out-of-memory killer does): its worker fails the shard, which
        # is re-queued with half its batch, and starts a new child
        oom_shard, oom_pid = _wait(lambda: mid_shard(not_on=(victim_pid,)), "another shard half done", logs)
        children = psutil.Process(oom_pid).children()  # its child, and multiprocessing's resource tracker
        [child] = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
        child.send_signal(signal.SIGKILL)

        status = _wait(
            lambda: (s := nfo.get_job_status(queued["run"]))["state"] != "running" and s, "the run's end", logs
        )
        assert status["state"] == "completed", status
        summary = status["summary"]
        assert summary["labelled"] == queued["samples"] and summary["failed_shards"] == [], summary
        again = shards_collection().find_one({"_id": victim_shard["_id"]})
        assert again["attempts"] == 2 and again["state"] == "done", "the killed shard ran again, once"
        assert "worker lost" in again["error"]
        again = shards_collection().find_one({"_id": oom_shard["_id"]})
        assert again["attempts"] == 2 and again["state"] == "done" and "SIGKILL" in again["error"], again
        assert again["batch_size"] == max(1, oom_shard["batch_used"] // 2), "retried with half the batch"
        links = {
            DelegatedOperationService().get(s["op_id"]).run_link for s in shards_collection().find({"run_id": run})
        }
        assert len(links) >= 2, f"the work was spread over workers: {links}"
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                worker.kill()

    ds.reload()
    targets = nfo.forms.without_references(ds)
    assert targets.exists("spread").count() == len(targets) == queued["samples"]
    for sample in targets:
        assert _labels(sample, "spread") == _labels(sample, "single")
    ids = ds.values("spread.detections.id", unwind=True)
    assert len(ids) == len(set(ids)) == ds.count("single.detections"), "each label written once"
