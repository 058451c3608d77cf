"""The library's data types: one prediction type and one reference type; converters live at the edges."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ntt.geometry import tight_crop


class InvalidReferenceError(ValueError):
    """A reference cannot be used; the message names the annotation (or class) and the reason."""


Progress = Callable[[float, str], None]
"""How long runs report progress: ``progress(fraction in [0, 1], stage label)``."""


@dataclass
class Instances:
    """Instance predictions for one image, sorted by descending score.

    Masks are kept cropped to their boxes, so memory follows the objects, not the image size (a
    9000x7000 image with 100 small objects holds 100 small crops).

    Attributes:
        boxes: float32 array (N, 4), pixel xyxy of the tight box around each mask, in the original image
            frame, integer-valued; x2/y2 are exclusive (x2 = last mask column + 1).
        crops: N bool arrays, crop i of shape (y2 - y1, x2 - x1): the mask inside box i.
        scores: float32 array (N,), final scores in [0, 1].
        class_ids: int64 array (N,), category ids of the memory bank's classes (not indices).
        image_size: (H, W) of the original image.
        details: why each instance was found, arrays (N,) by name (empty when unknown): ``shot`` int64, the
            index in the bank's ``shots`` of the nearest positive shot of its class; float32 ``shot_cosine``
            (to that shot), ``class_cosine`` (to its class's prototype), ``margin`` (that minus the best
            other class's, both clamped at 0), ``negative_cosine`` (to its class's nearest negative shot, 0
            without any) and ``sam_iou`` (SAM's predicted IoU).
        embeddings: float32 array (N, D) or None: each instance's unit-norm mask-pooled DINOv2 feature, the one
            its class was matched with (D: the encoder's width); None when unknown.
    """

    boxes: np.ndarray
    crops: list[np.ndarray]
    scores: np.ndarray
    class_ids: np.ndarray
    image_size: tuple[int, int]
    details: dict[str, np.ndarray] = field(default_factory=dict)
    embeddings: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.scores)
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(n, 4)
        self.class_ids = np.asarray(self.class_ids, dtype=np.int64)
        if self.class_ids.shape != (n,) or len(self.crops) != n:
            raise ValueError(f"inconsistent Instances: {n} scores, {len(self.crops)} crops")
        if any(len(v) != n for v in self.details.values()):
            raise ValueError(f"inconsistent Instances: {n} scores, details of lengths {self._detail_lengths()}")
        if self.embeddings is not None:
            self.embeddings = np.asarray(self.embeddings, dtype=np.float32)
            if self.embeddings.ndim != 2 or len(self.embeddings) != n:
                raise ValueError(f"inconsistent Instances: {n} scores, embeddings of shape {self.embeddings.shape}")
        for box, crop in zip(self.boxes, self.crops):
            x1, y1, x2, y2 = box.astype(int)
            if crop.shape != (y2 - y1, x2 - x1):
                raise ValueError(f"crop of shape {crop.shape} does not fit box {box.tolist()}")

    def __len__(self) -> int:
        return len(self.scores)

    def _detail_lengths(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.details.items()}

    def mask(self, i: int) -> np.ndarray:
        """The full-image bool mask (H, W) of instance i."""
        full = np.zeros(self.image_size, bool)
        x1, y1, x2, y2 = self.boxes[i].astype(int)
        full[y1:y2, x1:x2] = self.crops[i]
        return full

    @property
    def masks(self) -> np.ndarray:
        """All full-image masks, bool (N, H, W); N x H x W bytes, so prefer ``crops`` or ``mask(i)``."""
        out = np.zeros((len(self), *self.image_size), bool)
        for i in range(len(self)):
            out[i] = self.mask(i)
        return out

    @classmethod
    def from_masks(cls, masks: np.ndarray, scores, class_ids) -> Instances:
        """Build from full-image bool masks (N, H, W) (none empty); boxes are their tight boxes."""
        masks = np.asarray(masks, dtype=bool)
        boxes, crops = [], []
        for m in masks:
            found = tight_crop(m)
            if found is None:
                raise ValueError("empty mask")
            boxes.append(found[0])
            crops.append(found[1])
        return cls(
            boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
            crops=crops,
            scores=np.asarray(scores, np.float32),
            class_ids=np.asarray(class_ids, np.int64),
            image_size=tuple(int(v) for v in masks.shape[1:]),
        )

    @classmethod
    def empty(cls, image_size: tuple[int, int]) -> Instances:
        h, w = image_size
        return cls(
            boxes=np.zeros((0, 4), np.float32),
            crops=[],
            scores=np.zeros((0,), np.float32),
            class_ids=np.zeros((0,), np.int64),
            image_size=(h, w),
        )

    def __getitem__(self, index) -> Instances:
        idx = np.arange(len(self))[index]
        idx = np.atleast_1d(idx)
        return Instances(
            boxes=self.boxes[idx],
            crops=[self.crops[i] for i in idx],
            scores=self.scores[idx],
            class_ids=self.class_ids[idx],
            image_size=self.image_size,
            details={k: v[idx] for k, v in self.details.items()},
            embeddings=None if self.embeddings is None else self.embeddings[idx],
        )


@dataclass
class Reference:
    """One annotated reference instance (one shot).

    Attributes:
        image: path to the image file, or an RGB uint8 array (H, W, 3).
        class_id: category id (as in the COCO json / the bank).
        class_name: category name.
        mask: bool array (H, W) at the image's resolution, or None for a box-only reference
            (its mask then comes from SAM2 prompted with ``box``).
        box: pixel xywh [x, y, w, h] as in COCO (floats allowed); None takes the mask's tight box.
        image_id: provenance: the image's id in its source (COCO image id, FiftyOne sample id...).
        annotation_id: provenance: the annotation's id in its source.
        extra: more provenance for the shot, e.g. ``source``: where the ids are ids (the sha256 of the COCO file,
            or ``"dataset:<dataset id>"``), so that a label is told from another file's label of the same ids.
    """

    image: str | Path | np.ndarray
    class_id: int
    class_name: str
    mask: np.ndarray | None = None
    box: list[float] | None = None
    image_id: int | str | None = None
    annotation_id: int | str | None = None
    extra: dict = field(default_factory=dict)

    def provenance(self) -> dict:
        """The shot's provenance, as a bank records it (``MemoryBank.shots``): what ``MemoryBank.holds`` reads to
        tell whether the bank has this label already."""
        return {
            "image_id": self.image_id,
            "image_path": None if isinstance(self.image, np.ndarray) else str(Path(self.image)),
            "annotation_id": self.annotation_id,
            "class_id": int(self.class_id),
            "box_only": self.mask is None,
            **self.extra,
        }

    def describe(self) -> str:
        """A short human-readable name used in error messages."""
        where = self.image if not isinstance(self.image, np.ndarray) else f"image {self.image_id}"
        return f"annotation {self.annotation_id} (class {self.class_name!r}, {where})"
