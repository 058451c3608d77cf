"""Killed and concurrent runs: kill -9 mid-run then resume labels every sample exactly once; two runs into
different fields of one dataset at the same time do not corrupt each other."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

import ntt.fo as nfo

WORKER = textwrap.dedent(
    """
    import sys, time
    import fiftyone as fo
    import ntt.fo as nfo

    name, field, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])

    def slow(fraction, label):
        print(label, flush=True)
        time.sleep(delay)

    nfo.segment(fo.load_dataset(name), "bank", label_field=field, batch_size=1, skip_existing=True, progress=slow)
    print("finished", flush=True)
    """
)


@pytest.fixture
def shared_dataset(dataset, random_config):
    """A persistent copy (other processes load it by name) with a bank built from 3 reference samples."""
    ds = dataset.clone(f"ntt-shared-{uuid.uuid4().hex[:8]}", persistent=True)
    nfo.mark_references(ds.limit(3))
    nfo.build_bank(ds, "bank", label_field="gt", config=random_config)
    yield ds
    ds.delete()


def _worker(ds, field, delay):
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, ds.name, field, str(delay)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )


def test_kill_9_then_resume_labels_each_sample_once(shared_dataset):
    ds = shared_dataset
    full = nfo.segment(ds, "bank", label_field="uninterrupted")
    proc = _worker(ds, "resumed", delay=1.0)
    deadline = time.time() + 240
    while ds.exists("resumed").count() < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    ds.reload()
    written = ds.exists("resumed").count()
    assert 3 <= written < 9, f"the kill should land mid-run ({written} written)"
    info = ds.get_field("resumed").info  # recorded when the run started, so the killed run has it
    assert info["ntt_bank"] == "bank" and info["ntt_bank_fingerprint"] == nfo.load_bank(ds, "bank").fingerprint
    assert info["ntt_reference_ids"] == sorted(ds.limit(3).values("id"))
    resumed = nfo.segment(ds, "bank", label_field="resumed", skip_existing=True)
    assert resumed["samples"] == 9 - written
    assert ds.exists("resumed").count() == full["labelled"] == 9
    for sample in ds.exists("uninterrupted"):
        assert len(sample.resumed.detections) == len(sample.uninterrupted.detections)
        assert [d.label for d in sample.resumed.detections] == [d.label for d in sample.uninterrupted.detections]


def test_concurrent_runs_into_different_fields(shared_dataset):
    ds = shared_dataset
    fields = ("first", "second", "third")
    procs = [_worker(ds, field, delay=0.05) for field in fields]
    outs = [p.communicate(timeout=400) for p in procs]
    for proc, (out, err) in zip(procs, outs):
        assert proc.returncode == 0, err[-2000:]
        assert "finished" in out
    ds.reload()
    assert set(fields) <= set(ds.get_field_schema()), "no run may drop another run's field"
    assert [ds.exists(f).count() for f in fields] == [9, 9, 9]
    for sample in ds.exists("first"):
        assert len(sample.first.detections) == len(sample.second.detections) == len(sample.third.detections)
    assert {ds.get_field(f).info["ntt_bank"] for f in fields} == {"bank"}
