"""COCO files at the edges: instance JSONs, categories, references, targets, results export.

The paper's shot sampling and the named class splits live in ``ntt.bank.sampling``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from ntt.geometry import xyxy_to_xywh
from ntt.io.coco_check import WRITTEN_ID, category_names, check_instances, check_results, read_json
from ntt.io.images import list_images
from ntt.types import Instances, InvalidReferenceError, Reference

log = logging.getLogger(__name__)


def load_json(path: str | Path, kind: str = "references") -> dict[str, Any]:
    """Read and check a COCO instance JSON (``ntt.io.coco_check.check_instances``): one ``CocoFormatError``
    naming the file, entry and field for anything malformed.

    Args:
        kind: "references", "ground truth" or "targets" (only the images are checked and used).
    """
    return check_instances(read_json(path), path, kind)


def load_json_file(path: str | Path) -> Any:
    """Any JSON file (e.g. a sidecar), with the same clear errors as ``load_json``."""
    return read_json(path)


def load_results(path: str | Path) -> list[dict[str, Any]]:
    """Read and check a COCO results file (a JSON list of detections)."""
    return check_results(read_json(path), path)


def resolve_image_root(
    json_path: str | Path, image_root: str | Path | None, data: dict, flag: str = "--images"
) -> Path:
    """Where a COCO JSON's ``file_name`` entries live.

    Tries the given root, the JSON's folder, then the standard layout ``<root>/images/<split>`` for
    ``<root>/annotations/instances_<split>.json``: the first where one of the first images is (a missing image
    is then skipped or named by the command, not taken for a wrong folder). ``flag``: the option that gives the
    folder, for the message.
    """
    if image_root is not None:
        return Path(image_root)
    json_path = Path(json_path)
    split = json_path.stem.split("_", 1)[-1]
    candidates = [json_path.parent, json_path.parent.parent / "images" / split, json_path.parent / split]
    names = [img["file_name"] for img in data["images"][:20]]
    for root in candidates:
        if not names or any((root / name).is_file() for name in names):
            return root
    raise FileNotFoundError(f"cannot find the images of {json_path} (e.g. {names[0]}); pass their folder with {flag}")


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


def references_from_coco(data: dict, image_root: Path, anns: list[dict], box_only: bool) -> list[Reference]:
    """References for COCO annotations; box-only when asked or when an annotation has no segmentation.

    A shot's ``annotation_id`` is the id its file wrote, even where ``check_instances`` renumbered a repeated one.
    """
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
                annotation_id=ann.get(WRITTEN_ID, ann.get("id")),
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
        mask = mask_utils.decode(rle).astype(bool)
    except (ValueError, TypeError, KeyError, OverflowError) as err:
        raise InvalidReferenceError(f"annotation {ann.get('id')}: bad segmentation ({err})") from err
    if mask.shape != (h, w):  # an RLE carries its own size
        raise InvalidReferenceError(f"annotation {ann.get('id')}: segmentation size {list(mask.shape)} is not {[h, w]}")
    return mask


def instance_mask(ann: dict, image: dict) -> np.ndarray:
    """An annotation's bool (H, W) mask: its segmentation, or its box filled when it has none."""
    if ann.get("segmentation"):
        return annotation_mask(ann, image)
    mask = np.zeros((int(image["height"]), int(image["width"])), bool)
    x, y, w, h = (round(float(v)) for v in ann["bbox"])
    mask[max(0, y) : max(0, y + h), max(0, x) : max(0, x + w)] = True
    return mask


def targets_from_dir(directory: str | Path) -> list[tuple[int, Path]]:
    """(image id, path) for the images of a folder, sorted by name.

    A numeric file stem is the image's id (COCO's ``000000000139.jpg`` -> 139); other files, and a second
    file with the same number, get the next ids after the largest one, so one odd file name never renumbers
    the others. The sidecar of ``ntt segment`` records this map.
    """
    paths = list_images(directory)
    numbered = {int(p.stem): p for p in reversed(paths) if _is_number(p.stem)}  # first file of a number wins
    next_id = max(numbered, default=0) + 1
    out = []
    for path in paths:
        if _is_number(path.stem) and numbered[int(path.stem)] == path:
            out.append((int(path.stem), path))
        else:
            out.append((next_id, path))
            next_id += 1
    return out


def _is_number(stem: str) -> bool:
    """An image id written as a file name: ASCII digits only ("²" and "١٢" are digits to ``str.isdigit``), at most
    18 of them (an int64)."""
    return stem.isascii() and stem.isdigit() and len(stem) <= 18


def targets_from_json(data: dict, image_root: Path) -> list[tuple[int, Path]]:
    return [(img["id"], image_root / img["file_name"]) for img in data["images"]]


def instances_to_results(
    image_id: int, inst: Instances, box_inclusive: bool = False, shots: list[dict] | None = None
) -> list[dict]:
    """COCO result dicts for one image: RLE masks, xywh boxes, bank category ids, scores, and why each was found
    (``explain``: extra keys that COCO tools ignore).

    ``box_inclusive`` reproduces the research code's 1-px-short boxes (w = x_max - x_min). ``shots``: the
    bank's shots, to name each detection's nearest one.
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
                **explain(inst, i, shots),
            }
        )
    return results


def explain(inst: Instances, i: int, shots: list[dict] | None) -> dict[str, Any]:
    """Instance ``i``'s provenance (``Instances.details``) as plain values: ``shot_image_id`` and
    ``shot_annotation_id`` of its nearest shot (with ``shots``), the cosines, margin and SAM's IoU."""
    found = {k: round(float(v[i]), 4) for k, v in inst.details.items() if k != "shot"}
    if shots is not None and "shot" in inst.details:
        shot = shots[int(inst.details["shot"][i])]
        found = {"shot_image_id": shot.get("image_id"), "shot_annotation_id": shot.get("annotation_id"), **found}
    return found
