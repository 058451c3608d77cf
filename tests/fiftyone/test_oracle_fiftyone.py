"""The oracle scenes of the core tests, end to end through FiftyOne: COCO import, reference tags, bank run,
segment into a Detections field (masks cropped by FiftyOne), FiftyOne's COCO evaluator. mAP must be >= 0.95."""

from __future__ import annotations

import json

import numpy as np
import pytest
from oracle_scenes import CATEGORIES, OracleEncoder, OracleProposer, draw_scene, write_coco

import ntt.fo as nfo
from ntt.bank import encoder as bank_encoder
from ntt.predict import predictor

CAT_IDS = [c["id"] for c in CATEGORIES]


@pytest.fixture
def oracle_dataset(tmp_path):
    import fiftyone as fo

    rng = np.random.default_rng(1)
    scenes = [(*draw_scene(rng, 170, 230, CAT_IDS), CAT_IDS) for _ in range(2)]
    for i in range(8):
        cats = [int(c) for c in rng.choice(CAT_IDS, size=int(rng.integers(2, 5)))]
        scenes.append((*draw_scene(rng, 150 + 10 * i, 260 - 8 * i, cats), cats))
    labels = write_coco(tmp_path, "scenes", scenes, first_image_id=1)
    data = json.loads(labels.read_text())
    ds = fo.Dataset.from_dir(
        dataset_type=fo.types.COCODetectionDataset,
        data_path=str(tmp_path),
        labels_path=str(labels),
        label_types=["segmentations"],
        label_field="gt",
    )
    ref_files = {str(tmp_path / img["file_name"]) for img in data["images"][:2]}
    nfo.mark_references(ds.select_by("filepath", sorted(ref_files)))
    yield ds
    ds.delete()


def test_oracle_through_fiftyone_reaches_map_095(oracle_dataset, monkeypatch):
    encoder, proposer = OracleEncoder(), OracleProposer()
    monkeypatch.setattr(bank_encoder, "get_dinov2", lambda cfg: encoder)
    monkeypatch.setattr(predictor, "get_dinov2", lambda cfg: encoder)
    monkeypatch.setattr(predictor, "get_sam2", lambda cfg, no_mem=False: proposer)
    config = {"model": {"device": "cpu", "random_weights": True}}
    ds = oracle_dataset
    bank = nfo.build_bank(ds, "shapes", label_field="gt", config=config)
    assert sorted(bank.class_names) == ["bar", "disc", "square"]
    summary = nfo.segment(ds, "shapes", label_field="pred", batch_size=3)
    assert summary["labelled"] == 8 and not summary["skipped"]
    results = nfo.evaluate(ds, "pred", gt_field="gt", eval_key="oracle")
    assert results.mAP() >= 0.95, results.mAP()
    # Every true instance is found with its class: no false negatives at IoU 0.5.
    assert ds.exists("oracle_fn").count() == 8 and ds.sum("oracle_fn") == 0
