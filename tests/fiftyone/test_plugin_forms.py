"""Operator forms turn bad values and broken banks into the form's one message (never a traceback); "auto"
is the machine running the operation; evaluating works after the bank is gone; adding nothing new says so."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_plugin import RANDOM, SMOKE, _form, _run, _stream

import ntt.fo as nfo


@pytest.fixture
def banked(dataset):
    """A bank "pets" from sample 5 (person, skis), built as if on a GPU machine (stored device cuda:77)."""
    nfo.mark_references(dataset.skip(5).limit(1))
    nfo.build_bank(dataset, "pets", label_field="gt", preset="smoke", config=RANDOM)
    info = dataset.get_run_info("pets")
    info.config.config["model"]["device"] = "cuda:77"
    dataset.update_run_config("pets", info.config)
    return dataset


def test_device_auto_runs_on_the_machine_running_the_operation(banked):
    ds = banked
    target = ds.limit(1)
    params = {"bank": "pets", "label_field": "pred", "device": "auto"}  # same models and settings as the bank
    assert not _form("segment_with_bank", target, params).invalid
    messages, error = _stream("segment_with_bank", target, params)
    assert error is None and messages[-1][1]["results"]["labelled"] == 1

    messages, error = _stream("add_references", ds, {"bank": "pets"})  # nothing newly tagged
    assert error is None
    result = messages[-1][1]["results"]
    assert result["added"] == 0 and result["message"].startswith("Nothing new")


def test_device_errors_name_this_machines_devices(banked):
    ds = banked
    forms = {
        "build_bank": {"bank": "fresh", "label_field": "gt"},
        "segment_with_bank": {"bank": "pets", "label_field": "p"},
        "add_references": {"bank": "pets"},
    }
    for name, params in forms.items():
        assert not _form(name, ds, {**params, "device": "cpu"}).invalid, name
        form = _form(name, ds, {**params, "device": "cuda:99"})
        assert form.invalid and "not available" in form.error_message, name
        assert "this machine has: cpu" in form.error_message, name
        form = _form(name, ds, {**params, "device": "tpu"})
        assert form.invalid and "unknown device 'tpu'" in form.error_message, name
    background = {**forms["segment_with_bank"], "device": "cuda:99", "delegate": True}
    assert not _form("segment_with_bank", ds, background).invalid, "a background worker may have that GPU"


BAD_VALUES = [
    ({"score_thresh": 1.5}, "score_thresh must be a number in [0, 1]"),
    ({"max_instances": 0}, "max_instances must be an integer >= 1"),
    ({"batch_size": -1}, "batch_size must be an integer >= 0"),
    ({"class_thresholds": {"unicorn": 0.5}}, "class_thresholds name classes the bank does not have"),
]


def test_segment_form_explains_bad_values_and_broken_banks(banked):
    ds = banked
    base = {"bank": "pets", "label_field": "p", **SMOKE}
    for params, message in BAD_VALUES:
        form = _form("segment_with_bank", ds, {**base, **params})
        assert form.invalid and message in form.error_message, params
    path = Path(nfo.get_bank_info(ds, "pets")["bank_path"])
    data = path.read_bytes()
    path.write_bytes(data[:100])
    for name in ("segment_with_bank", "add_references"):
        form = _form(name, ds, base)
        assert form.invalid and "bank 'pets'" in form.error_message and "rebuild" in form.error_message, name
    path.unlink()
    for name in ("segment_with_bank", "add_references"):
        form = _form(name, ds, base)
        assert form.invalid and "is missing; rebuild the bank" in form.error_message, name
    assert "p" not in ds.get_field_schema()


def test_evaluate_form_and_run_after_the_bank_is_deleted(banked):
    ds = banked
    nfo.segment(ds.limit(3), "pets", label_field="pred", device="cpu")
    nfo.unmark_references(ds)
    nfo.delete_bank(ds, "pets")
    params = {"pred_field": "pred", "gt_field": "gt", "eval_key": "ev"}
    assert not _form("evaluate_predictions", ds, params).invalid
    result = _run("evaluate_predictions", dataset=ds, params=params).result
    assert 0.0 <= result["mAP"] <= 1.0
    assert ds.skip(5).first()["ev_tp"] is None, "the deleted bank's reference sample stays out"
