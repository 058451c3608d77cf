"""scripts/reproduce_coco_fsod.sh end to end on COCO128 with tiny random-weight models (smoke only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "reproduce_coco_fsod.sh"


@pytest.mark.slow
def test_reproduce_coco_fsod_recipe_runs_and_prints_the_paper_numbers(coco128, tmp_path):
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "ntt").is_file():
        pytest.skip(f"no `ntt` entry point next to {sys.executable}")
    env = {
        **os.environ,  # NTT_OFFLINE=1 and the isolated cache come from conftest
        "NTT_COCO_DIR": str(coco128),
        "NTT_REPRO_OUT": str(tmp_path),
        "NTT_REPRO_MAX_IMAGES": "2",
        "NTT_REPRO_SHOTS": "1",  # the recipe's 30 shots take minutes of CPU on random models; 1 proves the chain
        "NTT_SKIP_SETUP": "1",  # never (re)install from a test: the running environment is the one to use
        "NTT_BIN_DIR": str(bin_dir),
    }
    smoke = ["--random-weights", "--preset", "smoke", "--device", "cpu"]
    proc = subprocess.run(["bash", str(SCRIPT), *smoke], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "full COCO 2017" in out and "sam2_hiera_large.pt" in out and "dinov2_vitl14_pretrain.pth" in out
    assert "only smoke-test" in out
    assert "AP50" in out and "bbox" in out and "segm" in out  # ntt evaluate's table
    rows = {line[:12].strip(): line.split() for line in out.splitlines() if line.startswith(("bbox ", "segm "))}
    assert rows["bbox AP"][-1] == "36.8" and rows["segm AP"][-1] == "34.2"
    assert rows["bbox AP50"][-1] == "54.5" and rows["bbox AP75"][-1] == "38.7"
    meta = json.loads((tmp_path / "preds.meta.json").read_text())
    assert len(meta["image_ids"]) == 2
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == {"bbox", "segm"}
