"""Oracle end-to-end test: known scenes through the real bank, matching, post-processing, COCO export and
`ntt evaluate`. Catches swapped coordinates, off-by-one boxes, wrong category ids and broken soft merging,
which random weights would hide."""

from __future__ import annotations

import json

import numpy as np
import pytest
from oracle_scenes import CATEGORIES, OracleEncoder, OracleProposer, draw_scene, write_coco

from ntt.bank import sampling
from ntt.bank.encoder import build_bank
from ntt.bank.memory import MemoryBank
from ntt.cli import main, pipeline
from ntt.config import get_config
from ntt.io import coco
from ntt.predict.segmenter import Segmenter

CAT_IDS = [c["id"] for c in CATEGORIES]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("oracle")
    refs = []
    for _ in range(2):
        image, masks = draw_scene(rng, 170, 230, CAT_IDS)
        refs.append((image, masks, CAT_IDS))
    targets = []
    for i in range(8):
        height, width = (150 + 10 * i, 260 - 8 * i)  # non-square, portrait and landscape
        cats = list(rng.choice(CAT_IDS, size=int(rng.integers(2, 5))))
        image, masks = draw_scene(rng, height, width, [int(c) for c in cats])
        targets.append((image, masks, [int(c) for c in cats]))
    return {
        "root": root,
        "refs": write_coco(root, "refs", refs, first_image_id=1),
        "gt": write_coco(root, "targets", targets, first_image_id=101),
    }


def _run(scenes, tmp_path, **segment):
    cfg = get_config("paper", {"model": {"device": "cpu"}, "segment": segment})
    encoder, proposer = OracleEncoder(), OracleProposer()
    data = coco.load_json(scenes["refs"])
    anns = sampling.all_annotations(data, coco.select_categories(data, None), explicit=False)
    refs = coco.references_from_coco(data, scenes["root"], anns, box_only=False)
    bank = build_bank(refs, cfg, encoder=encoder)
    bank = MemoryBank.load(bank.save(tmp_path / "bank.safetensors"))
    gt = coco.load_json(scenes["gt"], kind="ground truth")
    targets = coco.targets_from_json(gt, scenes["root"])
    segmenter = Segmenter(bank, cfg, proposer=proposer, encoder=encoder)
    preds = tmp_path / "preds.json"
    pipeline.segment_targets(bank, targets, cfg, preds, segmenter=segmenter)
    metrics_path = tmp_path / "metrics.json"
    assert main(["evaluate", str(scenes["gt"]), str(preds), "--json", str(metrics_path)]) == 0
    return json.loads(metrics_path.read_text()), json.loads(preds.read_text())


def test_oracle_scenes_reach_near_perfect_ap(scenes, tmp_path):
    metrics, preds = _run(scenes, tmp_path)
    assert metrics["bbox"]["AP"] >= 0.95, metrics
    assert metrics["segm"]["AP"] >= 0.95, metrics
    assert {p["category_id"] for p in preds} <= set(CAT_IDS)
    assert all(0.0 <= p["score"] <= 1.0 for p in preds)


def test_oracle_true_masks_come_first(scenes, tmp_path):
    """Per image, the top-scored detections are the true instances with the right classes."""
    _, preds = _run(scenes, tmp_path)
    gt = coco.load_json(scenes["gt"], kind="ground truth")
    for image in gt["images"]:
        truth = sorted(a["category_id"] for a in gt["annotations"] if a["image_id"] == image["id"])
        mine = sorted(preds_for(preds, image["id"]), key=lambda p: -p["score"])[: len(truth)]
        assert sorted(p["category_id"] for p in mine) == truth


def preds_for(preds, image_id):
    return [p for p in preds if p["image_id"] == image_id]


def test_oracle_detects_broken_soft_merge(scenes, tmp_path):
    """Without soft merging the quadrant distractors keep high scores: the oracle test can fail."""
    with_merge, _ = _run(scenes, tmp_path)
    without, _ = _run(scenes, tmp_path, soft_merge=False)
    assert without["segm"]["AP"] < with_merge["segm"]["AP"] - 0.05
