"""The paper's few-shot reference sampling (``few_shot_sampling.py`` of the research code) and class splits.

``sample_shots`` draws exactly what the research sampler draws for the same annotation file, seed and N:

1. one ``random.Random(seed)`` for the whole draw (the research code calls ``random.seed(seed)`` once);
2. classes are visited in the order in which each one FIRST APPEARS in the file's annotation list (not by id),
   restricted to the chosen classes (a split or ``--classes``): the RNG is shared, so the order decides the draw;
3. per class, the list of ALL its annotations in file order (crowd and invalid ones included) is shuffled,
   then walked: an annotation is taken if ``is_valid_shot`` and its image has no taken instance yet (an image
   is only marked when one of its instances is taken); the walk stops at N.

A class with fewer than N valid instances keeps what it has (the research code raises there); the RNG
sequence of the following classes is unaffected because every class shuffles its whole pool exactly once.

This module stays import-light (no torch): the CLI reads ``SPLITS`` to build its ``--split`` choices.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Sequence

from ntt.io.coco_check import category_names

log = logging.getLogger(__name__)

# COCO-FSOD's 20 novel classes = the 20 PASCAL VOC classes, in COCO names.
COCO_NOVEL = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "boat",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "bottle",
    "chair",
    "couch",
    "potted plant",
    "dining table",
    "tv",
)

# Named class splits (VOC names for the VOC splits; see ``split_category_ids`` for COCO-named files).
SPLITS: dict[str, tuple[str, ...]] = {
    "coco-novel": COCO_NOVEL,
    "voc-split1": ("bus", "sofa", "cow", "bird", "motorbike"),
    "voc-split2": ("horse", "aeroplane", "sofa", "cow", "bottle"),
    "voc-split3": ("sheep", "sofa", "boat", "cat", "motorbike"),
}

# The six VOC classes whose COCO name differs; used both ways when a split name is not a category of the file.
VOC_TO_COCO = {
    "aeroplane": "airplane",
    "diningtable": "dining table",
    "motorbike": "motorcycle",
    "pottedplant": "potted plant",
    "sofa": "couch",
    "tvmonitor": "tv",
}
COCO_TO_VOC = {coco: voc for voc, coco in VOC_TO_COCO.items()}


def _invalid_reference(message: str) -> Exception:
    from ntt.types import InvalidReferenceError

    return InvalidReferenceError(message)


def split_category_ids(data: dict, split: str) -> list[int]:
    """Category ids of a named split in this file.

    A split name matches a category name case-insensitively; when it does not, its VOC <-> COCO twin is
    tried (``sofa`` finds ``couch`` in a COCO file, ``couch`` finds ``sofa`` in a VOC file). Split classes
    that are not categories of the file are left out with a warning; none at all is an error.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (known: {', '.join(sorted(SPLITS))})")
    by_name = {name.strip().lower(): cid for cid, name in category_names(data).items()}
    found, missing = [], []
    for name in SPLITS[split]:
        twins = (name, VOC_TO_COCO.get(name), COCO_TO_VOC.get(name))
        cid = next((by_name[t] for t in twins if t in by_name), None)
        (missing if cid is None else found).append(name if cid is None else cid)
    if not found:
        raise _invalid_reference(f"split {split!r}: none of its classes is a category of this file")
    if missing:
        log.warning("split %s: %d class(es) not in this file: %s", split, len(missing), ", ".join(missing))
    return sorted(set(found))


def parse_class_list(items: Iterable[str] | None) -> list[str]:
    """Class arguments with comma-separated lists expanded: ``["boat,bird", "dining table"]`` gives
    ``["boat", "bird", "dining table"]`` (the research code's ``CAT_NAMES=boat,bird`` habit)."""
    return [part.strip() for item in items or () for part in str(item).split(",") if part.strip()]


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


def annotations_by_class(data: dict) -> dict[int, list[dict]]:
    """Every annotation (crowd and invalid ones included) per category id, in file order; the dict's
    key order is the order in which each class first appears in the annotation list."""
    pools: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        pools.setdefault(int(ann["category_id"]), []).append(ann)
    return pools


def class_order(data: dict, cat_ids: Sequence[int]) -> list[int]:
    """The research sampler's visiting order of ``cat_ids``: the order in which each first appears in the
    annotation list. Chosen classes without any annotation are not visited (they would draw nothing)."""
    wanted = set(cat_ids)
    return [cid for cid in annotations_by_class(data) if cid in wanted]


def draw_class(pool: Sequence[dict], images: dict, shots: int, rng: random.Random) -> list[dict]:
    """One class's draw: shuffle the whole pool with ``rng`` and walk it, taking valid annotations from
    images not used yet, up to ``shots``."""
    pool = list(pool)
    rng.shuffle(pool)
    chosen, used = [], set()
    for ann in pool:
        if len(chosen) == shots:
            break
        image = images.get(ann["image_id"])
        if image is None or ann["image_id"] in used or not is_valid_shot(ann, image):
            continue
        chosen.append(ann)
        used.add(ann["image_id"])
    return chosen


def sample_shots(data: dict, cat_ids: Sequence[int], shots: int, seed: int, explicit: bool) -> list[dict]:
    """Annotations drawn by the paper's protocol (module docstring), in visiting order.

    Fewer valid instances than ``shots`` gives a warning; none gives an error for explicitly requested
    classes and a warning (class dropped) otherwise.
    """
    if int(shots) < 1:
        raise ValueError(f"shots must be a positive number of references per class (got {shots})")
    rng = random.Random(seed)
    images = {img["id"]: img for img in data["images"]}
    pools = annotations_by_class(data)
    names = category_names(data)
    picked, counts = [], {names.get(cid, str(cid)): 0 for cid in cat_ids}
    for cid in class_order(data, cat_ids):
        chosen = draw_class(pools[cid], images, int(shots), rng)
        counts[names.get(cid, str(cid))] = len(chosen)
        picked.extend(chosen)
    report_shortfall(counts, int(shots), explicit)
    return picked


def report_shortfall(counts: dict[str, int], wanted: int, explicit: bool) -> None:
    """Warn about classes with fewer than ``wanted`` references; a class with none is an error when the
    user named it (``explicit``) and is left out with a warning otherwise."""
    missing = [name for name, got in counts.items() if got == 0]
    if missing and explicit:
        raise _invalid_reference(
            f"class {missing[0]!r} has no valid reference (non-crowd, box >= 32 px, >= 10 px from the border)"
        )
    if missing:
        log.warning("%d class(es) have no valid reference and are left out: %s", len(missing), ", ".join(missing))
    short = [f"{name} ({got})" for name, got in counts.items() if 0 < got < wanted]
    if short:
        log.warning("%d class(es) have fewer than %d valid references: %s", len(short), wanted, ", ".join(short))


def all_annotations(data: dict, cat_ids: Sequence[int], explicit: bool) -> list[dict]:
    """Every non-crowd annotation of the chosen categories (each one is a shot), in file order."""
    names = category_names(data)
    wanted = set(cat_ids)
    anns = [a for a in data["annotations"] if a["category_id"] in wanted and not a.get("iscrowd", 0)]
    present = {a["category_id"] for a in anns}
    report_shortfall({names[c]: int(c in present) for c in cat_ids}, 1, explicit)
    return anns
