"""Reference instances in FiftyOne: tagging them, and turning tagged labels into ``ntt`` references.

A reference is either every ``Detection`` of a label field on a sample tagged ``tag`` (sample-level
tagging, e.g. tagged in the App grid), or a single ``Detection`` whose own tags contain ``tag``
(label-level tagging, e.g. selected labels tagged in the App).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence

import fiftyone as fo
import numpy as np
from fiftyone import ViewField as F
from PIL import Image

from ntt.bank.encoder import InvalidReferenceError
from ntt.fo.store import dataset_key
from ntt.io.images import ImageLoadError, image_size
from ntt.types import Reference

log = logging.getLogger(__name__)
DEFAULT_TAG = "ntt_ref"


class NTTFiftyOneError(ValueError):
    """A collection, field or bank cannot be used as asked; the message says why and what to do."""


def check_collection(coll) -> None:
    """Raise NTTFiftyOneError unless ``coll`` is a non-grouped image collection."""
    media = coll.media_type
    if media == "group":
        raise NTTFiftyOneError(
            "group datasets are not supported: select an image slice first, e.g. view.select_group_slices('left')"
        )
    if media != "image":
        raise NTTFiftyOneError(f"NTT segments images; this collection's media type is {media!r}")


def detections_fields(coll) -> list[str]:
    """The ``Detections`` fields of ``coll``, embedded ones included, none inside a list field: the fields that can
    hold references or predictions (the forms offer exactly these)."""
    return sorted(coll.get_field_schema(embedded_doc_type=fo.Detections, flat=True, unwind=False))


def field_of_labels(coll, label_ids: list[str]) -> str | None:
    """The Detections field of ``coll`` that holds the first of ``label_ids`` (None: none does). For selections
    that carry label ids without their field, such as a lasso in the Embeddings panel."""
    for name in detections_fields(coll) if label_ids else []:
        if coll.select_labels(ids=label_ids[:1], fields=name).count(f"{name}.detections"):
            return name
    return None


def check_detections_field(coll, field: str) -> None:
    """Raise NTTFiftyOneError unless ``field`` is one of the ``detections_fields`` of ``coll``."""
    if field in detections_fields(coll):
        return
    found = coll.get_field(field) if field else None
    if found is None:
        raise NTTFiftyOneError(f"the collection has no field {field!r}")
    kind = getattr(found, "document_type", None) or type(found)
    if issubclass(kind, fo.Detections):
        raise NTTFiftyOneError(f"field {field!r} is inside a list field: choose a Detections field outside lists")
    raise NTTFiftyOneError(f"field {field!r} holds {kind.__name__}, not Detections (instance masks or boxes)")


def mark_references(coll, label_field: str | None = None, label_ids: Iterable[str] | None = None, tag=DEFAULT_TAG):
    """Mark references: with no ``label_field``, tag the samples of ``coll`` (all their instances become
    references); with ``label_field``, tag its labels (only those in ``label_ids`` when given).

    Returns:
        the number of samples or labels tagged.
    """
    check_collection(coll)
    if label_field is None:
        coll.tag_samples(tag)
        return coll.count()
    check_detections_field(coll, label_field)
    labels = coll if label_ids is None else coll.select_labels(ids=list(label_ids), fields=label_field)
    labels.tag_labels(tag, label_fields=label_field)
    return labels.count(f"{label_field}.detections")


def unmark_references(coll, tag=DEFAULT_TAG) -> None:
    """Remove the reference tag from the samples of ``coll`` and from all their labels."""
    coll.untag_samples(tag)
    coll.untag_labels(tag)


def reference_ids(coll, tag=DEFAULT_TAG, label_field: str | None = None) -> list[str]:
    """Ids of the samples of ``coll`` that are references: tagged, or holding a tagged label."""
    tagged = set(coll.match_tags(tag).values("id"))
    fields = [label_field] if label_field else None
    tagged |= set(coll.match_labels(tags=tag, fields=fields).values("id"))
    return sorted(tagged)


def without_references(coll, tag=DEFAULT_TAG):
    """``coll`` without its reference samples (they would trivially match their own labels)."""
    return coll.exclude(reference_ids(coll, tag))


def reference_classes(coll, label_field: str, tag: str = DEFAULT_TAG) -> dict[str, int]:
    """Class name -> number of reference instances of ``coll`` in ``label_field`` (crowd regions included)."""
    counts: Counter[str] = Counter()
    view = coll.select(reference_ids(coll, tag, label_field)).select_fields(label_field)
    for tags, labels, label_tags in zip(
        *view.values(["tags", f"{label_field}.detections.label", f"{label_field}.detections.tags"])
    ):
        for label, own in zip(labels or [], label_tags or []):
            if tag in tags or tag in (own or []):
                counts[label] += 1
    return dict(sorted(counts.items()))


def collect_references(
    coll,
    label_field: str,
    tag: str = DEFAULT_TAG,
    class_ids: dict[str, int] | None = None,
    classes: Sequence[str] | None = None,
) -> list[Reference]:
    """The reference instances of ``coll`` in ``label_field`` as ``ntt`` references.

    Detections with a mask (``mask`` or ``mask_path``) become full-image masks through FiftyOne's own
    rendering; box-only detections become box references (SAM2 makes their masks).

    Args:
        class_ids: existing class name -> id mapping (a bank's); new names get the next free ids.
        classes: only instances of these class names are references (None: every class).
    Raises:
        NTTFiftyOneError: bad collection or field, or no reference at all.
        InvalidReferenceError: a reference sample whose image cannot be read.
    """
    check_collection(coll)
    check_detections_field(coll, label_field)
    ids = dict(class_ids or {})
    refs: list[Reference] = []
    view = coll.select(reference_ids(coll, tag, label_field)).select_fields(label_field)
    for sample in view.iter_samples():
        sample_tagged = tag in sample.tags
        dets = sample[label_field].detections if sample[label_field] is not None else []
        chosen = [d for d in dets if (sample_tagged or tag in (d.tags or [])) and (not classes or d.label in classes)]
        crowd = [d for d in chosen if _is_crowd(d)]
        if crowd:  # a crowd region is not one instance: never a shot
            log.warning("sample %s: %d crowd label(s) left out of the references", sample.id, len(crowd))
            chosen = [d for d in chosen if not _is_crowd(d)]
        if chosen:
            refs.extend(_sample_references(sample, chosen, ids))
    if not refs and classes:
        have = ", ".join(reference_classes(coll, label_field, tag)) or "none"
        raise NTTFiftyOneError(f"no references of the classes {sorted(classes)}: the references here are of: {have}")
    if not refs:
        raise NTTFiftyOneError(
            f"no references: tag samples or {label_field!r} labels with {tag!r} first (mark_references)"
        )
    return refs


def _is_crowd(det) -> bool:
    return bool(det.get_field("iscrowd")) if det.has_field("iscrowd") else False


def _sample_references(sample, dets, ids: dict[str, int]) -> list[Reference]:
    """References of ``dets`` on ``sample``, named by the sample's and labels' ids in its dataset (their
    ``source``: ``"dataset:<dataset id>"``, see ``ntt.bank.memory.same_label``); a new class name gets the next
    free id."""
    try:
        height, width = image_size(sample.filepath)
    except ImageLoadError as err:
        raise InvalidReferenceError(f"reference sample {sample.id}: {err}") from err
    source = dataset_source(sample.dataset)
    out = []
    for det in dets:
        if det.label is None:
            raise InvalidReferenceError(f"reference label {det.id} on sample {sample.id} has no label")
        if det.label not in ids:
            ids[det.label] = max(ids.values(), default=0) + 1
        x, y, w, h = det.bounding_box
        box = [x * width, y * height, w * width, h * height]
        mask = full_image_mask(det, width, height) if det.has_mask else None
        out.append(
            Reference(
                image=sample.filepath,
                class_id=ids[det.label],
                class_name=det.label,
                mask=mask,
                box=box,
                image_id=sample.id,
                annotation_id=det.id,
                extra={} if source is None else {"source": source},
            )
        )
    return out


def dataset_source(dataset) -> str | None:
    """The ``source`` of shots from labels of ``dataset`` (None for a sample in no dataset): its database id, which
    a rename does not change."""
    return None if dataset is None else f"dataset:{dataset_key(dataset)}"


def full_image_mask(det, width: int, height: int) -> np.ndarray:
    """A detection's instance mask pasted into a bool (H, W) frame at its box.

    The mask covers the box (relative xywh); when its size differs from the box's pixel size it is resized
    (nearest). FiftyOne's own ``to_segmentation`` re-renders even same-size masks, losing a few % of
    pixels, so the paste is done here.
    """
    x0, y0 = int(round(det.bounding_box[0] * width)), int(round(det.bounding_box[1] * height))
    bw = max(1, int(round(det.bounding_box[2] * width)))
    bh = max(1, int(round(det.bounding_box[3] * height)))
    mask = np.asarray(det.get_mask()) > 0
    if mask.shape != (bh, bw):
        mask = np.asarray(Image.fromarray(mask).resize((bw, bh), Image.NEAREST))
    full = np.zeros((height, width), bool)
    x1, y1 = min(width, x0 + bw), min(height, y0 + bh)
    if x1 > max(x0, 0) and y1 > max(y0, 0):
        full[max(y0, 0) : y1, max(x0, 0) : x1] = mask[max(0, -y0) : y1 - y0, max(0, -x0) : x1 - x0]
    return full


def label_filter(classes: list[str]):
    """A ViewField expression keeping labels whose class is in ``classes``."""
    return F("label").is_in(list(classes))
