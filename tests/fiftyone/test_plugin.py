"""The plugin as FiftyOne sees it: registration, every operator executed (immediate, streamed like the App, and
delegated), form validation, clear SDK errors, and the App server listing the operators.

Model runs use tiny random-weight models on the CPU; references are sample 5 of the fixture (person, skis)
plus, where noted, the sports ball of sample 7, so banks stay small and fast to build.
"""

from __future__ import annotations

import asyncio
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
MANIFEST = yaml.safe_load((REPO / "fiftyone.yml").read_text())
OPERATORS = MANIFEST["operators"]
PLUGIN = "@ntt/ntt"
RANDOM = {"model": {"random_weights": True, "device": "cpu"}, "segment": {"pred_iou_thresh": 0.0, "nms_thresh": 1.0}}
SMOKE = {"preset": "smoke", "config": RANDOM}


def _request(view, params, **extra):
    return dict(dataset_name=view._dataset.name, view=view.view()._serialize(), params=params, **extra)


def _run(name, **ctx):
    """``execute_operator``: immediate (generators exhausted) unless delegation is asked for; raises on error."""
    import fiftyone.operators as foo

    return foo.execute_operator(f"{PLUGIN}/{name}", ctx=ctx)


def _result(name, view, params):
    """The ``ExecutionResult`` of an immediate run, without raising: what the App is sent."""
    from fiftyone.operators.executor import execute_or_delegate_operator

    return asyncio.run(execute_or_delegate_operator(f"{PLUGIN}/{name}", _request(view, params), exhaust=True))


def _stream(name, view, params, **extra):
    """An immediate run as the App's generator endpoint does it: ``[(operator, params)]`` of the messages
    yielded, and the exception that ended the stream (or None)."""
    from fiftyone.operators.executor import execute_or_delegate_operator

    result = asyncio.run(execute_or_delegate_operator(f"{PLUGIN}/{name}", _request(view, params, **extra)))
    result.raise_exceptions()
    assert result.is_generator
    messages = []
    try:
        for message in result.result:
            messages.append((message.body.operator_uri, message.body.params))
    except Exception as err:  # noqa: BLE001 - returned for the test to inspect
        return messages, err
    return messages, None


def _form(name, view, params=None, **extra):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    ctx = ExecutionContext(request_params=_request(view, params or {}, **extra))
    return foo.get_operator(f"{PLUGIN}/{name}").resolve_input(ctx)


def _options(name, view, params=None):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    ctx = ExecutionContext(request_params=_request(view, params or {}))
    return foo.get_operator(f"{PLUGIN}/{name}").resolve_execution_options(ctx)


def _progress(messages):
    return [params for uri, params in messages if uri == "set_progress"]


def test_manifest_registration_and_cli_listing():
    import fiftyone.operators as foo
    import fiftyone.plugins as fop
    from fiftyone.plugins.context import build_plugin_contexts

    assert {k: MANIFEST[k] for k in ("name", "type", "version", "license")} == {
        "name": PLUGIN,
        "type": "plugin",
        "version": "0.1.0",
        "license": "Apache-2.0",
    }
    assert MANIFEST["fiftyone"] == {"version": ">=1.0"}
    assert PLUGIN in [p.name for p in fop.list_plugins()]
    [context] = [c for c in build_plugin_contexts() if c.name == PLUGIN]
    assert context.errors == []
    # every registered operator is listed (FiftyOne silently drops unlisted ones) and vice versa
    assert sorted(op.name for op in context.instances) == sorted(OPERATORS)
    for name in OPERATORS:
        assert foo.get_operator(f"{PLUGIN}/{name}").uri == f"{PLUGIN}/{name}"
    for name in ("build_bank", "segment_with_bank"):
        config = foo.get_operator(f"{PLUGIN}/{name}").config
        assert config.dynamic and config.execute_as_generator
        assert config.allow_immediate_execution and config.allow_delegated_execution

    listed = subprocess.run(
        [str(Path(sys.executable).parent / "fiftyone"), "operators", "list", "--include-unlisted"],  # the old runs
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert listed.returncode == 0, listed.stderr[-2000:]
    for name in OPERATORS:
        assert f"{PLUGIN}/{name}" in listed.stdout


def test_mark_and_unmark_references(dataset):
    chosen = dataset.limit(3)
    out = _run("mark_references", view=chosen, params={"mode": "samples"})
    assert out.result == {"tagged": 3, "tag": "ntt_ref"}
    assert sorted(dataset.match_tags("ntt_ref").values("id")) == sorted(chosen.values("id"))

    sample = dataset.skip(7).first()
    ball = next(d for d in sample.gt.detections if d.label == "sports ball")
    selected = [{"label_id": ball.id, "sample_id": sample.id, "field": "gt"}]
    out = _run("mark_references", dataset=dataset, selected_labels=selected, params={"mode": "labels", "tag": "pick"})
    assert out.result == {"tagged": 1, "tag": "pick"}
    assert dataset.count_label_tags() == {"pick": 1}
    assert dataset.select_labels(tags="pick").values("gt.detections.id", unwind=True) == [ball.id]

    out = _run("unmark_references", view=dataset.limit(2), params={})
    assert out.result == {"unmarked_samples": 2, "tag": "ntt_ref"}
    assert dataset.match_tags("ntt_ref").values("id") == [chosen.values("id")[2]]
    assert dataset.count_label_tags() == {"pick": 1}  # another tag: untouched


def test_operators_immediate_end_to_end(dataset):
    from fiftyone.operators.executor import ExecutionError

    ref, ball_sample = dataset.skip(5).first(), dataset.skip(7).first()
    ball = next(d for d in ball_sample.gt.detections if d.label == "sports ball")
    _run("mark_references", view=dataset.select(ref.id), params={})
    _run(
        "mark_references",
        dataset=dataset,
        params={"mode": "labels", "label_field": "gt"},
        selected_labels=[{"label_id": ball.id, "sample_id": ball_sample.id, "field": "gt"}],
    )

    # build, streamed as in the App: live progress, then reload, a notification and the summary
    messages, error = _stream("build_bank", dataset, {"bank": "pets", "label_field": "gt", **SMOKE})
    assert error is None
    fractions = [p["progress"] for p in _progress(messages)]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {p["label"] for p in _progress(messages)} == {"Encoding references"}
    assert [uri for uri, _ in messages[len(fractions) :]] == ["reload_dataset", "notify", "show_output"]
    bank = nfo.load_bank(dataset, "pets")
    assert nfo.list_banks(dataset) == ["pets"] and set(bank.class_names) == {"person", "skis", "sports ball"}
    summary = messages[-1][1]["results"]
    assert summary["shots"] == len(bank.shots) == 3 and summary["shots_per_class"] == bank.shots_per_class()

    # segment two targets, streamed: stage-labelled progress per batch
    targets = dataset.exclude([ref.id, ball_sample.id])
    first = targets.limit(2)
    first_ids = first.values("id")
    params = {"bank": "pets", "label_field": "pred", "max_instances": 5, "batch_size": 1, **SMOKE}
    messages, error = _stream("segment_with_bank", first, params)
    assert error is None
    assert [p["label"] for p in _progress(messages)] == [
        "Loading models",
        "Segmenting 1/2 samples",
        "Segmenting 2/2 samples",
    ]
    shown = [params["fields"] for uri, params in messages if uri.endswith("set_active_fields")]
    assert shown == [["pred"]], "the new field is made visible after the reload"
    summary = messages[-1][1]["results"]
    assert sorted(dataset.exists("pred").values("id")) == sorted(first_ids)
    dets = [d for s in first for d in s.pred.detections]
    assert summary["labelled"] == 2 and summary["instances"] == len(dets) > 0
    assert {d.label for d in dets} <= set(bank.class_names)
    assert all(d.mask is not None and 0.0 <= d.confidence <= 1.0 for d in dets)
    assert max(len(s.pred.detections) for s in first) <= 5
    assert dataset.get_field("pred").info["ntt_bank"] == "pets"

    # existing labels block a second run unless resuming; resuming labels only the new sample
    before = {s.id: [d.id for d in s.pred.detections] for s in first}
    with pytest.raises(ExecutionError, match="already has labels"):
        _run("segment_with_bank", view=targets.limit(3), params={**params})
    _run("segment_with_bank", view=targets.limit(3), params={**params, "skip_existing": True})
    assert dataset.exists("pred").count() == 3
    assert {s.id: [d.id for d in s.pred.detections] for s in first} == before
    # the bank's own reference field is never an output
    form = _form("segment_with_bank", dataset, {"bank": "pets", "label_field": "gt"})
    assert form.invalid and "reference labels" in form.error_message

    result = _run(
        "evaluate_predictions", dataset=dataset, params={"pred_field": "pred", "gt_field": "gt", "eval_key": "ev"}
    ).result
    assert 0.0 <= result["mAP"] <= 1.0 and "ev" in dataset.list_evaluations()
    assert result["report"]["person"]["support"] > 0 and "| person |" in result["summary"]
    assert dataset[ref.id]["ev_tp"] is None and dataset[first_ids[0]]["ev_tp"] is not None  # references left out

    info = _run("bank_info", dataset=dataset, params={"bank": "pets"}).result
    assert info["banks"] == ["pets"] and info["num_shots"] == 3
    assert info["shots_per_class"] == bank.shots_per_class() and info["label_field"] == "gt"
    extra = dataset.skip(8).first()
    nfo.mark_references(dataset, "gt", label_ids=[extra.gt.detections[0].id])
    messages, error = _stream("add_references", dataset, {"bank": "pets"})
    assert error is None and any(uri == "set_progress" for uri, _ in messages)  # encoding reports progress
    added = messages[-1][1]["results"]
    assert added["num_shots"] == 4 and nfo.load_bank(dataset, "pets").shots[:3] == bank.shots
    _run("rename_bank", dataset=dataset, params={"bank": "pets", "new_name": "animals"})
    assert nfo.list_banks(dataset) == ["animals"]

    # an SDK error is one clear line in the form (which blocks the run), not a traceback
    path = Path(nfo.get_bank_info(dataset, "animals")["bank_path"])
    path.rename(path.with_suffix(".moved"))
    form = _form("add_references", dataset, {"bank": "animals"})
    assert form.invalid and form.error_message.startswith("Cannot run: bank 'animals': its file")
    with pytest.raises(ExecutionError, match="bank 'animals': its file .* is missing; rebuild"):
        _run("add_references", dataset=dataset, params={"bank": "animals"})
    path.with_suffix(".moved").rename(path)
    _run("delete_bank", dataset=dataset, params={"bank": "animals"})
    assert nfo.list_banks(dataset) == [] and not path.exists()

    assert _run("unmark_references", dataset=dataset, params={}).result["unmarked_samples"] == 3
    assert nfo.forms.reference_ids(dataset) == [] and dataset.count_label_tags() == {}


def test_build_and_segment_delegated(dataset, monkeypatch):
    from fiftyone.operators.delegated import DelegatedOperationService

    reported = []
    set_progress = DelegatedOperationService.set_progress

    def record(self, doc_id, progress):
        reported.append((progress.progress, progress.label))
        return set_progress(self, doc_id, progress)

    monkeypatch.setattr(DelegatedOperationService, "set_progress", record)
    service = DelegatedOperationService()
    ref = dataset.skip(5).first()
    nfo.mark_references(dataset.select(ref.id))

    queued = _run(
        "build_bank", dataset=dataset, request_delegation=True, params={"bank": "bg", "label_field": "gt", **SMOKE}
    )
    assert queued.delegated and nfo.list_banks(dataset) == []  # queued, not run
    service.execute_queued_operations(dataset_name=dataset.name)
    [op] = service.list_operations(dataset_name=dataset.name, operator=f"{PLUGIN}/build_bank")
    assert op.run_state == "completed", op.result and op.result.error
    assert op.result.result["bank"] == "bg" and op.result.result["shots"] == 2
    assert nfo.list_banks(dataset) == ["bg"] and reported[-1] == (1.0, "Encoding references")

    reported.clear()
    view = dataset.exclude(ref.id).limit(2)
    params = {"bank": "bg", "label_field": "bgpred", "delegate": True, **SMOKE}  # forced by the delegate param
    queued = _run("segment_with_bank", view=view, params=params)
    assert queued.delegated and "bgpred" not in dataset.get_field_schema()
    service.execute_queued_operations(dataset_name=dataset.name)
    [op] = service.list_operations(dataset_name=dataset.name, operator=f"{PLUGIN}/segment_with_bank")
    assert op.run_state == "completed", op.result and op.result.error
    assert op.result.result["labelled"] == 2 and op.result.result["label_field"] == "bgpred"
    assert sorted(dataset.exists("bgpred").values("id")) == sorted(view.values("id"))  # only the queued view
    labels = set(dataset.distinct("bgpred.detections.label"))
    assert labels and labels <= {"person", "skis"}
    assert [label for _, label in reported] == ["Loading models", "Segmenting 1/2 samples", "Segmenting 2/2 samples"]


def test_closing_an_immediate_run_stops_it(dataset):
    """When the App stops reading (prompt closed), closing the operator's generator closes the SDK's run at the
    step it is at: the batches written so far stay, no other batch runs."""
    from fiftyone.operators.executor import execute_or_delegate_operator

    ref = dataset.skip(5).first()
    nfo.mark_references(dataset.select(ref.id))
    nfo.build_bank(dataset, "stop", label_field="gt", preset="smoke", config=RANDOM)
    view = dataset.exclude(ref.id).limit(3)
    params = {"bank": "stop", "label_field": "pred", "batch_size": 1, **SMOKE}
    result = asyncio.run(execute_or_delegate_operator(f"{PLUGIN}/segment_with_bank", _request(view, params)))
    messages = iter(result.result)
    while next(messages).body.params.get("label") != "Segmenting 1/3 samples":
        pass
    messages.close()
    assert dataset.exists("pred").count() == 1  # the first batch, written before its step; nothing after


def test_large_runs_default_to_background(dataset):
    import fiftyone as fo

    small = _options("segment_with_bank", dataset)
    assert small.allow_immediate_execution and small.allow_delegated_execution
    assert not small.default_choice_to_delegated
    big = fo.Dataset()
    try:
        big.add_samples([fo.Sample(filepath=f"/nonexistent/{i}.jpg") for i in range(25)])
        assert _options("segment_with_bank", big).default_choice_to_delegated
        assert not _options("segment_with_bank", big.limit(20)).default_choice_to_delegated
    finally:
        big.delete()
    forced = _options("segment_with_bank", dataset, {"delegate": True})
    assert forced.allow_delegated_execution and not forced.allow_immediate_execution


def test_run_notice_tells_the_truth_about_scheduling(dataset, monkeypatch):
    """The notice says what Execute does here and whether Schedule can work: without legacy orchestrators the
    open-source App cannot schedule, so nothing defaults to it and the notice says how to turn it on."""
    import fiftyone as fo

    nfo.mark_references(dataset.limit(1))
    params = {"label_field": "gt", "bank": "b", "random_weights": True}

    def notice():
        form = _form("build_bank", dataset, params)
        assert not form.invalid, form.error_message
        return form.type.properties["delegation"].view.description

    assert "Execute runs it now" in notice() and "`fiftyone delegated launch -m` worker" in notice()
    monkeypatch.setattr(fo.config, "allow_legacy_orchestrators", False)
    assert "Schedule is off in this App" in notice() and "FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS=true" in notice()
    big = fo.Dataset()
    try:
        big.add_samples([fo.Sample(filepath=f"/nonexistent/{i}.jpg") for i in range(25)])
        assert not _options("segment_with_bank", big).default_choice_to_delegated
    finally:
        big.delete()


def test_forms_explain_why_they_cannot_run(dataset):
    import fiftyone as fo
    from fiftyone.operators.executor import ExecutionError

    for name in ("segment_with_bank", "bank_info", "rename_bank", "delete_bank", "add_references"):
        form = _form(name, dataset)
        assert form.invalid and "no NTT bank" in form.error_message, name
    assert "Needs a predictions field" in _form("evaluate_predictions", dataset).error_message  # no bank needed
    with pytest.raises(ExecutionError, match="no NTT bank"):  # an invalid form blocks execution too
        _run("segment_with_bank", dataset=dataset, params={"bank": "x", **SMOKE})
    assert "No references" in _form("build_bank", dataset, {"label_field": "gt"}).error_message
    assert "No labels selected" in _form("mark_references", dataset, {"mode": "labels"}).error_message
    assert "nothing to unmark" in _form("unmark_references", dataset).error_message

    nfo.mark_references(dataset.limit(1))
    ok = _form("build_bank", dataset, {"label_field": "gt", "bank": "good", "random_weights": True})
    assert not ok.invalid
    dataset.add_sample_field("weather", fo.EmbeddedDocumentField, embedded_doc_type=fo.Classification)
    assert ok.type.properties["label_field"].type.values == ["gt"]  # only Detections fields are offered
    assert (
        "holds Classification, not Detections" in _form("build_bank", dataset, {"label_field": "weather"}).error_message
    )
    problems = {
        "invalid bank name": {"bank": "../escape"},
        "unknown ModelConfig fields": {"config": {"model": {"nope": 1}}},
        "Invalid settings": {"advanced": True, "config_json": "{oops"},
        "unknown device 'tpu'": {"device": "tpu"},
        "has no field 'nope'": {"label_field": "nope"},
    }
    for message, params in problems.items():
        form = _form("build_bank", dataset, {"label_field": "gt", **params})
        assert form.invalid and message in form.error_message, message


def test_sdk_errors_surface_as_clear_messages(dataset, tmp_path, monkeypatch):
    """A checkpoint that passes the form (it exists) but cannot be read fails the run with the SDK's message."""
    nfo.mark_references(dataset.skip(5).limit(1))
    monkeypatch.setenv("NTT_CHECKPOINT_DIR", str(tmp_path))
    (tmp_path / "dinov2_vits14_pretrain.pth").write_bytes(b"not a checkpoint")
    real = {"bank": "real", "label_field": "gt", "preset": "smoke", "config": {"model": {"device": "cpu"}}}
    messages, error = _stream("build_bank", dataset, real)
    assert type(error).__name__ == "OperatorFailure"
    assert str(error).startswith("Unusable checkpoint: ") and "dinov2_vits14_pretrain.pth" in str(error)
    assert messages[-1] == ("notify", {"message": str(error), "variant": "error"})
    assert _result("build_bank", dataset, real).error_message == str(error)
    assert nfo.list_banks(dataset) == []


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_app_server_lists_the_operators():
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "fiftyone.server.main", "--port", str(port), "--address", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ),
    )
    try:
        body, deadline = "", time.monotonic() + 60
        while not body and time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/plugins", timeout=5) as resp:
                    body = resp.read().decode()
            except OSError:
                time.sleep(0.5)
        assert body, f"the App server did not answer on loopback (exit code {server.poll()})"
        plugins = {p["name"]: p for p in json.loads(body)["plugins"]}
        assert plugins[PLUGIN]["operators"] == OPERATORS and plugins[PLUGIN]["has_py"] is True
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_missing_dependency_is_explained_in_the_form(dataset, monkeypatch):
    monkeypatch.setitem(sys.modules, "sam2", None)  # `import sam2` now fails, as when it is not installed
    for name in OPERATORS:
        form = _form(name, dataset)
        assert form.invalid and "not usable here" in form.error_message and "sam2" in form.error_message, name


def test_forms_do_not_wait_for_the_model_packages():
    """Opening a form imports ntt.fo and checks the dependencies; neither may import timm, sam2 or torchvision
    (seconds of imports before the first form shows)."""
    code = (
        "import sys, fiftyone\n"
        "import ntt.fo\n"
        "from plugin.settings import dependency_problem\n"
        "assert dependency_problem() is None\n"
        "print(sorted(m for m in ('timm', 'sam2', 'torchvision') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
