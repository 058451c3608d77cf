"""A bank as a FiftyOne model: ``apply_model`` with FiftyOne's standard arguments labels a view exactly as
``segment`` does."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import ntt.fo as nfo


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
    targets = nfo.without_references(ds).limit(4)
    nfo.segment(targets, "pets", label_field="seg", max_instances=100)
    targets.apply_model(nfo.load_model(ds, "pets"), label_field="app", batch_size=2)
    for sample in targets:
        assert _labels(sample, "app") == _labels(sample, "seg") and _labels(sample, "seg")


def test_confidence_threshold_masks_on_disk_and_failures(banked, tmp_path, caplog):
    ds = banked
    targets = nfo.without_references(ds).limit(3)
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
    targets = nfo.without_references(ds).limit(3)
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

    targets = nfo.without_references(banked).limit(2)
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
    assert isinstance(model, nfo.NTTModel)
    import sys

    assert sys.modules["ntt"].fo is nfo, "loading the zoo source leaves the ntt package in place"
    targets = nfo.without_references(ds).limit(2)
    nfo.segment(targets, "pets", label_field="seg")
    targets.apply_model(model, label_field="zoo")
    for sample in targets:
        assert _labels(sample, "zoo") == _labels(sample, "seg")
    with pytest.raises(nfo.NTTFiftyOneError, match="dataset=ds, bank="):
        foz.load_zoo_model("ntt-sam2-dinov2")
