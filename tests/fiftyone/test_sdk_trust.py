"""The SDK does what it says on bad input and after banks change: one clear error before any model loads or field
is created; evaluation from what the predictions field recorded; "auto" is this machine; no re-encoding."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import ntt.fo as nfo
from ntt.config import ConfigError


@pytest.fixture
def pets(dataset, random_config):
    """A bank from the first two samples, tagged with the bank's own tag "mine"."""
    nfo.mark_references(dataset.limit(2), tag="mine")
    bank = nfo.build_bank(dataset, "pets", label_field="gt", tag="mine", config=random_config)
    return dataset, bank


def _no_models(monkeypatch):
    """Make any model load (a Segmenter, or encoding references) fail the test."""

    def fail(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(importlib.import_module("ntt.fo.labelling.segment"), "Segmenter", fail)
    monkeypatch.setattr(importlib.import_module("ntt.fo.banks"), "memory_bank_steps", fail)


def _set_stored_device(ds, name, device):
    """Pretend the bank was built on another machine's device."""
    info = ds.get_run_info(name)
    info.config.config["model"]["device"] = device
    ds.update_run_config(name, info.config)


def test_evaluate_after_delete_uses_the_recorded_references_tag_and_classes(pets):
    ds, bank = pets
    refs = ds.limit(2).values("id")
    other = ds.skip(4).first().id
    nfo.mark_references(ds.select(other))  # the default tag, not the bank's: not a reference of this bank
    nfo.segment(ds, "pets", label_field="pred")
    assert ds[other]["pred"] is not None
    nfo.unmark_references(ds, tag="mine")
    nfo.delete_bank(ds, "pets")
    results = nfo.evaluate(ds, "pred", gt_field="gt", eval_key="ev")
    assert ds.select(refs).exists("ev_tp").count() == 0, "the bank's shot samples stay out, even untagged"
    assert ds[other]["ev_tp"] is not None
    assert sorted(results.classes) == sorted(bank.class_names)


def test_evaluate_after_rename_restricts_to_the_banks_classes(pets):
    ds, bank = pets
    assert set(ds.distinct("gt.detections.label")) > set(bank.class_names)
    targets = ds.skip(2).limit(2)
    nfo.segment(targets, "pets", label_field="pred")
    nfo.rename_bank(ds, "pets", "renamed")
    results = nfo.evaluate(ds.limit(4), "pred", gt_field="gt", eval_key="ev")
    assert sorted(results.classes) == sorted(bank.class_names)
    assert ds.limit(2).exists("ev_tp").count() == 0 and targets.exists("ev_tp").count() == 2


def test_an_interrupted_segment_has_recorded_its_bank(pets):
    ds, bank = pets

    def stop(fraction, label):
        if label.startswith("Segmenting"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        nfo.segment(ds, "pets", label_field="part", batch_size=1, progress=stop)
    info = ds.get_field("part").info
    assert info["ntt_bank"] == "pets" and info["ntt_tag"] == "mine"
    assert info["ntt_bank_fingerprint"] == bank.fingerprint and info["ntt_classes"] == bank.class_names
    assert info["ntt_reference_ids"] == sorted(ds.limit(2).values("id"))


def test_resuming_with_another_bank_is_refused(pets, random_config):
    ds, _ = pets
    nfo.segment(ds.skip(2).limit(1), "pets", label_field="pred")
    nfo.mark_references(ds.skip(5).limit(1), tag="theirs")
    nfo.build_bank(ds, "other", label_field="gt", tag="theirs", config=random_config)
    with pytest.raises(nfo.NTTFiftyOneError, match="another bank"):
        nfo.segment(ds, "other", label_field="pred", skip_existing=True)


def test_device_auto_is_this_machine_not_the_banks(pets):
    ds, bank = pets
    _set_stored_device(ds, "pets", "cuda:77")  # built on a big GPU machine; this one has no cuda:77
    summary = nfo.segment(ds.skip(2).limit(1), "pets", label_field="pred")
    assert summary["labelled"] == 1
    nfo.mark_references(ds, "gt", label_ids=[ds.skip(3).first().gt.detections[0].id], tag="mine")
    assert len(nfo.add_references(ds, "pets").shots) == len(bank.shots) + 1
    with pytest.raises(ConfigError, match="this machine has: cpu"):
        nfo.segment(ds.skip(2).limit(1), "pets", label_field="pred2", device="cuda:99")


def test_add_references_encodes_only_new_shots(pets, monkeypatch):
    from ntt.fo import banks

    ds, bank = pets
    received = []
    build = banks.memory_bank_steps

    def counting(refs, cfg, **kwargs):
        received.append(len(refs))
        return build(refs, cfg, **kwargs)

    monkeypatch.setattr(banks, "memory_bank_steps", counting)
    path = nfo.get_bank_info(ds, "pets")["bank_path"]
    same = nfo.add_references(ds, "pets", tag="mine")
    assert received == [] and same.shots == bank.shots, "nothing new: no model run, bank unchanged"
    assert nfo.get_bank_info(ds, "pets")["bank_path"] == path
    nfo.mark_references(ds, "gt", label_ids=[ds.skip(3).first().gt.detections[0].id], tag="mine")
    grown = nfo.add_references(ds, "pets", tag="mine")
    assert received == [1] and len(grown.shots) == len(bank.shots) + 1


BAD_SEGMENT_ARGS = [
    ({"score_thresh": 1.5}, "score_thresh must be a number"),
    ({"score_thresh": -0.1}, "score_thresh"),
    ({"score_thresh": "high"}, "score_thresh"),
    ({"class_thresholds": {"person": 2.0}}, "class_thresholds.*must be a number"),
    ({"class_thresholds": {"unicorn": 0.5}}, "the bank does not have: \\['unicorn'\\]"),
    ({"class_thresholds": 0.5}, "map class names"),
    ({"max_instances": 0}, "max_instances must be an integer >= 1"),
    ({"max_instances": 2.5}, "max_instances"),
    ({"batch_size": -1}, "batch_size must be an integer >= 0"),
    ({"config": {"segment": {"score_thresh": 3}}}, "score_thresh"),  # the core's ConfigError may say it first
]


def test_bad_segment_arguments_fail_before_any_model_or_field(pets, monkeypatch):
    ds, bank = pets
    _no_models(monkeypatch)
    for kwargs, message in BAD_SEGMENT_ARGS:
        with pytest.raises((nfo.NTTFiftyOneError, ConfigError), match=message):
            nfo.segment(ds, "pets", label_field="pred", **kwargs)
    with pytest.raises(ConfigError, match="not available.*this machine has"):
        nfo.segment(ds, "pets", label_field="pred", device="cuda:99")
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        nfo.segment(ds, "pets", label_field="pred", device="tpu")
    with pytest.raises(nfo.NTTFiftyOneError, match="no reference shots"):
        nfo.segment(ds, bank.remove(class_names=bank.class_names), label_field="pred")
    assert "pred" not in ds.get_field_schema()


def test_bank_file_problems_are_one_clear_error(pets, random_config, monkeypatch):
    ds, _ = pets
    path = Path(nfo.get_bank_info(ds, "pets")["bank_path"])
    nfo.mark_references(ds.skip(5).limit(1), tag="theirs")
    nfo.build_bank(ds, "other", label_field="gt", tag="theirs", config=random_config)
    other = Path(nfo.get_bank_info(ds, "other")["bank_path"])
    _no_models(monkeypatch)
    original = path.read_bytes()
    path.write_bytes(original[: len(original) // 2])
    with pytest.raises(nfo.NTTFiftyOneError, match="bank 'pets': .*rebuild the bank"):
        nfo.segment(ds, "pets", label_field="pred")
    path.write_bytes(other.read_bytes())  # a valid file, but another bank's
    with pytest.raises(nfo.NTTFiftyOneError, match="holds another bank's content"):
        nfo.add_references(ds, "pets")
    path.unlink()
    with pytest.raises(nfo.NTTFiftyOneError, match="is missing; rebuild"):
        nfo.segment(ds, "pets", label_field="pred")
    assert "pred" not in ds.get_field_schema()


def test_build_bank_checks_its_arguments_before_encoding(dataset, monkeypatch):
    _no_models(monkeypatch)
    nfo.mark_references(dataset.limit(1))
    with pytest.raises(ConfigError, match="not available"):
        nfo.build_bank(dataset, "b", label_field="gt", preset="smoke", device="cuda:99")
    with pytest.raises(ConfigError, match="unknown preset"):
        nfo.build_bank(dataset, "b", label_field="gt", preset="huge")
    assert nfo.list_banks(dataset) == []


def test_evaluate_checks_its_arguments(dataset):
    import fiftyone as fo

    dataset.add_sample_field("pred", fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    problems = [
        (dict(pred_field="nope"), "no field 'nope'"),
        (dict(pred_field="gt"), "same field"),
        (dict(pred_field="filepath"), "not Detections"),
        (dict(eval_key="bad-key"), "invalid eval_key"),
        (dict(classes="person"), "list of class names"),
    ]
    for kwargs, message in problems:
        with pytest.raises(nfo.NTTFiftyOneError, match=message):
            nfo.evaluate(dataset, **{"pred_field": "pred", "gt_field": "gt", **kwargs})


@pytest.mark.parametrize("kind", ["bomb", "folder", "loop"])
def test_an_unreadable_reference_image_names_the_sample_and_why(dataset, random_config, tmp_path, monkeypatch, kind):
    """A reference sample whose image is a decompression bomb (Pillow's own error used to escape), a folder or a
    symlink loop: one error naming the sample and the reason (the limit, for the bomb), and no bank stored."""
    from PIL import Image

    from ntt.bank.encoder import InvalidReferenceError

    ref = dataset.first()
    path = tmp_path / "ref.png"
    if kind == "bomb":
        Image.new("RGB", (40, 40)).save(path)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 40 x 40 is over twice the limit: refused
    elif kind == "folder":
        path.mkdir()
    else:
        path.symlink_to(path.name)
    ref.filepath = str(path)
    ref.save()
    nfo.mark_references(dataset.select(ref.id))
    reason = {"bomb": "the limit is 200 pixels", "folder": "a directory", "loop": "symlink loop"}[kind]
    with pytest.raises(InvalidReferenceError, match=f"reference sample {ref.id}: .*{reason}"):
        nfo.build_bank(dataset, "bombed", label_field="gt", config=random_config)
    assert "bombed" not in nfo.list_banks(dataset)
