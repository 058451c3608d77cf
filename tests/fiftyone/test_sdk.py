"""The FiftyOne SDK (ntt.fo) on real datasets: tag -> build -> segment -> evaluate, resume, bad input."""

from __future__ import annotations

import numpy as np
import pytest

import ntt.fo as nfo
from ntt.bank.memory import MemoryBank


def _refs(ds, n=3):
    return ds.limit(n)


@pytest.fixture
def built(dataset, random_config):
    nfo.mark_references(_refs(dataset))
    bank = nfo.build_bank(dataset, "pets", label_field="gt", config=random_config)
    return dataset, bank


def test_mark_and_unmark_references(dataset):
    assert nfo.mark_references(dataset.limit(2)) == 2
    assert dataset.match_tags(nfo.forms.DEFAULT_TAG).count() == 2
    third = dataset.skip(5).first()
    label_id = third.gt.detections[0].id
    assert nfo.mark_references(dataset, "gt", label_ids=[label_id]) == 1
    assert dataset.count_label_tags()[nfo.forms.DEFAULT_TAG] == 1
    assert set(nfo.forms.reference_ids(dataset)) == set(dataset.limit(2).values("id")) | {third.id}
    refs = nfo.references.collect_references(dataset, "gt")
    expected = sum(len(s.gt.detections) for s in dataset.limit(2)) + 1
    assert len(refs) == expected and label_id in {r.annotation_id for r in refs}
    nfo.unmark_references(dataset)
    assert nfo.forms.reference_ids(dataset) == []


def test_references_carry_full_masks_and_pixel_boxes(dataset):
    nfo.mark_references(dataset.limit(1))
    sample = dataset.first()
    refs = nfo.references.collect_references(dataset, "gt")
    det, ref = sample.gt.detections[0], refs[0]
    h, w = ref.mask.shape
    x, y, bw, bh = det.bounding_box
    np.testing.assert_allclose(ref.box, [x * w, y * h, bw * w, bh * h])
    ys, xs = np.nonzero(ref.mask)
    assert abs(xs.min() - x * w) <= 1 and abs(ys.min() - y * h) <= 1
    assert ref.mask.sum() == det.mask.sum()
    x0, y0 = round(x * w), round(y * h)
    np.testing.assert_array_equal(ref.mask[y0 : y0 + det.mask.shape[0], x0 : x0 + det.mask.shape[1]], det.mask)


def test_build_bank_stores_run_and_file(built):
    ds, bank = built
    assert nfo.list_banks(ds) == ["pets"]
    info = nfo.get_bank_info(ds, "pets")
    assert info["classes"] == bank.class_names and info["num_shots"] == len(bank.shots)
    assert info["label_field"] == "gt" and info["tag"] == nfo.forms.DEFAULT_TAG
    loaded = nfo.load_bank(ds, "pets")
    np.testing.assert_array_equal(loaded.shot_features, bank.shot_features)
    assert {s["image_id"] for s in loaded.shots} <= set(_refs(ds).values("id"))
    assert ds.load_run_results("pets").shots == loaded.shots


def test_bank_names_and_overwrite(built, random_config):
    ds, _ = built
    with pytest.raises(nfo.NTTFiftyOneError, match="exists"):
        nfo.build_bank(ds, "pets", label_field="gt", config=random_config)
    with pytest.raises(nfo.NTTFiftyOneError, match="invalid bank name"):
        nfo.build_bank(ds, "../evil", label_field="gt", config=random_config)
    nfo.rename_bank(ds, "pets", "animals")
    assert nfo.list_banks(ds) == ["animals"]
    path = nfo.get_bank_info(ds, "animals")["bank_path"]
    nfo.delete_bank(ds, "animals")
    assert nfo.list_banks(ds) == []
    assert not __import__("os").path.exists(path)


def test_add_references_keeps_existing_shots(built):
    ds, bank = built
    extra = ds.skip(3).limit(1)
    nfo.mark_references(extra, "gt")
    grown = nfo.add_references(ds, "pets")
    assert len(grown.shots) == len(bank.shots) + len(extra.first().gt.detections)
    np.testing.assert_array_equal(grown.shot_features[: len(bank.shots)], bank.shot_features)
    assert nfo.get_bank_info(ds, "pets")["num_shots"] == len(grown.shots)


def test_segment_writes_well_formed_detections(built):
    ds, bank = built
    summary = nfo.segment(ds, "pets", label_field="pred", max_instances=15, batch_size=4)
    refs = set(nfo.forms.reference_ids(ds))
    targets = ds.exclude(list(refs))
    assert summary["samples"] == summary["labelled"] == targets.count() == 9
    assert ds.select(list(refs)).exists("pred").count() == 0, "references must not be segmented"
    assert ds.get_field("pred").info["ntt_bank"] == "pets"
    total = 0
    for sample in targets:
        dets = sample.pred.detections
        total += len(dets)
        assert len(dets) <= 15
        conf = [d.confidence for d in dets]
        assert conf == sorted(conf, reverse=True) and all(0 <= c <= 1 for c in conf)
        for d in dets:
            assert d.label in bank.class_names
            # provenance: the nearest reference label of the predicted class, on a reference sample
            shot = next(s for s in bank.shots if s["annotation_id"] == d["shot_label_id"])
            assert (
                d["shot_sample_id"] == shot["image_id"] in refs
                and shot["class_id"] == bank.class_ids[bank.class_names.index(d.label)]
            )
            assert -1 <= d["shot_cosine"] <= 1 and 0 <= d["margin"] <= d["class_cosine"] <= 1
            assert 0 <= d["sam_iou"] and d["negative_cosine"] == 0
            x, y, w, h = d.bounding_box
            assert 0 <= x and 0 <= y and x + w <= 1 + 1e-9 and y + h <= 1 + 1e-9
            assert d.mask.any(axis=0)[[0, -1]].all() and d.mask.any(axis=1)[[0, -1]].all(), "mask is tight"
    assert total == summary["instances"] > 0


def test_overrides_without_preset_layer_on_the_banks_settings(built):
    ds, _ = built
    base = nfo.segment(ds, "pets", label_field="base")
    # The bank was built with random weights and opened filters: a dict of overrides keeps them.
    capped = nfo.segment(ds, "pets", label_field="capped", config={"segment": {"max_instances": 1}})
    assert capped["instances"] == capped["labelled"] == 9 and base["instances"] > 9
    for sample in ds.exists("capped"):
        assert sample.capped.detections[0].confidence == sample.base.detections[0].confidence


def test_existing_labels_need_overwrite_or_skip(built):
    ds, _ = built
    nfo.segment(ds, "pets", label_field="pred")
    with pytest.raises(nfo.NTTFiftyOneError, match="overwrite"):
        nfo.segment(ds, "pets", label_field="pred")
    assert nfo.segment(ds, "pets", label_field="pred", skip_existing=True)["samples"] == 0
    assert nfo.segment(ds, "pets", label_field="pred", overwrite=True)["labelled"] == 9
    with pytest.raises(nfo.NTTFiftyOneError, match="not Detections"):
        nfo.segment(ds, "pets", label_field="filepath")


def test_interrupted_run_resumes_and_labels_each_sample_once(built):
    ds, _ = built
    reference = nfo.segment(ds, "pets", label_field="full", batch_size=2)
    calls = []

    def stop_after_two_batches(fraction, label):
        calls.append(label)
        if len(calls) == 3:  # "Loading models", batch 1, batch 2
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        nfo.segment(ds, "pets", label_field="part", batch_size=2, progress=stop_after_two_batches)
    assert ds.exists("part").count() == 4
    resumed = nfo.segment(ds, "pets", label_field="part", batch_size=2, skip_existing=True)
    assert resumed["samples"] == 5
    assert ds.exists("part").count() == reference["labelled"] == 9
    for sample in ds.exists("full"):
        assert len(sample.part.detections) == len(sample.full.detections)


def test_unreadable_media_is_reported_and_skipped(built, tmp_path):
    ds, _ = built
    targets = ds.exclude(nfo.forms.reference_ids(ds))
    broken, missing = targets.limit(2)
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    broken.filepath = str(bad)
    broken.save()
    missing.filepath = str(tmp_path / "gone.jpg")
    missing.save()
    summary = nfo.segment(ds, "pets", label_field="pred")
    assert {s["id"] for s in summary["skipped"]} == {broken.id, missing.id}
    assert all(s["reason"] for s in summary["skipped"])
    assert summary["labelled"] == 7 and ds.exists("pred").count() == 7


def test_bad_collections_get_one_clear_error(dataset, random_config):
    import fiftyone as fo

    with pytest.raises(nfo.NTTFiftyOneError, match="no references"):
        nfo.build_bank(dataset, "b", label_field="gt", config=random_config)
    nfo.mark_references(dataset.limit(1))
    with pytest.raises(nfo.NTTFiftyOneError, match="no field"):
        nfo.build_bank(dataset, "b", label_field="nope", config=random_config)
    with pytest.raises(nfo.NTTFiftyOneError, match="not Detections"):
        nfo.build_bank(dataset, "b", label_field="filepath", config=random_config)
    with pytest.raises(nfo.NTTFiftyOneError, match="no bank named"):
        nfo.segment(dataset, "missing")
    video = fo.Dataset()
    video.add_sample(fo.Sample(filepath="/tmp/clip.mp4"))
    group = fo.Dataset()
    group.add_group_field("group", default="left")
    g = fo.Group()
    group.add_sample(fo.Sample(filepath="/tmp/a.jpg", group=g.element("left")))
    try:
        with pytest.raises(nfo.NTTFiftyOneError, match="media type is 'video'"):
            nfo.mark_references(video)
        with pytest.raises(nfo.NTTFiftyOneError, match="group datasets"):
            nfo.segment(group, MemoryBank.__new__(MemoryBank))
    finally:
        video.delete()
        group.delete()


def test_evaluate_returns_fiftyone_results(built):
    ds, _ = built
    nfo.segment(ds, "pets", label_field="pred")
    results = nfo.evaluate(ds, "pred", gt_field="gt", eval_key="ev")
    assert 0.0 <= results.mAP() <= 1.0
    assert "ev" in ds.list_evaluations()
    refs = ds.select(nfo.forms.reference_ids(ds))
    assert refs.exists("ev_tp").count() == 0, "references are not evaluated"
    assert ds.exists("ev_tp").count() == 9
    patches = ds.to_evaluation_patches("ev")
    assert set(patches.distinct("type")) <= {"tp", "fp", "fn"} and patches.count() > 0


def test_to_detections_matches_fiftyone_from_mask():
    import fiftyone as fo

    from ntt.fo.labelling.segment import to_detections
    from ntt.types import Instances

    masks = np.zeros((2, 30, 50), bool)
    masks[0, 3:17, 10:41] = True
    masks[0, 5, 5] = True
    masks[1, 29, 49] = True
    inst = Instances.from_masks(masks, scores=[0.8, 0.3], class_ids=[7, 9])
    dets = to_detections(inst, {7: "cat", 9: "dog"}).detections
    for det, mask, label, conf in zip(dets, masks, ["cat", "dog"], [0.8, 0.3]):
        ref = fo.Detection.from_mask(mask)
        np.testing.assert_allclose(det.bounding_box, ref.bounding_box)
        np.testing.assert_array_equal(det.mask, ref.mask)
        assert det.label == label and det.confidence == pytest.approx(conf)


def test_crowd_labels_are_never_references(dataset):
    sample = dataset.first()
    sample.gt.detections[0]["iscrowd"] = 1
    sample.save()
    nfo.mark_references(dataset.limit(1))
    ids = {r.annotation_id for r in nfo.references.collect_references(dataset, "gt")}
    assert sample.gt.detections[0].id not in ids
    assert ids == {d.id for d in sample.gt.detections[1:]}


def test_box_only_references_get_masks_from_sam2(dataset, random_config, monkeypatch):
    import fiftyone as fo
    from fakes import BoxEchoProposer

    from ntt.bank import encoder as bank_encoder

    monkeypatch.setattr(bank_encoder, "get_sam2", lambda cfg, no_mem=False: BoxEchoProposer())
    boxes = dataset.clone()
    try:
        for sample in boxes.limit(2):
            sample["boxes"] = fo.Detections(
                detections=[fo.Detection(label=d.label, bounding_box=d.bounding_box) for d in sample.gt.detections]
            )
            sample.save()
        nfo.mark_references(boxes.limit(2))
        bank = nfo.build_bank(boxes, "from_boxes", label_field="boxes", config=random_config)
        assert len(bank.shots) == sum(len(s.gt.detections) for s in boxes.limit(2))
        assert all(shot["box_only"] for shot in bank.shots)
    finally:
        boxes.delete()


def test_resegmenting_after_the_bank_changed_reuses_the_candidate_cache(dataset, random_config, tmp_path, monkeypatch):
    monkeypatch.setenv("NTT_CACHE_DIR", str(tmp_path))  # an empty cache: other tests' images are not this one's hits
    ds = dataset
    nfo.mark_references(ds.skip(5).limit(1))
    nfo.build_bank(ds, "pets", label_field="gt", config=random_config)
    first = nfo.segment(ds, "pets", label_field="pred", cache=True)
    assert first["reused"] == 0 and first["labelled"] == 11
    nfo.mark_references(ds.skip(6).limit(1))
    nfo.add_references(ds, "pets")  # the bank changed: more shots
    again = nfo.segment(ds, "pets", label_field="pred", overwrite=True, exclude_references=False, cache=True)
    assert again["reused"] == again["labelled"] - 1  # all but the new reference, never segmented before
    fresh = nfo.segment(ds, "pets", label_field="fresh", exclude_references=False)  # smoke: no cache by default
    assert fresh["reused"] == 0 and fresh["labelled"] == again["labelled"]
