"""COCO files at the edges: references from instance JSONs, the paper's shot sampling, results export."""

from __future__ import annotations

import json
import logging
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from .geometry import xyxy_to_xywh
from .images import list_images
from .references import InvalidReferenceError
from .types import Instances, Reference

log = logging.getLogger(__name__)


def load_json(path: str | Path) -> dict[str, Any]:
    """Read a COCO instance JSON, with a clear error for a missing or malformed file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict) or "images" not in data:
        raise ValueError(f"{path}: not a COCO file (no 'images' list)")
    data.setdefault("annotations", [])
    data.setdefault("categories", [])
    return data


def resolve_image_root(json_path: str | Path, image_root: str | Path | None, data: dict) -> Path:
    """Where a COCO JSON's ``file_name`` entries live.

    Tries the given root, the JSON's folder, then the standard layout ``<root>/images/<split>`` for
    ``<root>/annotations/instances_<split>.json``.
    """
    if image_root is not None:
        return Path(image_root)
    json_path = Path(json_path)
    split = json_path.stem.split("_", 1)[-1]
    candidates = [json_path.parent, json_path.parent.parent / "images" / split, json_path.parent / split]
    first = data["images"][0]["file_name"] if data["images"] else None
    for root in candidates:
        if first is None or (root / first).is_file():
            return root
    raise FileNotFoundError(f"cannot find the images of {json_path}; pass their folder with --images")


def category_names(data: dict) -> dict[int, str]:
    return {int(c["id"]): str(c["name"]) for c in data["categories"]}


def select_categories(data: dict, classes: list[str] | None) -> list[int]:
    """Category ids named by ``classes`` (names or ids); all categories that have annotations if None."""
    names = category_names(data)
    if not classes:
        used = {int(a["category_id"]) for a in data["annotations"]}
        return sorted(c for c in names if c in used)
    by_name = {n.strip().lower(): i for i, n in names.items()}
    out = []
    for item in classes:
        key = str(item).strip().lower()
        if key in by_name:
            out.append(by_name[key])
        elif key.isdigit() and int(key) in names:
            out.append(int(key))
        else:
            raise InvalidReferenceError(f"class {item!r} is not a category of this file")
    return sorted(set(out))


def is_valid_shot(ann: dict, image: dict, min_size: float = 32, border: float = 10) -> bool:
    """The paper's sampling filter: not crowd, box at least 32x32 px, at least 10 px from every border."""
    x, y, w, h = ann["bbox"]
    return (
        not ann.get("iscrowd", 0)
        and w >= min_size
        and h >= min_size
        and x >= border
        and y >= border
        and x + w <= image["width"] - border
        and y + h <= image["height"] - border
    )


def sample_shots(data: dict, cat_ids: list[int], shots: int, seed: int, explicit: bool) -> list[dict]:
    """Annotations drawn by the paper's protocol: per class, shuffle with the seed, keep valid ones,
    one instance per image, stop at ``shots``. Fewer valid instances than ``shots`` gives a warning; none
    gives an error for explicitly requested classes and a warning (class dropped) otherwise."""
    rng = random.Random(seed)
    images = {img["id"]: img for img in data["images"]}
    by_cat: dict[int, list[dict]] = defaultdict(list)
    for ann in data["annotations"]:
        by_cat[int(ann["category_id"])].append(ann)
    names = category_names(data)
    picked, counts = [], {}
    for cat in cat_ids:
        pool = list(by_cat[cat])
        rng.shuffle(pool)
        chosen, seen = [], set()
        for ann in pool:
            if ann["image_id"] in seen or not is_valid_shot(ann, images[ann["image_id"]]):
                continue
            chosen.append(ann)
            seen.add(ann["image_id"])
            if len(chosen) == shots:
                break
        counts[names[cat]] = len(chosen)
        picked.extend(chosen)
    _report_shortfall(counts, shots, explicit)
    return picked


def _report_shortfall(counts: dict[str, int], wanted: int, explicit: bool) -> None:
    missing = [name for name, got in counts.items() if got == 0]
    if missing and explicit:
        raise InvalidReferenceError(
            f"class {missing[0]!r} has no valid reference (non-crowd, box >= 32 px, >= 10 px from the border)"
        )
    if missing:
        log.warning("%d class(es) have no valid reference and are left out: %s", len(missing), ", ".join(missing))
    short = [f"{name} ({got})" for name, got in counts.items() if 0 < got < wanted]
    if short:
        log.warning("%d class(es) have fewer than %d valid references: %s", len(short), wanted, ", ".join(short))


def all_annotations(data: dict, cat_ids: list[int], explicit: bool) -> list[dict]:
    """Every non-crowd annotation of the chosen categories (each one is a shot)."""
    names = category_names(data)
    wanted = set(cat_ids)
    anns = [a for a in data["annotations"] if a["category_id"] in wanted and not a.get("iscrowd", 0)]
    present = {a["category_id"] for a in anns}
    _report_shortfall({names[c]: int(c in present) for c in cat_ids}, 1, explicit)
    return anns


def references_from_coco(data: dict, image_root: Path, anns: list[dict], box_only: bool) -> list[Reference]:
    """References for COCO annotations; box-only when asked or when an annotation has no segmentation."""
    images = {img["id"]: img for img in data["images"]}
    names = category_names(data)
    refs = []
    for ann in anns:
        img = images[ann["image_id"]]
        mask = None
        if not box_only and ann.get("segmentation"):
            mask = annotation_mask(ann, img)
        refs.append(
            Reference(
                image=image_root / img["file_name"],
                class_id=int(ann["category_id"]),
                class_name=names[int(ann["category_id"])],
                mask=mask,
                box=[float(v) for v in ann["bbox"]],
                image_id=img["id"],
                annotation_id=ann.get("id"),
            )
        )
    return refs


def annotation_mask(ann: dict, image: dict) -> np.ndarray:
    """Decode a COCO segmentation (polygons, RLE or compressed RLE) to a bool (H, W) mask."""
    h, w = int(image["height"]), int(image["width"])
    seg = ann["segmentation"]
    try:
        if isinstance(seg, list):
            polys = [p for p in seg if len(p) >= 6]
            if not polys:
                raise ValueError("polygons have fewer than 3 points")
            rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
        elif isinstance(seg.get("counts"), list):
            rle = mask_utils.frPyObjects(seg, h, w)
        else:
            rle = seg
        return mask_utils.decode(rle).astype(bool)
    except (ValueError, TypeError, KeyError) as err:
        raise InvalidReferenceError(f"annotation {ann.get('id')}: bad segmentation ({err})") from err


def targets_from_dir(directory: str | Path) -> list[tuple[int, Path]]:
    """(image id, path) for the images of a folder: numeric file stems are the ids, else 1..N."""
    paths = list_images(directory)
    stems = [p.stem for p in paths]
    if all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems):
        return [(int(p.stem), p) for p in paths]
    return [(i + 1, p) for i, p in enumerate(paths)]


def targets_from_json(data: dict, image_root: Path) -> list[tuple[int, Path]]:
    return [(img["id"], image_root / img["file_name"]) for img in data["images"]]


def instances_to_results(image_id: int, inst: Instances, box_inclusive: bool = False) -> list[dict]:
    """COCO result dicts for one image: RLE masks, xywh boxes, bank category ids, scores.

    ``box_inclusive`` reproduces the research code's 1-px-short boxes (w = x_max - x_min).
    """
    if len(inst) == 0:
        return []
    boxes = xyxy_to_xywh(inst.boxes)
    if box_inclusive:
        boxes[:, 2:] -= 1
    results = []
    for i, (box, score, cat) in enumerate(zip(boxes, inst.scores, inst.class_ids)):
        # One full-size mask at a time: memory stays at one image, whatever the number of instances.
        rle = mask_utils.encode(np.asfortranarray(inst.mask(i).astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        results.append(
            {
                "image_id": int(image_id),
                "category_id": int(cat),
                "bbox": [round(float(v), 2) for v in box],
                "score": round(float(score), 5),
                "segmentation": rle,
            }
        )
    return results
