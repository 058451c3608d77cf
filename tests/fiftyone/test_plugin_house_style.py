"""The plugin in FiftyOne's house style: operators callable from Python (``op(dataset, ..., delegate=True)``), buttons
in the samples grid, one operator per bank action with a delete warning, the icon on every operator, and the
requirements.txt and LICENSE that ``fiftyone plugins`` and the manifest expect."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_plugin import OPERATORS, PLUGIN, RANDOM, _form, _request, _run

import ntt.fo as nfo

REPO = Path(__file__).resolve().parents[2]


def _operator(name):
    import fiftyone.operators as foo

    return foo.get_operator(f"{PLUGIN}/{name}")


def _placement(name, view):
    from fiftyone.operators.executor import ExecutionContext

    return _operator(name).resolve_placement(ExecutionContext(request_params=_request(view, {})))


def test_blocked_forms_keep_their_title_and_say_their_reason_once(dataset):
    form = _form("segment_with_bank", dataset)  # no bank yet
    assert form.invalid and form.view.label == "NTT: segment with bank: cannot run"
    shown = [p.view.label for p in form.type.properties.values() if p.view is not None and hasattr(p.view, "label")]
    assert not any(label and "bank" in str(label).lower() and "no " in str(label).lower() for label in shown)
    assert form.error_message.count("no NTT bank") == 1


def test_every_operator_has_the_icon_and_the_main_ones_a_grid_button(dataset):
    import fiftyone as fo

    for name in OPERATORS:
        assert _operator(name).config.icon == "/assets/icon.svg", name
    for name in ("mark_references", "segment_with_bank"):
        button = _placement(name, dataset).to_json()
        assert button["place"] == "samples-grid-actions", name
        assert button["view"]["prompt"] and button["view"]["icon"] == "/assets/icon-button.svg", name
        assert button["view"]["label"] == _operator(name).config.label, name
    assert _placement("build_bank", dataset) is None
    button_icon = (REPO / "assets" / "icon-button.svg").read_text()
    assert "#ffffff" in button_icon and "#ff6d04" not in button_icon  # the grid draws buttons on the App's orange
    video = fo.Dataset()
    try:
        video.add_sample(fo.Sample(filepath="/nonexistent/clip.mp4"))
        assert _placement("segment_with_bank", video) is None, "NTT segments images: no button elsewhere"
    finally:
        video.delete()


def test_model_operators_are_callable_like_fiftyones_own(dataset):
    from fiftyone.operators.delegated import DelegatedOperationService

    ref = dataset.skip(5).first()
    nfo.mark_references(dataset.select(ref.id))
    _operator("build_bank")(dataset, "pets", "gt", preset="smoke", config=RANDOM)  # immediate
    assert nfo.list_banks(dataset) == ["pets"] and len(nfo.load_bank(dataset, "pets").shots) == 2

    extra = dataset.skip(8).first()
    nfo.mark_references(dataset, "gt", label_ids=[extra.gt.detections[0].id])
    _operator("add_references")(dataset, "pets")
    assert len(nfo.load_bank(dataset, "pets").shots) == 3

    view = dataset.exclude([ref.id, extra.id]).limit(2)
    segment = _operator("segment_with_bank")
    queued = segment(view, "pets", label_field="pred", max_instances=3, preset="smoke", config=RANDOM, delegate=True)
    assert queued.delegated and "pred" not in dataset.get_field_schema()  # queued, not run
    service = DelegatedOperationService()
    service.execute_queued_operations(dataset_name=dataset.name)
    [op] = service.list_operations(dataset_name=dataset.name, operator=segment.uri)
    assert op.run_state == "completed", op.result and op.result.error
    assert op.result.result["labelled"] == 2 and op.result.result["label_field"] == "pred"
    assert sorted(dataset.exists("pred").values("id")) == sorted(view.values("id"))
    assert max(len(s.pred.detections) for s in view) <= 3


def test_bank_actions_are_one_operator_each_and_delete_warns_then_confirms(dataset, random_config):
    nfo.mark_references(dataset.skip(5).limit(1))
    nfo.build_bank(dataset, "pets", label_field="gt", config=random_config)
    info = nfo.get_bank_info(dataset, "pets")
    for name in ("bank_info", "rename_bank", "delete_bank"):
        choice = _form(name, dataset).type.properties["bank"].type
        assert choice.values == ["pets"], name  # the bank dropdown lists the dataset's banks

    warning = _form("delete_bank", dataset, {"bank": "pets"}).type.properties["warning"].view
    assert warning.label.startswith("You are about to delete bank 'pets': 2 shot(s) of 2 class(es) from 'gt'")
    assert info["bank_path"] in warning.description and "cannot be undone" in warning.description
    form = _form("rename_bank", dataset, {"bank": "pets", "new_name": "../x"})
    assert form.invalid and "invalid bank name" in form.error_message

    renamed = _run("rename_bank", dataset=dataset, params={"bank": "pets", "new_name": "animals"}).result
    assert renamed == {"renamed_from": "pets", "bank": "animals", "banks": ["animals"]}
    deleted = _run("delete_bank", dataset=dataset, params={"bank": "animals"}).result
    assert deleted["message"] == f"Deleted bank 'animals' (2 shots) and its file {info['bank_path']}"
    assert deleted["banks"] == [] and not Path(info["bank_path"]).exists()


def test_requirements_and_license_for_fiftyone_plugins():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = project["dependencies"] + project["optional-dependencies"]["fiftyone"]
    lines = (REPO / "requirements.txt").read_text().splitlines()
    assert [line for line in lines if line and not line.startswith("#")] == runtime
    license_text = (REPO / "LICENSE").read_text()
    assert license_text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "END OF TERMS AND CONDITIONS" in license_text
