"""Synthetic scenes with known instances, and oracle models that see them.

Every instance is drawn in a flat colour: the red channel encodes its class, the green channel its
identity. ``OracleProposer`` returns the true masks plus distractors (a quadrant of each instance, a
shifted duplicate, a background blob, a low-quality mask, an empty mask); ``OracleEncoder`` returns
patch features that reveal the class (a one-hot of the red channel, zero on background). Run through the
real bank, matching, post-processing, export and evaluation, a correct pipeline scores AP ~ 1.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from fakes import PerImageDecode
from PIL import Image
from pycocotools import mask as mask_utils

# Non-contiguous category ids catch index/id mix-ups.
CATEGORIES = [{"id": 7, "name": "square"}, {"id": 23, "name": "disc"}, {"id": 61, "name": "bar"}]
RED = {7: 60, 23: 120, 61: 180}


def draw_scene(rng: np.random.Generator, height: int, width: int, cats: list[int]):
    """An RGB image with one non-overlapping instance per entry of ``cats``; returns (image, masks)."""
    image = np.zeros((height, width, 3), np.uint8)
    taken = np.zeros((height, width), bool)
    masks = []
    for k, cat in enumerate(cats):
        for _ in range(200):
            h, w = rng.integers(28, 60, size=2)
            y, x = rng.integers(2, height - h - 2), rng.integers(2, width - w - 2)
            mask = _shape(cat, height, width, y, x, h, w)
            grown = np.zeros_like(taken)
            grown[max(0, y - 4) : y + h + 4, max(0, x - 4) : x + w + 4] = True
            if not (grown & taken).any():
                break
        taken |= mask
        image[mask] = (RED[cat], 40 + 15 * k, 0)
        masks.append(mask)
    return image, masks


def _shape(cat: int, height: int, width: int, y: int, x: int, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    if cat == 23:  # an ellipse
        cy, cx = y + h / 2, x + w / 2
        return ((yy - cy) / (h / 2)) ** 2 + ((xx - cx) / (w / 2)) ** 2 <= 1
    if cat == 61:  # a thin-ish bar
        h = max(12, h // 3)
    return (yy >= y) & (yy < y + h) & (xx >= x) & (xx < x + w)


def write_coco(folder: Path, name: str, scenes, first_image_id: int) -> Path:
    """Save scenes as PNGs and a COCO instance JSON (RLE masks, tight xywh boxes)."""
    folder.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i, (image, masks, cats) in enumerate(scenes):
        image_id = first_image_id + i
        file_name = f"{name}_{image_id}.png"
        Image.fromarray(image).save(folder / file_name)
        images.append({"id": image_id, "file_name": file_name, "height": image.shape[0], "width": image.shape[1]})
        for mask, cat in zip(masks, cats):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            ys, xs = np.nonzero(mask)
            box = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            anns.append(
                {
                    "id": len(anns) + 1 + 1000 * first_image_id,
                    "image_id": image_id,
                    "category_id": cat,
                    "segmentation": rle,
                    "bbox": box,
                    "area": int(mask.sum()),
                    "iscrowd": 0,
                }
            )
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": CATEGORIES}))
    return path


class OracleProposer(PerImageDecode):
    """Stands in for SAM2: proposes the true instance masks (from the green channel) plus distractors."""

    def __init__(self, image_size: int = 1024):
        self.image_size = image_size
        self.mask_size = image_size // 4
        self.name = "oracle-proposer"

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        t = torch.tensor(image).permute(2, 0, 1)[None].float() / 255.0
        return F.interpolate(t, size=(self.image_size,) * 2, mode="nearest")[0]

    def encode(self, images: torch.Tensor) -> dict:
        return {"images": images}

    def decode_points(self, feats: dict, index: int, coords: torch.Tensor, chunk: int):
        green = (feats["images"][index, 1] * 255).round()
        masks, ious = [], []
        for value in sorted(v for v in green.unique().tolist() if v > 0):
            true = (green == value).float()
            ys, xs = torch.nonzero(true, as_tuple=True)
            quad = true.clone()
            quad[: (ys.min() + ys.max()) // 2 + 1] = 0
            quad[:, : (xs.min() + xs.max()) // 2 + 1] = 0
            shifted = torch.roll(true, shifts=(8, 8), dims=(0, 1))
            masks += [true, quad, shifted]
            ious += [0.95, 0.90, 0.85]
        background = torch.zeros_like(green)
        background[:40, :40] = 1 - (green[:40, :40] > 0).float()
        masks += [background, torch.ones_like(green), torch.zeros_like(green)]
        ious += [0.93, 0.30, 0.99]
        frac = F.avg_pool2d(torch.stack(masks)[:, None], 4)[:, 0]
        return (frac - 0.5) * 20, torch.tensor(ious)


class OracleEncoder:
    """Stands in for DINOv2: patch features are the mean one-hot class of the patch's pixels."""

    name = "oracle-encoder"
    weights_id = "oracle"

    def __init__(self, image_size: int = 224, patch: int = 14):
        self.image_size = image_size
        self.grid = image_size // patch
        self.patch = patch
        self.dim = len(CATEGORIES)

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        return F.interpolate(images, size=(self.image_size,) * 2, mode="nearest")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        code = (images[:, 0] * 255 / 60).round().clamp(0, 3).long()  # 0 = background
        onehot = F.one_hot(code, 4)[..., 1:].permute(0, 3, 1, 2).float()  # background -> zeros
        pooled = F.avg_pool2d(onehot, self.patch)
        return pooled.permute(0, 2, 3, 1)


# Scenes of looks: each instance's features are a fixed direction per red value (dogs, cats, toys).
DOG, CAT = 7, 23
LOOKS = {  # red channel -> feature direction
    60: [1.0, 0.0, 0.0],  # the references' dogs
    120: [0.0, 0.0, 1.0],  # cats
    70: [0.7, -0.2, math.sqrt(1 - 0.49 - 0.04)],  # the target's dogs: cosine 0.7 to the dog prototype
    180: [0.75, math.sqrt(1 - 0.75**2), 0.0],  # a toy: cosine 0.75 to the dog prototype, 0 to cats
    190: [0.5, math.sqrt(1 - 0.25), 0.0],  # another toy: cosine 0.5 to the dog prototype
}


class LookEncoder(OracleEncoder):
    """Patch features: the mean look (``LOOKS``) of the patch's pixels, zero on the background."""

    def __init__(self):
        super().__init__(image_size=224, patch=14)
        self.dim = 3

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        red = (images[:, 0] * 255).round()
        feats = torch.zeros((*red.shape, 3))
        for value, look in LOOKS.items():
            feats[red == value] = torch.tensor(look)
        return F.avg_pool2d(feats.permute(0, 3, 1, 2), self.patch).permute(0, 2, 3, 1)


def look_scene(objects: list[tuple[int, int, int]]) -> tuple[np.ndarray, list[np.ndarray]]:
    """A 256 x 256 image with a 40-px square per (red, row, column) cell of a 4 x 4 layout; its masks."""
    image = np.zeros((256, 256, 3), np.uint8)
    masks = []
    for k, (red, row, col) in enumerate(objects):
        mask = np.zeros((256, 256), bool)
        mask[20 + 60 * row : 60 + 60 * row, 20 + 60 * col : 60 + 60 * col] = True
        image[mask] = (red, 30 + 20 * k, 0)  # green: the instance, for the oracle proposer
        masks.append(mask)
    return image, masks


def look_references(images: dict[str, list[tuple]], names: dict[int, str]) -> tuple[list, list]:
    """Look scenes as grading inputs: per image id, objects ``(red, row, col, labelled class or None, is a shot)``;
    returns the labelled images (``grading.LabelledImage``) and the shots (``Reference``) among them."""
    from ntt.grading.report import LabelledImage
    from ntt.types import Reference

    labelled, shots = [], []
    for image_id, objects in images.items():
        image, masks = look_scene([(red, row, col) for red, row, col, *_ in objects])
        cls = [(m, c, shot, k) for k, (m, (*_, c, shot)) in enumerate(zip(masks, objects)) if c is not None]
        labelled.append(LabelledImage(image_id, image, [m for m, *_ in cls], [c for _, c, *_ in cls]))
        shots += [
            Reference(image, c, names[c], m, image_id=image_id, annotation_id=f"{image_id}{k}")
            for m, c, s, k in cls
            if s
        ]
    return labelled, shots
