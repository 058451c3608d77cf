"""Grading (leave-one-out over a bank's own references) as the bank grows: wall time and peak memory.

For each size it builds a bank from the first N annotated COCO128 train images (every non-crowd instance a shot)
and grades it in a fresh process, then prints one row per size: images, shots, classes, wall seconds of the
grading (models built, bank built before the clock starts), the child's peak RSS (``ru_maxrss`` from
``os.wait4``), the size of one mask pool, and how many times an image was finished with a bank in full
(``Predictor.finish``) and again with a bank without one shot, only its changed classes (``ntt.grading.refinish``).

The pools are the paper's grid-prompt pools: 32 x 32 prompts, 256 x 256 float logits each (SAM2 at 1024 px). No
real SAM2 checkpoint can be read here and random SAM2 weights give full-frame noise masks (and take ~20 s per
image for 1,024 prompts on this CPU), so the proposer answers each prompt with the image's annotated instance
under it (its signed distance to the edge, in cells) or, on the background, a disc of background around it, as
``scripts/cache_size.py`` does. The encoder is either

- ``semantic`` (default): patch features that say the class (a direction per COCO category, shared with a
  common one, plus a per-instance one; smooth random background), so classes are predicted where they are,
  at low scores elsewhere, as with DINOv2; shot features are each instance's own feature;
- ``random``: DINOv2 ViT-S/14 at 224 px with random weights (the smoke preset's), bank built from its
  features: every class looks like every other, so a shot's class may be predicted on every image (the worst
  case for ``leave_one_out``).

    .venv/bin/python scripts/grade_scale.py --images 4 8 16 32
    .venv/bin/python scripts/grade_scale.py --images 4 8 --old /tmp/old_grading.py   # another grading module
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NTT_TEST_DATA", ROOT.parent / "shared" / "data")) / "coco128-seg"
REFS = DATA / "annotations" / "instances_train2017.json"
SIDE, SAM_SIZE, LOW_RES = 32, 1024, 256


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[4, 8, 16, 32], help="bank sizes (images)")
    parser.add_argument("--encoder", choices=["semantic", "random"], default="semantic")
    parser.add_argument("--old", type=Path, default=None, help="grade with this file's grading module instead")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.encoder, args.old)))
        return 0
    print(f"encoder {args.encoder}, grading module {args.old or 'ntt.grading.report'}, {os.cpu_count()} CPU cores")
    print("| images | shots | classes | wall s | peak RSS MB | one pool MB | full finishes | re-finishes |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.images:
        command = [sys.executable, __file__, "--child", str(n), "--encoder", args.encoder]
        command += ["--old", str(args.old)] if args.old else []
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        if status != 0:
            print(f"| {n} | failed (status {status}) |")
            continue
        row = json.loads(out.strip().splitlines()[-1])
        rss = usage.ru_maxrss / 1024  # KiB on Linux
        print(
            f"| {n} | {row['shots']} | {row['classes']} | {row['seconds']:.1f} | {rss:,.0f} | {row['pool_mb']:.0f} "
            f"| {row['finishes']} | {row['refinishes']} |",
            flush=True,
        )
    return 0


def child(n: int, encoder_kind: str, old: Path | None) -> dict:
    """Build the bank of the first ``n`` images, grade it, and say what it took."""
    import torch

    from ntt.config import get_config
    from ntt.io import coco
    from ntt.predict.predictor import Predictor

    torch.manual_seed(0)
    data = coco.load_json(REFS)
    images = data["images"][:n]
    small_dinov2 = {"dinov2": "dinov2_vits14", "dinov2_image_size": 224}  # the smoke preset's
    cfg = get_config("paper", {"model": {"device": "cpu", "random_weights": encoder_kind == "random", **small_dinov2}})
    scenes = Scenes(data, images)
    proposer = ScenesProposer(scenes)
    encoder, bank = scenes.bank(cfg, encoder_kind)
    labelled = [scenes.labelled(img, bank) for img in images]
    sizes = []
    real = Predictor.mask_pools

    def measured(self, *a, **kw):
        pools = real(self, *a, **kw)
        sizes.extend(sum(t.numel() * t.element_size() for t in (p.logits, p.iou, p.embeddings, p.boxes)) for p in pools)
        return pools

    Predictor.mask_pools = measured
    finishes = _count_calls(Predictor, "finish")
    refinishes = _count_calls(_refinisher(), "finish")
    grading = _grading_module(old)
    start = time.perf_counter()
    grading.grade(bank, labelled, cfg, proposer=proposer, encoder=encoder)
    seconds = time.perf_counter() - start
    return {
        "shots": len(bank.shots),
        "classes": len(bank.classes),
        "seconds": seconds,
        "pool_mb": max(sizes, default=0) / 2**20,
        "finishes": len(finishes),
        "refinishes": len(refinishes),
    }


def _count_calls(owner, name: str) -> list:
    """Count calls of ``owner.name`` (a method) in the returned list."""
    calls, real = [], getattr(owner, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    setattr(owner, name, counted)
    return calls


def _refinisher():
    try:
        from ntt.grading.refinish import Refinisher
    except ImportError:  # an older grading module has none
        return type("NoRefinisher", (), {"finish": lambda self: None})
    return Refinisher


def _grading_module(path: Path | None):
    if path is None:
        from ntt.grading import report as grading

        return grading
    spec = importlib.util.spec_from_file_location("ntt._graded_by", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class Scenes:
    """The chosen images with their annotations: instance masks at full and low resolution, and the semantic
    encoder's feature of each class and instance."""

    def __init__(self, data: dict, images: list[dict], dim: int = 384):
        from ntt.io import coco

        rng = np.random.default_rng(0)
        self.dim = dim
        ids = {img["id"] for img in images}
        self.anns = {img["id"]: [] for img in images}
        for ann in data["annotations"]:
            if ann["image_id"] in ids and not ann.get("iscrowd"):
                self.anns[ann["image_id"]].append(ann)
        self.images = {img["id"]: img for img in images}
        self.masks = {
            i: [coco.instance_mask(a, self.images[i]) for a in anns] for i, anns in self.anns.items()
        }  # full-res bool
        common = rng.standard_normal(dim)
        cats = sorted(c["id"] for c in data["categories"])
        self.class_dirs = {c: _unit(0.6 * common + rng.standard_normal(dim)) for c in cats}
        self.instance_dirs = {
            a["id"]: _unit(self.class_dirs[a["category_id"]] + 0.45 * _unit(rng.standard_normal(dim)))
            for anns in self.anns.values()
            for a in anns
        }
        self.common = _unit(common)
        self.by_digest: dict[str, int] = {}
        for i, img in self.images.items():
            from ntt.io.images import load_image

            self.by_digest[_digest(load_image(DATA / "images" / "train2017" / img["file_name"]))] = i

    def path(self, image_id: int) -> Path:
        return DATA / "images" / "train2017" / self.images[image_id]["file_name"]

    def labelled(self, img: dict, bank):
        from ntt.grading.report import LabelledImage

        anns = self.anns[img["id"]]
        return LabelledImage(img["id"], self.path(img["id"]), self.masks[img["id"]], [a["category_id"] for a in anns])

    def low_res(self, image_id: int) -> list[np.ndarray]:
        """The image's instance masks on the decoder's 256 x 256 grid (over the whole stretched image)."""
        import torch
        import torch.nn.functional as F

        out = []
        for mask in self.masks[image_id]:
            small = F.interpolate(torch.from_numpy(mask.astype(np.float32))[None, None], size=(LOW_RES,) * 2)
            out.append(small[0, 0].numpy() > 0.5)
        return out

    def feature_map(self, image_id: int, grid: int) -> np.ndarray:
        """float32 (grid, grid, D): the semantic encoder's patch features of an image (instance features on
        their pixels, a smooth random field elsewhere), averaged per patch."""
        rng = np.random.default_rng(image_id)
        fine = 4 * grid
        yy, xx = np.mgrid[:fine, :fine] / fine
        blobs = [_unit(0.6 * self.common + rng.standard_normal(self.dim)) for _ in range(4)]
        weights = np.stack([np.exp(-((yy - rng.random()) ** 2 + (xx - rng.random()) ** 2) * 8) for _ in blobs])
        field = np.einsum("kyx,kd->yxd", weights / weights.sum(0), np.stack(blobs))
        import torch
        import torch.nn.functional as F

        for ann, mask in zip(self.anns[image_id], self.masks[image_id]):
            small = F.interpolate(torch.from_numpy(mask.astype(np.float32))[None, None], size=(fine, fine))
            field[small[0, 0].numpy() > 0.5] = self.instance_dirs[ann["id"]]
        return field.reshape(grid, 4, grid, 4, self.dim).mean((1, 3)).astype(np.float32)

    def bank(self, cfg, kind: str):
        """The encoder and the bank of every instance of the images (each one a shot)."""
        from ntt.bank.encoder import build_bank
        from ntt.bank.memory import MemoryBank
        from ntt.models import encoder_identity, get_dinov2
        from ntt.types import Reference

        names = {}
        refs = []
        for i, anns in self.anns.items():
            for ann, mask in zip(anns, self.masks[i]):
                names[ann["category_id"]] = str(ann["category_id"])
                refs.append(
                    Reference(self.path(i), ann["category_id"], names[ann["category_id"]], mask, None, i, ann["id"])
                )
        if kind == "random":
            encoder = get_dinov2(cfg.model)
            return encoder, build_bank(refs, cfg, encoder=encoder)
        encoder = SemanticEncoder(self)
        feats = np.stack([self.instance_dirs[r.annotation_id] for r in refs]).astype(np.float32)
        bank = MemoryBank(
            classes=[{"id": c, "name": names[c]} for c in sorted(names)],
            shot_features=feats,
            shot_class_ids=np.array([r.class_id for r in refs]),
            shots=[r.provenance() for r in refs],
            encoder=encoder_identity(encoder, cfg.model),
        )
        return encoder, bank


class ScenesProposer:
    """Stands in for SAM2 with grid prompts: each prompt's mask is the smallest annotated instance under it, or a
    disc of background (radius 20 to 90 cells) around it; logits are 1.5 x the signed distance to the mask's
    edge in cells, clipped to [-32, 24]; predicted IoUs are random in [0.5, 1]."""

    name = fingerprint = "scenes-proposer"
    image_size, mask_size = SAM_SIZE, LOW_RES

    def __init__(self, scenes: Scenes):
        self.scenes = scenes

    def prepare(self, image: np.ndarray):
        import torch
        import torch.nn.functional as F

        t = torch.tensor(image).permute(2, 0, 1)[None].float() / 255.0
        out = F.interpolate(t, size=(SAM_SIZE, SAM_SIZE), mode="bilinear", align_corners=False)[0]
        out[0, 0, 0] = self.scenes.by_digest[_digest(image)] + 10.0  # the image's id, for decode_batch
        return out

    def encode(self, images):
        return {"images": images}

    def decode_batch(self, feats, prompts, chunk, compiled=False):
        return [self._decode(int(image[0, 0, 0]) - 10, coords) for image, coords in zip(feats["images"], prompts)]

    def _decode(self, image_id: int, coords):
        import torch
        from scipy import ndimage

        rng = np.random.default_rng(image_id)
        masks = self.scenes.low_res(image_id)
        areas = [int(m.sum()) for m in masks]
        things = np.any(masks, axis=0) if masks else np.zeros((LOW_RES, LOW_RES), bool)
        outside = -(ndimage.distance_transform_edt(~things) - ndimage.distance_transform_edt(things))
        distances = {}
        yy, xx = np.mgrid[:LOW_RES, :LOW_RES]
        logits = np.empty((len(coords), LOW_RES, LOW_RES), np.float32)
        for k, (px, py) in enumerate((coords.cpu().numpy() * LOW_RES / SAM_SIZE).tolist()):
            under = [j for j, m in enumerate(masks) if m[min(int(py), LOW_RES - 1), min(int(px), LOW_RES - 1)]]
            if under:
                j = min(under, key=lambda j: areas[j])
                if j not in distances:
                    m = masks[j]
                    distances[j] = ndimage.distance_transform_edt(m) - ndimage.distance_transform_edt(~m)
                distance = distances[j]
            else:
                disc = rng.uniform(20, 90) - np.sqrt((yy - py) ** 2 + (xx - px) ** 2)
                distance = np.minimum(disc, outside)
            logits[k] = np.clip(1.5 * distance, -32, 24)
        iou = rng.uniform(0.5, 1.0, len(coords)).astype(np.float32)
        return torch.from_numpy(logits), torch.from_numpy(iou)


class SemanticEncoder:
    """Stands in for DINOv2 (ViT-S/14 at 224 px: a 16 x 16 grid of 384-d features): ``Scenes.feature_map``."""

    name, weights_id, fingerprint, image_size, dim, grid = "scenes-encoder", "scenes", "scenes", 224, 384, 16

    def __init__(self, scenes: Scenes):
        self.scenes = scenes

    def resize(self, images):
        return images  # the image id rides in the first pixel

    def __call__(self, images):
        import torch

        maps = [self.scenes.feature_map(int(image[0, 0, 0]) - 10, self.grid) for image in images]
        return torch.from_numpy(np.stack(maps))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _digest(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


if __name__ == "__main__":
    sys.exit(main())
