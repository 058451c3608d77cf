"""A 9000x7000 image is segmented with bounded memory: no full-resolution tensor per candidate."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np
    from PIL import Image
    from ntt.io import coco
    from ntt.config import get_config
    from ntt.bank.encoder import build_bank
    from ntt.predict.segmenter import Segmenter
    from ntt.types import Reference

    cfg = get_config("smoke", {"model": {"random_weights": True, "device": "cpu"},
                               "segment": {"pred_iou_thresh": 0.0, "nms_thresh": 1.0, "points_per_side": 6}})
    rng = np.random.default_rng(0)
    big = rng.integers(0, 255, (7000 // 50, 9000 // 50, 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(big).resize((9000, 7000), Image.NEAREST))
    path = sys.argv[1]
    Image.fromarray(big).save(path, quality=80)
    del big
    mask = np.zeros((64, 64), bool); mask[10:40, 20:50] = True
    ref = Reference(image=rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), class_id=1, class_name="x", mask=mask)
    bank = build_bank([ref], cfg)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = next(Segmenter(bank, cfg).run([path]))
    inst = result.instances
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    n_rle = len(coco.instances_to_results(1, inst))
    print(json.dumps({"n": len(inst), "size": inst.image_size, "extra_mb": (peak - base) / 1024,
                      "crop_mb": sum(c.size for c in inst.crops) / 2**20, "rle": n_rle}))
    """
)


@pytest.mark.slow
def test_9000x7000_image_is_segmented_with_bounded_memory(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "huge.jpg")], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    assert stats["size"] == [7000, 9000] and stats["n"] > 0 and stats["rle"] == stats["n"]
    # The decoded image is 180 MB; one float32 full-resolution tensor per candidate (36 of them) would
    # be 9 GB. Allow the image, the final crops and a few hundred MB of working memory.
    assert stats["extra_mb"] < 400 + 2 * stats["crop_mb"] + 180, stats
