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
        "build_bank": {"bank": "fresh", "label_field": "gt", "random_weights": True},
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


def test_model_forms_start_with_what_this_machine_can_run_and_name_every_missing_file(banked, tmp_path, monkeypatch):
    """On this CPU machine without checkpoints: the build form starts on the lite preset; Execute is blocked by a
    message naming the file each chosen model needs, where it goes, and the 'Random weights' way out; ticking
    it, or putting the files in NTT_CHECKPOINT_DIR, unblocks the form. A background run only notes it."""
    ds = banked
    build = {"bank": "fresh", "label_field": "gt"}
    form = _form("build_bank", ds, build)
    assert form.type.properties["preset"].default == "lite"
    assert form.invalid and "dinov2_vits14_pretrain.pth" in form.error_message  # lite's DINOv2 (masks: no SAM2)
    assert "NTT_CHECKPOINT_DIR" in form.error_message and "Random weights" in form.error_message
    assert not _form("build_bank", ds, {**build, "random_weights": True}).invalid
    assert not _form("build_bank", ds, {**build, "delegate": True}).invalid  # the worker may have the files

    segment = {"bank": "pets", "label_field": "p", "preset": "paper"}  # not the (random) bank's own settings
    form = _form("segment_with_bank", ds, segment)
    assert form.invalid and "sam2_hiera_large.pt" in form.error_message
    assert "dinov2_vits14_pretrain.pth" in form.error_message  # the bank's encoder, whatever the preset says
    assert not _form("segment_with_bank", ds, {"bank": "pets", "label_field": "p"}).invalid  # same as the bank

    monkeypatch.setenv("NTT_CHECKPOINT_DIR", str(tmp_path))
    for name in ("sam2_hiera_large.pt", "dinov2_vits14_pretrain.pth"):
        (tmp_path / name).write_bytes(b"found, not read by a form")
    assert not _form("build_bank", ds, build).invalid
    assert not _form("segment_with_bank", ds, segment).invalid


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


def test_segment_form_takes_per_class_thresholds(banked):
    ds = banked
    classes = nfo.get_bank_info(ds, "pets")["classes"]
    base = {"bank": "pets", "label_field": "p", "per_class": True}
    form = _form("segment_with_bank", ds, base)
    assert not form.invalid, form.error_message
    assert [p.view.label for p in form.type.properties["class_table"].type.properties.values()] == classes
    bad = _form("segment_with_bank", ds, {**base, "class_table": {"c0": 1.5}})
    assert bad.invalid and f"class_thresholds[{classes[0]!r}] must be a number in [0, 1]" in bad.error_message

    targets = ds.skip(6).limit(3)
    _, error = _stream("segment_with_bank", targets, {"bank": "pets", "label_field": "all"})
    assert error is None
    found = set(ds.values("all.detections.label", unwind=True))
    assert found, "random weights with the bank's open filters find instances"
    gated = sorted(found)[0]
    table = {f"c{classes.index(gated)}": 1.0}  # scores are < 1: nothing of that class passes
    _, error = _stream("segment_with_bank", targets, {**base, "class_table": table})
    assert error is None
    kept = set(ds.values("p.detections.label", unwind=True))
    assert gated not in kept and kept >= found - {gated}


def test_skip_and_overwrite_together_are_refused_clearly(banked):
    form = _form(
        "segment_with_bank", banked, {"bank": "pets", "label_field": "gt2", "skip_existing": True, "overwrite": True}
    )
    assert form.invalid and "contradict each other" in form.error_message


def test_build_takes_only_the_chosen_classes_and_points_at_the_dataset(dataset):
    ds = dataset
    nfo.mark_references(ds.skip(5).limit(2))
    found = nfo.references.reference_classes(ds, "gt")
    assert len(found) >= 2 and all(n > 0 for n in found.values())
    params = {"label_field": "gt", "bank": "one", "random_weights": True}
    form = _form("build_bank", ds, params)
    assert not form.invalid and form.type.properties["classes"].view.choices  # the references' classes offered
    chosen = sorted(found)[0]
    _, error = _stream("build_bank", ds, {**params, "preset": "smoke", "classes": [chosen]})
    assert error is None
    assert nfo.get_bank_info(ds, "one")["classes"] == [chosen]
    with pytest.raises(nfo.NTTFiftyOneError, match=r"no references of the classes \['unicorn'\].*here are of: "):
        nfo.build_bank(ds, "two", label_field="gt", config=RANDOM, classes=["unicorn"])

    others = ds.exclude(nfo.forms.reference_ids(ds))
    message = _form("build_bank", others, params).error_message
    assert "No references among the chosen samples; the whole dataset has 2" in message


def test_segment_form_reuses_the_candidate_cache_when_asked(banked, tmp_path, monkeypatch):
    """Re-segmenting with the cache on takes every image's encoder work from it (smoke: grid prompts) and gives
    the same labels; "off" neither reads nor fills it."""
    monkeypatch.setenv("NTT_CACHE_DIR", str(tmp_path))
    target = banked.exclude(banked.match_tags("ntt_ref").values("id")).limit(2)
    params = {"bank": "pets", "label_field": "p", "device": "auto", "cache": "off"}
    form = _form("segment_with_bank", target, params)
    assert not form.invalid and "cache" in form.type.properties
    summaries = []
    for cache, overwrite in (("off", False), ("on", True), ("on", True)):
        messages, error = _stream("segment_with_bank", target, {**params, "cache": cache, "overwrite": overwrite})
        assert error is None
        summaries.append(messages[-1][1]["results"])
        labels = [[(d.label, d.bounding_box) for d in s.p.detections] for s in target]
        if cache == "off":
            first = labels
            assert not list(tmp_path.rglob("*.safetensors")), "the cache is off: nothing stored"
    assert [s["reused"] for s in summaries] == [0, 0, 2]
    assert labels == first and sum(map(len, labels)) > 0
