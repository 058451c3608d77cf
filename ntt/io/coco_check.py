"""Reading and checking the COCO files users give: one ``CocoFormatError`` line naming the file, the entry and
the field, before any work starts (no traceback, no silently dropped annotation).

pycocotools trusts its input: an RLE whose counts fall short of height x width decodes to uninitialised memory,
a polygon point near 1e30 crashes the process, a missing ``area`` or an empty polygon list stops the evaluation
with a traceback. Everything pycocotools, numpy or torch would choke on is refused here instead."""

from __future__ import annotations

import json
import logging
import math
import reprlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from ntt.io.inputs import InputFileError, regular_file
from ntt.io.rle import compressed_rle_totals

MAX_SIDE = 1_000_000  # pixels: larger image sizes are typos, not images
# Pixels per image: more than Pillow opens by default, and every RLE run of such an image fits the 6-character
# numbers that pycocotools decodes exactly (its 7-character ones overflow a C int).
MAX_PIXELS = 500_000_000
MAX_ID = 2**63 - 1  # ids are stored as int64 (numpy, torch, safetensors)
RLE_BATCH_CHARS = 2_000_000  # characters of compressed RLEs decoded in one numpy pass: bounds its memory
SHOWN_RENUMBERED = 5  # renumbered annotations named in the warning
WRITTEN_ID = "ntt_written_id"  # a renumbered annotation's id as its file wrote it
log = logging.getLogger(__name__)
_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlist, _short.maxlong = 60, 60, 8, 60


class CocoFormatError(ValueError):
    """A COCO file is unreadable or malformed; the message names the file, the entry and what is wrong."""


def read_json(path: str | Path) -> Any:
    """Parse a JSON file with one clear error for every way it can fail."""
    path = Path(path)
    try:
        regular_file(path, "JSON file")  # never read a pipe or a device: it may never end
    except InputFileError as err:
        raise CocoFormatError(str(err)) from None
    try:
        text = path.read_bytes().decode("utf-8")
        return json.loads(text)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except PermissionError as err:
        raise CocoFormatError(f"{path}: not readable ({err.strerror})") from err
    except UnicodeDecodeError as err:
        raise CocoFormatError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start})") from err
    except RecursionError as err:
        raise CocoFormatError(f"{path}: JSON nested too deeply to be a COCO file") from err
    except ValueError as err:  # JSONDecodeError, and integers of more than 4300 digits
        raise CocoFormatError(f"{path}: not valid JSON ({err})") from err


def check_instances(data: Any, path: str | Path, kind: str = "references") -> dict[str, Any]:
    """Check a COCO instance JSON and return it with ``annotations`` / ``categories`` defaulted to [].

    Every id must be an integer in [0, 2**63 - 1]; an RLE's counts must add up to its size, which must be its
    image's [height, width]; polygon points must lie within one image size of the image.

    An annotation whose id repeats an earlier one gets a new unique id (one warning names them all):
    pycocotools indexes annotations by id, so a repeated id silently swaps one image's object for another's.
    The id as written stays in ``ann["ntt_written_id"]``; a reference shot's provenance keeps that one.

    Args:
        kind: what the file is used for.
            "references": images, categories and annotations are checked.
            "ground truth": the same, and every annotation needs a segmentation pycocotools can evaluate;
            a missing ``area`` is set to the segmentation's pixel count (with a warning).
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
        _check_annotations(data["annotations"], where, images, categories, ground_truth=kind == "ground truth")
    return data


def _check_images(images: list, where: Path, need_sizes: bool) -> dict[int, dict]:
    seen: dict[int, dict] = {}
    for i, img in enumerate(images):
        entry = _entry(where, "images", i, img)
        image_id = _id(img, "id", entry)
        if image_id in seen:
            raise CocoFormatError(f"{entry}: duplicate image id {image_id}")
        name = img.get("file_name")
        if not isinstance(name, str) or not name.strip():
            raise CocoFormatError(f"{entry}: file_name must be a non-empty string, got {_show(name)}")
        if "\0" in name:  # no file system accepts it; Path() would raise far from here
            raise CocoFormatError(f"{entry}: file_name {_show(name)} contains a NUL character")
        sides = [_side(img, key, entry) for key in ("height", "width") if need_sizes or key in img]
        if len(sides) == 2 and sides[0] * sides[1] > MAX_PIXELS:
            raise CocoFormatError(f"{entry}: {sides[0]} x {sides[1]} is more than {MAX_PIXELS:,} pixels")
        seen[image_id] = img
    return seen


def _side(img: dict, key: str, entry: str) -> int:
    side = _int(img, key, entry)
    if not 0 < side <= MAX_SIDE:
        raise CocoFormatError(f"{entry}: {key} must be between 1 and {MAX_SIDE}, got {side}")
    return side


def _check_categories(categories: list, where: Path) -> dict[int, str]:
    names: dict[int, str] = {}
    ids_by_name: dict[str, int] = {}
    for i, cat in enumerate(categories):
        entry = _entry(where, "categories", i, cat)
        cat_id = _id(cat, "id", entry)
        name = cat.get("name")
        if not isinstance(name, str) or not name.strip():
            raise CocoFormatError(f"{entry}: name must be a non-empty string, got {_show(name)}")
        if cat_id in names:
            raise CocoFormatError(
                f"{entry}: category id {cat_id} appears twice ({_show(names[cat_id])} and {_show(name)})"
            )
        if name in ids_by_name:
            raise CocoFormatError(
                f"{entry}: category name {_show(name)} has two ids ({ids_by_name[name]} and {cat_id})"
            )
        names[cat_id], ids_by_name[name] = name, cat_id
    return names


def _check_annotations(anns: list, where: Path, images: dict, categories: dict, ground_truth: bool) -> None:
    seen: set[int] = set()
    repeated: list[int] = []  # indices of annotations whose id repeats an earlier one
    no_area: list[int] = []
    strings: list[tuple[str, str, list[int]]] = []  # compressed RLEs, checked together at the end (fast)
    for i, ann in enumerate(anns):
        entry = _entry(where, "annotations", i, ann)
        ann.pop(WRITTEN_ID, None)  # ntt's own key, set below: never taken from a file
        ann_id = _id(ann, "id", entry)
        if ann_id in seen:
            repeated.append(i)
        seen.add(ann_id)
        if _id(ann, "image_id", entry) not in images:
            raise CocoFormatError(f"{entry}: image_id {ann['image_id']} is not in the file's images")
        if _id(ann, "category_id", entry) not in categories:
            raise CocoFormatError(f"{entry}: category_id {ann['category_id']} is not in the file's categories")
        _check_box(ann.get("bbox"), entry)
        if ann.get("iscrowd", 0) not in (0, 1, True, False):
            raise CocoFormatError(f"{entry}: iscrowd must be 0 or 1, got {_show(ann['iscrowd'])}")
        image = images[ann["image_id"]]
        _check_segmentation(ann.get("segmentation"), entry, (image["height"], image["width"]), strings)
        if ground_truth:
            _check_evaluable(ann, entry)
            if "area" not in ann:
                no_area.append(i)
    _check_compressed_rles(strings)
    _set_areas(anns, no_area, images, where)
    _renumber(anns, repeated, seen, where, "" if ground_truth else " (shots keep the written id)")


def _renumber(anns: list, repeated: list[int], seen: set[int], where: Path, note: str) -> None:
    """Give repeated annotation ids new unique ones, keeping the written id under ``WRITTEN_ID``."""
    if not repeated:
        return
    changes = []
    for i, new_id in zip(repeated, _unused_ids(seen, len(repeated))):
        ann = anns[i]
        ann[WRITTEN_ID] = ann["id"]
        changes.append(f"annotations[{i}] id {ann['id']} -> {new_id}")
        ann["id"] = new_id
    more = f" (... and {len(changes) - SHOWN_RENUMBERED} more)" if len(changes) > SHOWN_RENUMBERED else ""
    log.warning(
        "%s: %d annotation id%s an earlier one, given new ids%s: %s%s",
        where,
        len(changes),
        " repeats" if len(changes) == 1 else "s repeat",
        note,
        ", ".join(changes[:SHOWN_RENUMBERED]),
        more,
    )


def _unused_ids(used: set[int], count: int) -> list[int]:
    """``count`` ids not in ``used``: after the largest one, or from 1 up when that would pass ``MAX_ID``."""
    start = max(used) + 1
    if start + count - 1 <= MAX_ID:
        return list(range(start, start + count))
    fresh, candidate = [], 1
    while len(fresh) < count:
        if candidate not in used:
            fresh.append(candidate)
        candidate += 1
    return fresh


def _set_areas(anns: list, indices: list[int], images: dict, where: Path) -> None:
    """COCO evaluation needs each ground-truth object's area (it sorts them into small, medium, large): set a
    missing one to the segmentation's pixel count, as COCO defines it."""
    if not indices:
        return
    for i in indices:
        ann = anns[i]
        image = images[ann["image_id"]]
        ann["area"] = _segmentation_area(ann["segmentation"], image["height"], image["width"])
    log.warning("%s: %d annotation(s) have no 'area': set to their segmentation's pixel count", where, len(indices))


def _segmentation_area(seg: Any, height: int, width: int) -> float:
    if isinstance(seg, dict) and isinstance(seg["counts"], str):
        return float(mask_utils.area(seg))
    rles = mask_utils.frPyObjects(seg, height, width)
    return float(mask_utils.area(mask_utils.merge(rles) if isinstance(rles, list) else rles))


def _check_box(box: Any, entry: str) -> None:
    if not isinstance(box, list) or len(box) != 4 or not all(_finite(v) for v in box):
        raise CocoFormatError(f"{entry}: bbox must be [x, y, width, height] of 4 finite numbers, got {_show(box)}")
    if box[2] < 0 or box[3] < 0 or max(abs(v) for v in box) > MAX_SIDE:
        raise CocoFormatError(f"{entry}: bbox {box} has a negative or absurd size")


def _check_segmentation(seg: Any, entry: str, image_size: tuple[int, int] | None, strings: list) -> None:
    """Polygons (lists of x, y numbers) or an RLE dict with ``size`` and ``counts``; absent or empty is fine.

    ``image_size``: (height, width) of the annotation's image, None for results (their images are unknown here).
    Compressed RLEs are appended to ``strings`` as (entry, counts, size) for ``_check_compressed_rles``."""
    if seg is None or seg == []:
        return
    if isinstance(seg, list):
        for poly in seg:
            _check_polygon(poly, entry, image_size)
        return
    if not isinstance(seg, dict):
        raise CocoFormatError(f"{entry}: segmentation must be polygons or an RLE dict, got {type(seg).__name__}")
    size, counts = seg.get("size"), seg.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)):
        raise CocoFormatError(f"{entry}: segmentation RLE needs 'size' [height, width] and 'counts'")
    if not all(0 < v <= MAX_SIDE for v in size) or size[0] * size[1] > MAX_PIXELS:
        raise CocoFormatError(f"{entry}: segmentation size {_show(size)} is not an image size")
    if image_size is not None and tuple(size) != tuple(image_size):
        raise CocoFormatError(
            f"{entry}: segmentation size {size} is not its image's [height, width] {list(image_size)}"
        )
    if isinstance(counts, str):
        strings.append((entry, counts, size))
    elif isinstance(counts, list):
        _check_counts_list(counts, entry, size)
    else:
        raise CocoFormatError(f"{entry}: segmentation RLE needs 'size' [height, width] and 'counts'")


def _check_polygon(poly: Any, entry: str, image_size: tuple[int, int] | None) -> None:
    if not isinstance(poly, list) or len(poly) % 2 or not _all_finite(poly):
        raise CocoFormatError(f"{entry}: segmentation polygons must be lists of x, y numbers")
    if not poly:
        return
    # pycocotools rounds points to C ints and draws every edge pixel by pixel: far points crash or exhaust memory.
    height, width = image_size or (MAX_SIDE, MAX_SIDE)
    for axis, side, values in (("x", width, poly[0::2]), ("y", height, poly[1::2])):
        low, high = min(values), max(values)
        if low < -side or high > 2 * side:
            raise CocoFormatError(
                f"{entry}: segmentation polygon {axis} from {low} to {high} is far outside the image "
                f"({axis} must be in [{-side}, {2 * side}])"
            )


def _check_counts_list(counts: list, entry: str, size: list[int]) -> None:
    """An uncompressed RLE: run lengths (>= 0) that add up to height x width, else pycocotools reads past them
    (uninitialised pixels) or stops with an error."""
    if not set(map(type, counts)) <= {int}:  # bools are not run lengths
        bad = next(c for c in counts if type(c) is not int)
        raise CocoFormatError(f"{entry}: segmentation RLE counts must be integers, got {_show(bad)}")
    if counts and min(counts) < 0:
        raise CocoFormatError(f"{entry}: segmentation RLE counts must be >= 0, got {min(counts)}")
    total = sum(counts)
    if total != size[0] * size[1]:
        raise CocoFormatError(_sum_message(entry, total, size))


def _sum_message(entry: str, total: int, size: list[int]) -> str:
    return f"{entry}: segmentation RLE counts add up to {total} pixels, not {size[0]} x {size[1]} = {size[0] * size[1]}"


def _check_compressed_rles(strings: list[tuple[str, str, list[int]]]) -> None:
    """Decode the counts of many compressed RLEs at once (numpy) and refuse the first whose runs do not add up
    to its pixel count, or that is not pycocotools' encoding at all; pycocotools has no such check."""
    for batch in _batches(strings):
        totals, problems = compressed_rle_totals([counts for _, counts, _ in batch])
        expected = np.array([size[0] * size[1] for _, _, size in batch], dtype=np.int64)
        bad = np.flatnonzero((problems != "") | (totals != expected))
        if len(bad):
            entry, _, size = batch[bad[0]]
            if problems[bad[0]]:
                raise CocoFormatError(f"{entry}: segmentation counts is not a COCO compressed RLE ({problems[bad[0]]})")
            raise CocoFormatError(_sum_message(entry, int(totals[bad[0]]), size))


def _batches(strings: list[tuple[str, str, list[int]]]) -> Iterator[list[tuple[str, str, list[int]]]]:
    """Consecutive slices of about ``RLE_BATCH_CHARS`` characters of counts."""
    begin, chars = 0, 0
    for end, (_, counts, _) in enumerate(strings, start=1):
        chars += len(counts)
        if chars >= RLE_BATCH_CHARS or end == len(strings):
            yield strings[begin:end]
            begin, chars = end, 0


def _check_evaluable(ann: dict, entry: str) -> None:
    """pycocotools evaluates every ground-truth mask and sorts objects by area: no segmentation, an empty one, a
    first polygon of fewer than 3 points (read as a box, or refused) or an area that is not a number stop it."""
    seg = ann.get("segmentation")
    if not seg:
        raise CocoFormatError(f"{entry}: ground truth needs a segmentation (polygons or an RLE), got {_show(seg)}")
    if isinstance(seg, list) and len(seg[0]) < 6:
        raise CocoFormatError(
            f"{entry}: segmentation polygon 0 has {len(seg[0])} numbers; a polygon needs 3 points (6 numbers)"
        )
    if "area" in ann and (not _finite(ann["area"]) or ann["area"] < 0):
        raise CocoFormatError(f"{entry}: area must be a number >= 0, got {_show(ann['area'])}")


def category_names(data: dict) -> dict[int, str]:
    """Category id -> name of a (checked) COCO instance JSON."""
    return {int(c["id"]): str(c["name"]) for c in data["categories"]}


def check_results(results: Any, path: str | Path) -> list[dict[str, Any]]:
    """Check a COCO results list (``image_id``, ``category_id``, ``score``, ``bbox``; ``segmentation`` RLE)."""
    where = Path(path)
    if not isinstance(results, list):
        raise CocoFormatError(f"{where}: a COCO results file is a JSON list")
    strings: list[tuple[str, str, list[int]]] = []
    for i, res in enumerate(results):
        entry = _entry(where, "results", i, res)
        _id(res, "image_id", entry)
        _id(res, "category_id", entry)
        if not _finite(res.get("score")):
            raise CocoFormatError(f"{entry}: score must be a finite number, got {_show(res.get('score'))}")
        _check_box(res.get("bbox"), entry)
        _check_segmentation(res.get("segmentation"), entry, None, strings)
    _check_compressed_rles(strings)
    return results


def _entry(where: Path, key: str, index: int, item: Any) -> str:
    if not isinstance(item, dict):
        raise CocoFormatError(f"{where}: {key}[{index}] must be an object, got {type(item).__name__}")
    ident = item.get("id")
    return f"{where}: {key}[{index}]" + (f" (id {_show(ident)})" if ident is not None else "")


def _id(item: dict, key: str, entry: str) -> int:
    value = _int(item, key, entry)
    if not 0 <= value <= MAX_ID:
        raise CocoFormatError(f"{entry}: {key} must be between 0 and 2**63 - 1 (ids are int64), got {_show(value)}")
    return value


def _int(item: dict, key: str, entry: str) -> int:
    if key not in item:
        raise CocoFormatError(f"{entry}: missing '{key}'")
    value = item[key]
    if not _is_int(value):
        raise CocoFormatError(f"{entry}: {key} must be an integer, got {_show(value)}")
    return value


def _show(value: Any) -> str:
    """A value for a message, shortened: a file's bad value can be megabytes long."""
    return _short.repr(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond any float
        return False


def _all_finite(values: list) -> bool:
    """``_finite`` for every item of a JSON list, in C loops: ground truth holds millions of polygon numbers."""
    if not set(map(type, values)) <= {int, float}:
        return False
    try:
        return math.isfinite(sum(values))  # a NaN or an infinity makes the sum one
    except OverflowError:
        return False
