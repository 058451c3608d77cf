"""Instances: cropped masks, full masks on demand, indexing and validation."""

from __future__ import annotations

import numpy as np
import pytest

from ntt.types import Instances


def _masks():
    m = np.zeros((3, 6, 8), bool)
    m[0, 1:3, 2:5] = True
    m[1, 5, 7] = True
    m[2, 0:6, 0] = True
    m[2, 3, 4] = True
    return m


def test_from_masks_crops_to_tight_boxes():
    inst = Instances.from_masks(_masks(), scores=[0.9, 0.5, 0.1], class_ids=[3, 4, 3])
    np.testing.assert_array_equal(inst.boxes, [[2, 1, 5, 3], [7, 5, 8, 6], [0, 0, 5, 6]])
    assert [c.shape for c in inst.crops] == [(2, 3), (1, 1), (6, 5)]
    np.testing.assert_array_equal(inst.masks, _masks())
    np.testing.assert_array_equal(inst.mask(2), _masks()[2])
    assert inst.image_size == (6, 8) and inst.class_ids.dtype == np.int64


def test_indexing_keeps_crops_aligned():
    inst = Instances.from_masks(_masks(), scores=[0.9, 0.5, 0.1], class_ids=[3, 4, 3])
    sub = inst[np.array([2, 0])]
    np.testing.assert_array_equal(sub.masks, _masks()[[2, 0]])
    assert sub.class_ids.tolist() == [3, 3] and len(inst[1]) == 1 and len(inst[:0]) == 0


def test_crop_that_does_not_fit_its_box_is_rejected():
    with pytest.raises(ValueError, match="does not fit"):
        Instances(
            boxes=np.array([[0, 0, 2, 2]]),
            crops=[np.ones((3, 2), bool)],
            scores=np.ones(1),
            class_ids=[1],
            image_size=(4, 4),
        )


def test_empty_mask_cannot_make_an_instance():
    with pytest.raises(ValueError, match="empty"):
        Instances.from_masks(np.zeros((1, 3, 3), bool), [1.0], [1])


def test_empty_instances():
    e = Instances.empty((5, 7))
    assert len(e) == 0 and e.masks.shape == (0, 5, 7)
