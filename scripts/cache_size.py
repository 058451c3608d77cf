"""Candidate-cache size at the paper's settings, estimated on object-shaped masks from real COCO annotations.

No real SAM2 checkpoint can be read on the development machines, and random weights give full-frame noise
masks, so this builds what the grid of 32 x 32 prompts gives on an image under a stated model and packs it
with the cache's codec:

- each prompt on an annotated instance gives that instance's mask (the smallest one under the point); a prompt
  on the background gives a "stuff" region (the background within a disc of random radius around it);
- its low-res (256 x 256) logits are ``slope`` x the signed distance to the mask's edge (in cells), shifted by
  up to half a cell per prompt, plus smooth noise, clipped to [-32, 24]; every mask passes the IoU filter
  (the paper's threshold is 0.4);
- embeddings are random unit vectors of DINOv2 ViT-L's width (1,024): int8 codes do not compress, so only
  their count matters.

It prints the bytes per image (blob of mask codes, embeddings, all) and how far the masks that come back are
from the ones that went in at the image's full resolution (mask IoU).

    .venv/bin/python scripts/cache_size.py --images 3 --slopes 1.5 3 8
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ntt import coco  # noqa: E402
from ntt.cache.pool_codec import pack, unpack  # noqa: E402
from ntt.geometry import mask_boxes  # noqa: E402
from ntt.predict.postprocess import upsample_logits  # noqa: E402
from ntt.predict.predictor import MaskPool  # noqa: E402

LOW_RES, SIDE, WIDTH = 256, 32, 1024
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128-seg" / "annotations"


def signed_distance(mask: np.ndarray) -> np.ndarray:
    return ndimage.distance_transform_edt(mask) - ndimage.distance_transform_edt(~mask)


def low_res_masks(data: dict, image: dict) -> list[np.ndarray]:
    """The image's instance masks at 256 x 256 (SAM2's low-res grid over the whole image), none tiny."""
    found = []
    for ann in data["annotations"]:
        if ann["image_id"] != image["id"]:
            continue
        mask = torch.from_numpy(coco.annotation_mask(ann, image).astype(np.float32))
        small = F.interpolate(mask[None, None], size=(LOW_RES, LOW_RES), mode="area")[0, 0].numpy() > 0.5
        if small.sum() >= 4:
            found.append(small)
    return found


def grid_pool(masks: list[np.ndarray], slope: float, rng: np.random.Generator) -> MaskPool:
    distances = [signed_distance(m) for m in masks]
    areas = [int(m.sum()) for m in masks]
    things = np.any(masks, axis=0) if masks else np.zeros((LOW_RES, LOW_RES), bool)
    yy, xx = np.mgrid[0:LOW_RES, 0:LOW_RES]
    logits = []
    for py in (np.arange(SIDE) + 0.5) * LOW_RES / SIDE:
        for px in (np.arange(SIDE) + 0.5) * LOW_RES / SIDE:
            under = [k for k, m in enumerate(masks) if m[int(py), int(px)]]
            if under:
                distance = distances[min(under, key=lambda k: areas[k])]
            else:
                radius = rng.uniform(20, 90)
                distance = signed_distance(((yy - py) ** 2 + (xx - px) ** 2 < radius**2) & ~things)
            noise = ndimage.gaussian_filter(rng.standard_normal((LOW_RES, LOW_RES)), 2) * 3
            logits.append(np.clip(slope * (distance + rng.uniform(-0.5, 0.5)) + noise, -32, 24))
    logits = torch.from_numpy(np.stack(logits).astype(np.float32))
    logits = logits[(logits > 0).flatten(1).any(1)]
    n = len(logits)
    embeddings = F.normalize(torch.randn(n, WIDTH), dim=1)
    counts = {"prompts": SIDE * SIDE, "iou_filter": n, "nonempty": n}
    return MaskPool(logits, torch.rand(n) / 2 + 0.5, embeddings, mask_boxes(logits > 0).float(), counts)


def mask_ious(a: torch.Tensor, b: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    a, b = upsample_logits(a, size), upsample_logits(b, size)
    return (a & b).flatten(1).sum(1) / (a | b).flatten(1).sum(1).clamp(min=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3, help="COCO128 val images (in file order)")
    parser.add_argument("--slopes", type=float, nargs="+", default=[1.5, 3.0, 8.0], help="logit per cell")
    args = parser.parse_args()
    data = coco.load_json(DATA / "instances_val2017.json", kind="ground truth")
    rng = np.random.default_rng(0)
    print("| slope | image | masks | blob MB | embeddings MB | entry MB | pack s | mask IoU min / mean |")
    print("|---:|---|---:|---:|---:|---:|---:|---|")
    for slope in args.slopes:
        for image in data["images"][: args.images]:
            pool = grid_pool(low_res_masks(data, image), slope, rng)
            start = time.perf_counter()
            arrays = pack(pool)
            seconds = time.perf_counter() - start
            back = unpack(arrays, torch.device("cpu"))
            ious = mask_ious(pool.logits, back.logits, (image["height"], image["width"]))
            sizes = {k: v.nbytes / 1e6 for k, v in arrays.items()}
            print(
                f"| {slope:g} | {image['file_name']} | {len(pool.iou)} | {sizes['blob']:.2f} | "
                f"{sizes['embeddings'] + sizes['embedding_scales']:.2f} | {sum(sizes.values()):.2f} | "
                f"{seconds:.2f} | {ious.min():.4f} / {ious.mean():.5f} |"
            )


if __name__ == "__main__":
    main()
