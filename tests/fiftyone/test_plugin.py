"""The plugin as FiftyOne sees it: registration, every operator executed (immediate and delegated), form
validation, and the App server listing the operators."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

import ntt.fo as nfo

REPO = Path(__file__).resolve().parents[2]
OPERATORS = yaml.safe_load((REPO / "fiftyone.yml").read_text())["operators"]
RANDOM = {"model": {"random_weights": True, "device": "cpu"}, "segment": {"pred_iou_thresh": 0.0, "nms_thresh": 1.0}}
SMOKE = {"preset": "smoke", "config": RANDOM, "delegate": False}


def _run(name, **ctx):
    import fiftyone.operators as foo

    return foo.execute_operator(f"@ntt/ntt/{name}", ctx=ctx)


def test_plugin_and_every_operator_register():
    import fiftyone.operators as foo
    import fiftyone.plugins as fop

    assert "@ntt/ntt" in [p.name for p in fop.list_plugins()]
    assert set(OPERATORS) == {
        "mark_references",
        "unmark_references",
        "build_bank",
        "segment_with_bank",
        "evaluate_predictions",
        "manage_banks",
    }
    for name in OPERATORS:
        assert foo.get_operator(f"@ntt/ntt/{name}") is not None, name
    listed = subprocess.run(
        [str(Path(sys.executable).parent / "fiftyone"), "operators", "list"],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert listed.returncode == 0, listed.stderr[-2000:]
    for name in OPERATORS:
        assert f"@ntt/ntt/{name}" in listed.stdout


def test_operators_immediate_end_to_end(dataset):
    assert _run("mark_references", view=dataset.limit(3), params={"mode": "samples"}).result == {"tagged": 3}
    label = dataset.skip(4).first().gt.detections[0]
    selected = [{"label_id": label.id, "sample_id": dataset.skip(4).first().id, "field": "gt"}]
    out = _run(
        "mark_references", dataset=dataset, selected_labels=selected, params={"mode": "labels", "label_field": "gt"}
    )
    assert out.result == {"tagged": 1} and dataset.count_label_tags()["ntt_ref"] == 1

    _run("build_bank", dataset=dataset, params={"name": "pets", "label_field": "gt", **SMOKE})
    assert nfo.list_banks(dataset) == ["pets"]
    bank = nfo.load_bank(dataset, "pets")

    _run(
        "segment_with_bank",
        dataset=dataset,
        params={"bank": "pets", "label_field": "pred", "max_instances": 5, **SMOKE},
    )
    targets = dataset.exclude(nfo.reference_ids(dataset))
    assert targets.exists("pred").count() == targets.count() == 8
    assert dataset.select(nfo.reference_ids(dataset)).exists("pred").count() == 0
    labels = set(targets.distinct("pred.detections.label"))
    assert labels and labels <= set(bank.class_names)
    assert max(len(s.pred.detections) for s in targets) <= 5

    result = _run(
        "evaluate_predictions", dataset=dataset, params={"pred_field": "pred", "gt_field": "gt", "eval_key": "ev"}
    ).result
    assert 0.0 <= result["mAP"] <= 1.0 and "ev" in dataset.list_evaluations()

    info = _run("manage_banks", dataset=dataset, params={"action": "info", "bank": "pets"}).result
    assert info["shots_per_class"] == bank.shots_per_class()
    _run("manage_banks", dataset=dataset, params={"action": "rename", "bank": "pets", "new_name": "animals"})
    assert nfo.list_banks(dataset) == ["animals"]
    _run("manage_banks", dataset=dataset, params={"action": "delete", "bank": "animals"})
    assert nfo.list_banks(dataset) == []

    _run("unmark_references", dataset=dataset, params={})
    assert nfo.reference_ids(dataset) == []


def test_build_and_segment_delegated(dataset):
    import fiftyone.operators as foo
    from fiftyone.operators.delegated import DelegatedOperationService

    nfo.mark_references(dataset.limit(2))
    svc = DelegatedOperationService()
    queued = foo.execute_operator(
        "@ntt/ntt/build_bank",
        ctx=dict(dataset=dataset, params={"name": "bg", "label_field": "gt", **SMOKE, "delegate": True}),
    )
    assert queued.delegated
    svc.execute_queued_operations(dataset_name=dataset.name)
    assert nfo.list_banks(dataset) == ["bg"]
    queued = foo.execute_operator(
        "@ntt/ntt/segment_with_bank",
        ctx=dict(dataset=dataset, params={"bank": "bg", "label_field": "bgpred", **SMOKE, "delegate": True}),
    )
    assert queued.delegated
    svc.execute_queued_operations(dataset_name=dataset.name)
    ops = svc.list_operations(dataset_name=dataset.name)
    assert {op.run_state for op in ops} == {"completed"}, [(op.operator, op.run_state, op.run_state) for op in ops]
    assert dataset.exists("bgpred").count() == 10


def _form(name, dataset, params=None):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    ctx = ExecutionContext(
        request_params={
            "dataset_name": dataset.name,
            "view": dataset.view()._serialize(),
            "params": params or {},
        }
    )
    return foo.get_operator(f"@ntt/ntt/{name}").resolve_input(ctx)


def test_forms_explain_why_they_cannot_run(dataset):
    seg = _form("segment_with_bank", dataset)
    assert seg.invalid and "no NTT bank" in seg.error_message
    build = _form("build_bank", dataset, {"label_field": "gt"})
    assert build.invalid and "No references" in build.error_message
    nfo.mark_references(dataset.limit(1))
    ok = _form("build_bank", dataset, {"label_field": "gt", "name": "good"})
    assert not ok.invalid
    bad = _form("build_bank", dataset, {"label_field": "gt", "name": "../escape"})
    assert bad.invalid and "invalid bank name" in bad.error_message


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_app_server_lists_the_operators(dataset):
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "fiftyone.server.main", "--port", str(port), "--address", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
    )
    try:
        body, deadline = "", time.time() + 90
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/plugins", timeout=5) as resp:
                    body = resp.read().decode()
                break
            except OSError:
                time.sleep(1)
        assert body, "the App server did not answer on loopback"
        plugins = {p["name"]: p for p in json.loads(body)["plugins"]}
        assert plugins["@ntt/ntt"]["operators"] == OPERATORS
        assert plugins["@ntt/ntt"]["has_py"] is True
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_missing_dependency_is_explained_in_the_form(dataset, monkeypatch):
    monkeypatch.setitem(sys.modules, "sam2", None)  # `import sam2` now fails, as when it is not installed
    form = _form("segment_with_bank", dataset)
    assert form.invalid and "not usable here" in form.error_message and "sam2" in form.error_message
