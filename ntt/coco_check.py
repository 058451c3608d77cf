"""Reading and checking the COCO files users give: one ``CocoFormatError`` line naming the file, the entry and
the field, before any work starts (no traceback, no silently dropped annotation)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

MAX_SIDE = 1_000_000  # pixels: larger image sizes are typos, not images
log = logging.getLogger(__name__)


class CocoFormatError(ValueError):
    """A COCO file is unreadable or malformed; the message names the file, the entry and what is wrong."""


def read_json(path: str | Path) -> Any:
    """Parse a JSON file with one clear error for every way it can fail."""
    path = Path(path)
    if path.is_dir():
        raise CocoFormatError(f"{path}: is a directory, not a JSON file")
    try:
        text = path.read_bytes().decode("utf-8")
        return json.loads(text)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except PermissionError as err:
        raise CocoFormatError(f"{path}: not readable ({err.strerror})") from err
    except UnicodeDecodeError as err:
        raise CocoFormatError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start})") from err
    except json.JSONDecodeError as err:
        raise CocoFormatError(f"{path}: not valid JSON ({err})") from err
    except RecursionError as err:
        raise CocoFormatError(f"{path}: JSON nested too deeply to be a COCO file") from err


def check_instances(data: Any, path: str | Path, kind: str = "references") -> dict[str, Any]:
    """Check a COCO instance JSON and return it with ``annotations`` / ``categories`` defaulted to [].

    Args:
        kind: what the file is used for.
            "references": everything is checked; a repeated annotation id is an error (ids name shots).
            "ground truth": the same, but an annotation whose id repeats an earlier one gets a new id (with a
            warning): pycocotools indexes annotations by id, so a repeated id silently swaps one image's
            object for another's.
            "targets": only the images are read (ids, file names), so only they are checked.
    Raises:
        CocoFormatError: the first problem found, e.g. ``annotations[12] (id 7): category_id must be an
            integer, got '3'``.
    """
    where = Path(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise CocoFormatError(f"{where}: not a COCO file (no 'images' list)")
    for key in ("annotations", "categories"):
        data.setdefault(key, [])
        if not isinstance(data[key], list):
            raise CocoFormatError(f"{where}: '{key}' must be a list, got {type(data[key]).__name__}")
    if kind not in ("references", "ground truth", "targets"):
        raise ValueError(f"unknown kind of COCO file {kind!r}")
    images = _check_images(data["images"], where, need_sizes=kind != "targets")
    if kind != "targets":
        categories = _check_categories(data["categories"], where)
        _check_annotations(data["annotations"], where, images, categories, renumber=kind == "ground truth")
    return data


def _check_images(images: list, where: Path, need_sizes: bool) -> dict[int, dict]:
    seen: dict[int, dict] = {}
    for i, img in enumerate(images):
        entry = _entry(where, "images", i, img)
        image_id = _int(img, "id", entry)
        if image_id in seen:
            raise CocoFormatError(f"{entry}: duplicate image id {image_id}")
        name = img.get("file_name")
        if not isinstance(name, str) or not name.strip():
            raise CocoFormatError(f"{entry}: file_name must be a non-empty string, got {name!r}")
        for key in ("width", "height"):
            if need_sizes or key in img:
                side = _int(img, key, entry)
                if not 0 < side <= MAX_SIDE:
                    raise CocoFormatError(f"{entry}: {key} must be between 1 and {MAX_SIDE}, got {side}")
        seen[image_id] = img
    return seen


def _check_categories(categories: list, where: Path) -> dict[int, str]:
    names: dict[int, str] = {}
    ids_by_name: dict[str, int] = {}
    for i, cat in enumerate(categories):
        entry = _entry(where, "categories", i, cat)
        cat_id = _int(cat, "id", entry)
        name = cat.get("name")
        if not isinstance(name, str) or not name.strip():
            raise CocoFormatError(f"{entry}: name must be a non-empty string, got {name!r}")
        if cat_id in names:
            raise CocoFormatError(f"{entry}: category id {cat_id} appears twice ({names[cat_id]!r} and {name!r})")
        if name in ids_by_name:
            raise CocoFormatError(f"{entry}: category name {name!r} has two ids ({ids_by_name[name]} and {cat_id})")
        names[cat_id], ids_by_name[name] = name, cat_id
    return names


def _check_annotations(anns: list, where: Path, images: dict, categories: dict, renumber: bool) -> None:
    seen: set[int] = set()
    repeated = []
    for i, ann in enumerate(anns):
        entry = _entry(where, "annotations", i, ann)
        ann_id = _int(ann, "id", entry)
        if ann_id in seen and not renumber:
            raise CocoFormatError(f"{entry}: duplicate annotation id {ann_id}")
        if ann_id in seen:
            repeated.append(ann)
        seen.add(ann_id)
        if _int(ann, "image_id", entry) not in images:
            raise CocoFormatError(f"{entry}: image_id {ann['image_id']} is not in the file's images")
        if _int(ann, "category_id", entry) not in categories:
            raise CocoFormatError(f"{entry}: category_id {ann['category_id']} is not in the file's categories")
        _check_box(ann.get("bbox"), entry)
        if ann.get("iscrowd", 0) not in (0, 1, True, False):
            raise CocoFormatError(f"{entry}: iscrowd must be 0 or 1, got {ann['iscrowd']!r}")
        _check_segmentation(ann.get("segmentation"), entry)
    if repeated:
        log.warning("%s: %d annotation id(s) repeat an earlier one; given new ids", where, len(repeated))
        for new_id, ann in enumerate(repeated, start=max(seen) + 1):
            ann["id"] = new_id


def _check_box(box: Any, entry: str) -> None:
    if not isinstance(box, list) or len(box) != 4 or not all(_finite(v) for v in box):
        raise CocoFormatError(f"{entry}: bbox must be [x, y, width, height] of 4 finite numbers, got {box!r}")
    if box[2] < 0 or box[3] < 0 or max(abs(v) for v in box) > MAX_SIDE:
        raise CocoFormatError(f"{entry}: bbox {box} has a negative or absurd size")


def _check_segmentation(seg: Any, entry: str) -> None:
    """Polygons (lists of x, y numbers) or an RLE dict with ``size`` and ``counts``; absent or empty is fine."""
    if seg is None or seg == []:
        return
    if isinstance(seg, list):
        for poly in seg:
            if not isinstance(poly, list) or len(poly) % 2 or not all(_finite(v) for v in poly):
                raise CocoFormatError(f"{entry}: segmentation polygons must be lists of x, y numbers")
        return
    if isinstance(seg, dict):
        size = seg.get("size")
        counts = seg.get("counts")
        good_size = isinstance(size, list) and len(size) == 2 and all(_is_int(v) and v > 0 for v in size)
        if good_size and (isinstance(counts, str) or (isinstance(counts, list) and all(_is_int(c) for c in counts))):
            return
        raise CocoFormatError(f"{entry}: segmentation RLE needs 'size' [height, width] and 'counts'")
    raise CocoFormatError(f"{entry}: segmentation must be polygons or an RLE dict, got {type(seg).__name__}")


def category_names(data: dict) -> dict[int, str]:
    """Category id -> name of a (checked) COCO instance JSON."""
    return {int(c["id"]): str(c["name"]) for c in data["categories"]}


def check_results(results: Any, path: str | Path) -> list[dict[str, Any]]:
    """Check a COCO results list (``image_id``, ``category_id``, ``score``, ``bbox``; ``segmentation`` RLE)."""
    where = Path(path)
    if not isinstance(results, list):
        raise CocoFormatError(f"{where}: a COCO results file is a JSON list")
    for i, res in enumerate(results):
        entry = _entry(where, "results", i, res)
        _int(res, "image_id", entry)
        _int(res, "category_id", entry)
        if not _finite(res.get("score")):
            raise CocoFormatError(f"{entry}: score must be a finite number, got {res.get('score')!r}")
        _check_box(res.get("bbox"), entry)
        _check_segmentation(res.get("segmentation"), entry)
    return results


def _entry(where: Path, key: str, index: int, item: Any) -> str:
    if not isinstance(item, dict):
        raise CocoFormatError(f"{where}: {key}[{index}] must be an object, got {type(item).__name__}")
    ident = item.get("id")
    return f"{where}: {key}[{index}]" + (f" (id {ident!r})" if ident is not None else "")


def _int(item: dict, key: str, entry: str) -> int:
    if key not in item:
        raise CocoFormatError(f"{entry}: missing '{key}'")
    value = item[key]
    if not _is_int(value):
        raise CocoFormatError(f"{entry}: {key} must be an integer, got {value!r}")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
