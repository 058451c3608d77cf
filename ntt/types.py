"""The library's data types: one prediction type and one reference type; converters live at the edges."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Instances:
    """Instance predictions for one image, sorted by descending score.

    Attributes:
        boxes: float32 array (N, 4), pixel xyxy of the tight box around each mask, in the original image
            frame; x2/y2 are exclusive (x2 = last mask column + 1), so w = x2 - x1 is the mask's width.
        masks: bool array (N, H, W) at the original image resolution.
        scores: float32 array (N,), final scores in [0, 1].
        class_ids: int64 array (N,), category ids of the memory bank's classes (not indices).
        image_size: (H, W) of the original image.
    """

    boxes: np.ndarray
    masks: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    image_size: tuple[int, int]

    def __post_init__(self) -> None:
        n = len(self.scores)
        h, w = self.image_size
        if self.boxes.shape != (n, 4) or self.class_ids.shape != (n,):
            raise ValueError(f"inconsistent Instances: boxes {self.boxes.shape}, {n} scores")
        if self.masks.shape != (n, h, w):
            raise ValueError(f"masks have shape {self.masks.shape}, expected {(n, h, w)}")

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls, image_size: tuple[int, int]) -> Instances:
        h, w = image_size
        return cls(
            boxes=np.zeros((0, 4), np.float32),
            masks=np.zeros((0, h, w), bool),
            scores=np.zeros((0,), np.float32),
            class_ids=np.zeros((0,), np.int64),
            image_size=(h, w),
        )

    def __getitem__(self, index) -> Instances:
        return Instances(
            boxes=self.boxes[index],
            masks=self.masks[index],
            scores=self.scores[index],
            class_ids=self.class_ids[index],
            image_size=self.image_size,
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
    """

    image: str | Path | np.ndarray
    class_id: int
    class_name: str
    mask: np.ndarray | None = None
    box: list[float] | None = None
    image_id: int | str | None = None
    annotation_id: int | str | None = None
    extra: dict = field(default_factory=dict)

    def describe(self) -> str:
        """A short human-readable name used in error messages."""
        where = self.image if not isinstance(self.image, np.ndarray) else f"image {self.image_id}"
        return f"annotation {self.annotation_id} (class {self.class_name!r}, {where})"
