"""The benchmark's outputs (not its timings): stages, counts, forced candidates, agreement, CLI."""

from __future__ import annotations

import json

import numpy as np

from ntt.cli import benchmark as bench
from ntt.cli import main
from ntt.config import get_config
from ntt.io.images import list_images
from ntt.types import Instances


def _cfg():
    return get_config("smoke", {"model": {"random_weights": True, "device": "cpu"}})


def test_run_reports_every_stage_and_filter(coco128):
    paths = list_images(coco128 / "images" / "val2017")[:2]
    cfg = _cfg()
    report = bench.run(cfg, bench.random_bank(cfg, classes=5), paths, "fast", warmup=0)
    assert report.images == 2 and len(report.instances) == 2
    assert set(report.stage_ms) == set(bench.STAGES)
    for stage in ("load", "sam2_encoder", "dinov2", "decoder", "matching", "full_res_masks"):
        assert report.stage_ms[stage] > 0, stage
    assert report.counts["prompts"] == 16
    assert report.counts["prompts"] >= report.counts["iou_filter"] >= report.counts["nms"] >= report.counts["final"]
    forced = bench.run(bench.force_candidates(cfg), bench.random_bank(cfg, classes=5), paths, "forced", warmup=0)
    assert forced.counts["iou_filter"] == 16 and forced.counts["nms"] == forced.counts["nonempty"]


def test_reference_config_is_the_research_codes_way():
    cfg = get_config("paper", {"model": {"dtype": "bf16"}, "segment": {"batch_size": 8, "merge_resolution": "low"}})
    ref = bench.reference_config(cfg)
    assert (ref.model.dtype, ref.segment.batch_size, ref.segment.points_batch_size) == ("fp32", 1, 256)
    assert ref.segment.merge_resolution == "full" and cfg.segment.batch_size == 8
    fast = get_config("fast")
    assert (fast.model.compile, fast.segment.loader_workers) == (True, 2)
    ref = bench.reference_config(fast)
    assert (ref.model.compile, ref.segment.loader_workers) == (False, 0)


def test_agreement_counts_same_class_high_iou_matches():
    masks = np.zeros((2, 20, 20), bool)
    masks[0, 0:10, 0:10] = True
    masks[1, 10:20, 10:20] = True
    ref = Instances.from_masks(masks, [0.9, 0.8], [1, 2])
    assert bench.agreement([ref], [ref]) == 1.0
    shifted = masks.copy()
    shifted[0] = np.roll(masks[0], 3, axis=1)  # IoU 0.54 < 0.9
    assert bench.agreement([Instances.from_masks(shifted, [0.9, 0.8], [1, 2])], [ref]) == 0.5
    assert bench.agreement([Instances.from_masks(masks, [0.9, 0.8], [1, 3])], [ref]) == 0.5
    assert bench.agreement([Instances.empty((20, 20))], [Instances.empty((20, 20))]) == 1.0


def test_benchmark_cli_compares_with_reference(coco128, tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["benchmark", "--images", str(coco128 / "images" / "val2017"), "--max-images", "2", "--classes", "4"]
    args += ["--compare-reference", "--json", str(out), "--preset", "smoke", "--random-weights"]
    # fast: 2 images per batch, their 16 + 16 prompts decoded 24 at a time (a chunk spans both images)
    assert main(args + ["--batch-size", "2", "--points-batch-size", "24"]) == 0
    data = json.loads(out.read_text())
    assert [r["mode"] for r in data["reports"]] == ["reference", "fast"]
    assert [r["batch_size"] for r in data["reports"]] == [1, 2]
    # In fp32 the fast mode makes the reference's computation in another order: full agreement.
    assert data["agreement"] == 1.0 and data["speedup"] > 0
    assert "fast / reference" in capsys.readouterr().out


def test_benchmark_measures_resegmenting_from_the_cache(coco128, tmp_path, capsys):
    out = tmp_path / "reseg.json"
    args = ["benchmark", "--images", str(coco128 / "images" / "val2017"), "--max-images", "2", "--classes", "8"]
    assert main(args + ["--resegment", "--json", str(out), "--preset", "smoke", "--random-weights"]) == 0
    data = json.loads(out.read_text())
    modes = [r["mode"] for r in data["reports"]]
    assert modes == ["fresh", "fresh+fill", "cache", "cache,new bank", "fresh,new bank"]
    cached = {r["mode"]: r["ms_per_image"] for r in data["reports"]}
    assert cached["cache,new bank"]["sam2_encoder"] == 0 and cached["cache,new bank"]["decoder"] == 0  # skipped
    summary = data["resegment"]
    assert summary["speedup"] > 1 and summary["cache_bytes_per_image"] > 0
    assert summary["agreement_same_bank"] >= 0.99 and summary["agreement_changed_bank"] >= 0.95
    assert "re-segmenting from the cache" in capsys.readouterr().out
