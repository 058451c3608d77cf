"""A bank as a FiftyOne model: ``apply_model`` with FiftyOne's standard arguments labels a view exactly as
``segment`` does."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import ntt.fo as nfo
from ntt.fo.labelling.model import NTTModel
from ntt.fo.labelling.provenance import KEYS, recorded
from ntt.predict.segmenter import ImageResult


@pytest.fixture
def banked(dataset, random_config):
    nfo.mark_references(dataset.limit(3))
    nfo.build_bank(dataset, "pets", label_field="gt", config=random_config)
    return dataset


def _labels(sample, field):
    dets = sample[field].detections if sample[field] is not None else []
    return [
        (d.label, d.confidence, tuple(np.round(d.bounding_box, 6)), d.mask.tobytes(), d["shot_label_id"]) for d in dets
    ]


def test_apply_model_labels_a_view_as_segment_does(banked):
    ds = banked
    targets = nfo.forms.without_references(ds).limit(4)
    nfo.segment(targets, "pets", label_field="seg", max_instances=100)
    targets.apply_model(nfo.load_model(ds, "pets"), label_field="app", batch_size=2)
    for sample in targets:
        assert _labels(sample, "app") == _labels(sample, "seg") and _labels(sample, "seg")


def test_confidence_threshold_masks_on_disk_and_failures(banked, tmp_path, caplog):
    ds = banked
    targets = nfo.forms.without_references(ds).limit(3)
    model = nfo.load_model(ds, "pets")
    targets.apply_model(model, label_field="all", batch_size=3)
    scores = sorted(d.confidence for s in targets for d in s.all.detections)
    median = scores[len(scores) // 2]
    targets.apply_model(model, label_field="high", confidence_thresh=median, output_dir=str(tmp_path / "masks"))
    kept = [d for s in targets for d in s.high.detections]
    assert kept and all(d.confidence >= median for d in kept) and len(kept) < len(scores)
    assert all(d.mask is None and Path(d.mask_path).parent == tmp_path / "masks" for d in kept), "masks on disk"

    # a sample whose file is gone: named in a warning, left unlabelled; the others are labelled
    broken = targets.first()
    moved = tmp_path / "moved.jpg"
    shutil.copy(broken.filepath, moved)
    broken.filepath = str(tmp_path / "missing.jpg")
    broken.save()
    targets.apply_model(model, label_field="rest", batch_size=3, skip_failures=True)
    assert targets.exists("rest").count() == len(targets) - 1
    assert ds[broken.id]["rest"] is None and "missing.jpg not segmented" in caplog.text


def test_segment_can_keep_masks_on_disk(banked, tmp_path):
    """mask_dir: the same detections, each mask in a PNG (Detection.mask_path) instead of the database; evaluation
    reads them and scores the same."""
    ds = banked
    targets = nfo.forms.without_references(ds).limit(3)
    nfo.segment(targets, "pets", label_field="db")
    nfo.segment(targets, "pets", label_field="disk", mask_dir=str(tmp_path / "masks"))
    for sample in targets:
        for a, b in zip(sample.db.detections, sample.disk.detections, strict=True):
            assert b.mask is None and Path(b.mask_path).is_file()
            assert Path(b.mask_path).parent == tmp_path / "masks" / str(ds._doc.id) / "disk" / sample.id
            np.testing.assert_array_equal(a.mask, b.get_mask())
            assert (a.label, a.confidence, a.bounding_box) == (b.label, b.confidence, b.bounding_box)
    nfo.segment(targets, "pets", label_field="disk", mask_dir=str(tmp_path / "masks"), overwrite=True)
    for sample in targets.select_fields("disk"):  # the replaced labels' files are gone, the new ones are there
        names = sorted(f"{d.id}.png" for d in sample.disk.detections)
        folder = tmp_path / "masks" / str(ds._doc.id) / "disk" / sample.id
        assert names and sorted(p.name for p in folder.iterdir()) == names
    on_db = nfo.evaluate(targets, "db", gt_field="gt", eval_key="e_db")
    on_disk = nfo.evaluate(targets, "disk", gt_field="gt", eval_key="e_disk")
    assert on_db.mAP() == on_disk.mAP()


def test_the_segment_form_takes_a_masks_folder(banked, tmp_path):
    from test_plugin import _stream

    targets = nfo.forms.without_references(banked).limit(2)
    params = {"bank": "pets", "label_field": "p", "device": "cpu", "mask_dir": str(tmp_path / "m")}
    messages, error = _stream("segment_with_bank", targets, params)
    assert error is None and messages[-1][1]["results"]["labelled"] == 2
    dets = [d for s in targets for d in s.p.detections]
    assert dets and all(d.mask is None and Path(d.mask_path).is_file() for d in dets)


def test_the_zoo_source_loads_the_model_offline(banked):
    import fiftyone.zoo as foz

    ds = banked
    nfo.register_zoo_source()
    assert "ntt-sam2-dinov2" in foz.list_zoo_models()
    model = foz.load_zoo_model("ntt-sam2-dinov2", dataset=ds, bank="pets")
    assert isinstance(model, NTTModel)
    import sys

    assert sys.modules["ntt"].fo is nfo, "loading the zoo source leaves the ntt package in place"
    targets = nfo.forms.without_references(ds).limit(2)
    nfo.segment(targets, "pets", label_field="seg")
    targets.apply_model(model, label_field="zoo")
    for sample in targets:
        assert _labels(sample, "zoo") == _labels(sample, "seg")
    with pytest.raises(nfo.NTTFiftyOneError, match="dataset=ds, bank="):
        foz.load_zoo_model("ntt-sam2-dinov2")


def _counts(coll, key):
    """Per sample (in id order) its TP / FP / FN counts under eval key ``key`` (None: left out of it)."""
    return coll.values([f"{key}_tp", f"{key}_fp", f"{key}_fn"])


def test_evaluate_treats_an_apply_model_field_as_a_segment_field(banked):
    """apply_model records the bank on its field, so evaluate leaves the bank's shot samples out (even untagged)
    and counts only the bank's classes in the ground truth, exactly as for segment's field."""
    ds = banked
    nfo.segment(ds, "pets", label_field="seg")  # leaves the references out
    ds.apply_model(nfo.load_model(ds, "pets"), label_field="app", batch_size=4)  # labels them too
    nfo.unmark_references(ds)  # only the recorded shot samples say which samples are references now
    seg = nfo.evaluate(ds, "seg", gt_field="gt", eval_key="e_seg")
    app = nfo.evaluate(ds, "app", gt_field="gt", eval_key="e_app")
    assert app.mAP() == seg.mAP()
    assert sorted(app.classes) == sorted(seg.classes) == sorted(ds.get_field("seg").info["ntt_classes"])
    assert _counts(ds, "e_app") == _counts(ds, "e_seg")
    left_out = ds.get_field("seg").info["ntt_reference_ids"]
    assert left_out and all(c is None for c in _counts(ds.select(left_out), "e_app")[0])


def _shot_samples(ds, bank):
    return sorted(nfo.get_bank_info(ds, bank)["shot_sample_ids"])


def test_apply_model_records_the_bank_on_its_field(banked):
    """As segment records it (the bank's shot samples as its references), for a view, with skip_failures; read
    (as evaluate reads it) after the bank is gone."""
    ds = banked
    bank = nfo.get_bank_info(ds, "pets")
    targets = nfo.forms.without_references(ds).limit(2)
    targets.apply_model(nfo.load_model(ds, "pets"), label_field="app", skip_failures=True)
    nfo.delete_bank(ds, "pets")
    found = recorded(ds, "app")
    info = ds.get_field("app").info
    assert found == {k: info[k] for k in KEYS} and "pets" in ds.get_field("app").description
    assert info["ntt_bank"] == "pets" and info["ntt_bank_fingerprint"] == bank["fingerprint"]
    assert info["ntt_classes"] == bank["classes"] and info["ntt_tag"] == nfo.forms.DEFAULT_TAG
    assert info["ntt_reference_ids"] == sorted(bank["shot_sample_ids"]) and info["ntt_reference_ids"]


def test_two_banks_on_two_fields_record_each_its_own(banked, random_config, caplog):
    """Each field its bank; labels replaced by another bank's are recorded as that bank's; a field mixing two
    banks keeps its record, with a warning."""
    ds = banked
    one_class = nfo.get_bank_info(ds, "pets")["classes"][:1]
    nfo.build_bank(ds, "one", label_field="gt", classes=one_class, config=random_config)
    fingerprints = {b: nfo.get_bank_info(ds, b)["fingerprint"] for b in ("pets", "one")}
    assert fingerprints["pets"] != fingerprints["one"]
    pets, one = nfo.load_model(ds, "pets"), nfo.load_model(ds, "one")
    targets = nfo.forms.without_references(ds).limit(2)
    targets.apply_model(pets, label_field="a")
    targets.apply_model(one, label_field="b")
    assert recorded(ds, "a")["ntt_bank_fingerprint"] == fingerprints["pets"]
    assert recorded(ds, "b")["ntt_bank_fingerprint"] == fingerprints["one"]
    assert ds.get_field("b").info["ntt_classes"] == one_class

    targets.apply_model(one, label_field="a")  # replaces bank pets's labels
    assert recorded(ds, "a")["ntt_bank"] == "one" and ds.get_field("a").info["ntt_bank"] == "one"

    targets.limit(1).apply_model(pets, label_field="b")  # two banks in one field
    assert recorded(ds, "b")["ntt_bank"] == "one" and "mixes the predictions of several banks" in caplog.text


def test_batch_size_is_the_forward_batch(banked):
    """apply_model's batch_size is the number of images the encoders get at once (the settings say 1)."""
    ds = banked
    model = nfo.load_model(ds, "pets")
    assert model.segmenter.cfg.segment.batch_size == 1
    batches = _spy_encode(model)
    ds.limit(7).apply_model(model, label_field="app", batch_size=3)
    assert batches == [3, 3, 1] and ds.exists("app").count() == 7


def test_a_batch_that_ran_out_of_memory_caps_the_later_ones(banked, monkeypatch):
    """The segmenter halves its batch size when a batch runs out of memory: later forward batches stay that small."""
    model = nfo.load_model(banked, "pets")
    seen = []

    def run(sources):
        seen.append(model.segmenter.batch_size)
        if len(seen) == 1:
            model.segmenter.batch_size = 2  # what the segmenter does when 4 images run out of memory
        return [ImageResult(src, None, "not run") for src in sources]

    monkeypatch.setattr(model.segmenter, "run", run)
    paths = banked.limit(4).values("filepath")
    for batch in (paths, paths, paths[:1], paths):
        assert model.predict_all(batch) == [None] * len(batch)
    assert seen == [4, 2, 1, 2]


def _spy_encode(model) -> list[int]:
    """The sizes of the batches the model's encoders run on, from now on."""
    predictor, sizes = model.segmenter.predictor, []
    encode = predictor.encode

    def spy(prepared):
        sizes.append(len(prepared))
        return encode(prepared)

    predictor.encode = spy
    return sizes
