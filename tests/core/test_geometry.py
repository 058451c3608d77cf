"""Geometry helpers: exact small cases computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntt.geometry import (
    context_crop_box,
    mask_boxes,
    mask_tight_box_xywh,
    point_grid,
    tight_crop,
    xyxy_to_xywh,
)

# ---- point_grid ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, size, expected",
    [
        # linspace(0, 3, 2) + 0.5 = [0.5, 3.5]; row by row, x varies fastest.
        (2, 4, [[0.5, 0.5], [3.5, 0.5], [0.5, 3.5], [3.5, 3.5]]),
        # linspace(0, 4, 3) + 0.5 = [0.5, 2.5, 4.5]
        (
            3,
            5,
            [
                [0.5, 0.5],
                [2.5, 0.5],
                [4.5, 0.5],
                [0.5, 2.5],
                [2.5, 2.5],
                [4.5, 2.5],
                [0.5, 4.5],
                [2.5, 4.5],
                [4.5, 4.5],
            ],
        ),
        (1, 10, [[0.5, 0.5]]),
    ],
)
def test_point_grid_small(n, size, expected):
    grid = point_grid(n, size)
    assert grid.dtype == torch.float32
    assert grid.shape == (n * n, 2)
    assert grid.tolist() == expected


@pytest.mark.parametrize(
    "index, xy",
    [
        (0, (0.5, 0.5)),  # reaches the top-left border (no AMG inset)
        (1, (33.5, 0.5)),  # step = 1023 / 31 = 33 px, x first
        (31, (1023.5, 0.5)),
        (32, (0.5, 33.5)),  # second row
        (33, (33.5, 33.5)),
        (1023, (1023.5, 1023.5)),  # reaches the bottom-right border
    ],
)
def test_point_grid_ntt_default(index, xy):
    grid = point_grid(32, 1024)
    assert grid.shape == (1024, 2)
    assert grid[index].tolist() == pytest.approx(list(xy), abs=1e-4)


# ---- mask boxes ------------------------------------------------------------------------------------

H, W = 5, 6


def _mask(pixels):
    m = torch.zeros(H, W, dtype=torch.bool)
    for y, x in pixels:
        m[y, x] = True
    return m


def _block(y1, y2, x1, x2):  # inclusive ranges
    m = torch.zeros(H, W, dtype=torch.bool)
    m[y1 : y2 + 1, x1 : x2 + 1] = True
    return m


MASK_CASES = [
    # (mask, inclusive xyxy, exclusive xyxy)
    pytest.param(_block(1, 3, 2, 4), [2, 1, 4, 3], [2, 1, 5, 4], id="block"),
    pytest.param(_mask([(4, 0)]), [0, 4, 0, 4], [0, 4, 1, 5], id="single-pixel-corner"),
    pytest.param(_mask([(2, 3)]), [3, 2, 3, 2], [3, 2, 4, 3], id="single-pixel"),
    pytest.param(torch.ones(H, W, dtype=torch.bool), [0, 0, 5, 4], [0, 0, 6, 5], id="full"),
    pytest.param(_mask([(0, 5), (4, 1)]), [1, 0, 5, 4], [1, 0, 6, 5], id="two-corners"),
    pytest.param(_mask([(1, 1), (1, 4), (3, 2)]), [1, 1, 4, 3], [1, 1, 5, 4], id="scattered"),
    pytest.param(torch.zeros(H, W, dtype=torch.bool), [0, 0, 0, 0], [0, 0, 0, 0], id="empty"),
]


def _exclusive(masks: torch.Tensor) -> list[list[int]]:
    """The exclusive boxes ``tight_crop`` gives full-resolution masks (zeros for an empty one)."""
    return [(tight_crop(m.numpy()) or ([0, 0, 0, 0], None))[0] for m in masks]


@pytest.mark.parametrize("mask, inclusive, exclusive", MASK_CASES)
def test_mask_boxes_single(mask, inclusive, exclusive):
    inc = mask_boxes(mask[None])
    assert inc.dtype == torch.float32
    assert inc.tolist() == [inclusive]
    assert _exclusive(mask[None]) == [exclusive]


def test_mask_boxes_batch_matches_cases_and_differ_by_one():
    masks = torch.stack([case.values[0] for case in MASK_CASES])
    inc = mask_boxes(masks)
    exc = torch.tensor(_exclusive(masks), dtype=torch.float32)
    assert inc.tolist() == [case.values[1] for case in MASK_CASES]
    assert exc.tolist() == [case.values[2] for case in MASK_CASES]
    nonempty = masks.flatten(1).any(1)
    diff = exc - inc
    assert torch.equal(diff[nonempty], torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(int(nonempty.sum()), 4))
    assert torch.equal(diff[~nonempty], torch.zeros(int((~nonempty).sum()), 4))


def test_mask_boxes_no_masks():
    masks = torch.zeros(0, 7, 9, dtype=torch.bool)
    assert mask_boxes(masks).shape == (0, 4) and mask_boxes(masks).dtype == torch.float32


def test_mask_boxes_non_square_orientation():
    # A wide mask in a tall image: x is the column index, y the row index.
    masks = torch.zeros(1, 20, 8, dtype=torch.bool)
    masks[0, 15:18, 1:7] = True
    assert _exclusive(masks) == [[1, 15, 7, 18]]
    assert mask_boxes(masks).tolist() == [[1, 15, 6, 17]]


# ---- context_crop_box ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "box, image_size, ratio, expected",
    [
        # x1..x2 = 10..30, y1..y2 = 10..20, centre (20, 15), side 20 * 1.2 = 24:
        # x: int(8), int(32); y: int(3), int(27)
        pytest.param([10, 10, 20, 10], (100, 100), 0.2, (8, 3, 32, 27), id="centre"),
        # no context: side 20 -> x 10..30, y 5..25
        pytest.param([10, 10, 20, 10], (100, 100), 0.0, (10, 5, 30, 25), id="no-context"),
        # top-left border: centre (10, 10), side 24 -> -2 clipped to 0, 22
        pytest.param([0, 0, 20, 20], (100, 100), 0.2, (0, 0, 22, 22), id="top-left-clip"),
        # bottom-right: x 85..100, y 90..100, centre (92.5, 95), side 18:
        # x int(83.5)=83, int(101.5)=101 -> 100; y 86, 104 -> 100
        pytest.param([85, 90, 15, 10], (100, 100), 0.2, (83, 86, 100, 100), id="bottom-right-clip"),
        # (H, W) order: x 100..140, y 20..30, centre (120, 25), side 48 -> x 96..144, y 1..49 -> H=40
        pytest.param([100, 20, 40, 10], (40, 200), 0.2, (96, 1, 144, 40), id="non-square-image"),
        # truncation: x1=int(10.7)=10, y1=int(5.2)=5, x2=int(31.6)=31, y2=int(15.3)=15;
        # centre (20.5, 10), side 21 * 1.2 = 25.2: x int(7.9)=7, int(33.1)=33; y int(-2.6) -> 0, int(22.6)=22
        pytest.param([10.7, 5.2, 20.9, 10.1], (100, 100), 0.2, (7, 0, 33, 22), id="float-truncation"),
        # degenerate boxes still give one pixel
        pytest.param([50, 50, 0, 0], (100, 100), 0.2, (50, 50, 51, 51), id="zero-size"),
        pytest.param([0, 0, 0, 0], (100, 100), 0.2, (0, 0, 1, 1), id="zero-size-origin"),
        pytest.param([40.2, 60.9, 0.5, 0.05], (100, 100), 0.2, (40, 60, 41, 61), id="sub-pixel"),
        # thin box: x 10..10 (int(10.5)), y 10..40, centre (10, 25), side 36: x -8 -> 0, 28; y 7, 43
        pytest.param([10, 10, 0.5, 30], (100, 100), 0.2, (0, 7, 28, 43), id="thin"),
    ],
)
def test_context_crop_box(box, image_size, ratio, expected):
    crop = context_crop_box(box, image_size, ratio)
    assert tuple(crop) == expected
    assert all(isinstance(v, int) for v in crop)
    x1, y1, x2, y2 = crop
    h, w = image_size
    assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h


# ---- box conversions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "xyxy, xywh",
    [
        ([[1, 2, 4, 6]], [[1, 2, 3, 4]]),
        ([[0, 0, 1, 1], [10.5, 20.25, 30.5, 21.25]], [[0, 0, 1, 1], [10.5, 20.25, 20.0, 1.0]]),
        ([[5, 5, 5, 5]], [[5, 5, 0, 0]]),
    ],
)
def test_xyxy_to_xywh(xyxy, xywh):
    src = np.array(xyxy, dtype=np.float32)
    before = src.copy()
    out = xyxy_to_xywh(src)
    assert out.shape == src.shape
    np.testing.assert_array_equal(out, np.array(xywh, dtype=np.float64))
    np.testing.assert_array_equal(src, before)  # input untouched


def test_xyxy_to_xywh_empty():
    assert xyxy_to_xywh(np.zeros((0, 4), np.float32)).shape == (0, 4)


def _np_block(h, w, y1, y2, x1, x2):
    m = np.zeros((h, w), bool)
    m[y1 : y2 + 1, x1 : x2 + 1] = True
    return m


@pytest.mark.parametrize(
    "mask, xywh",
    [
        (_np_block(5, 6, 1, 3, 2, 4), [2.0, 1.0, 3.0, 3.0]),
        (_np_block(5, 6, 4, 4, 0, 0), [0.0, 4.0, 1.0, 1.0]),
        (np.ones((5, 6), bool), [0.0, 0.0, 6.0, 5.0]),
        (_np_block(20, 8, 15, 17, 1, 6), [1.0, 15.0, 6.0, 3.0]),
        (_np_block(5, 6, 0, 0, 5, 5) | _np_block(5, 6, 4, 4, 1, 1), [1.0, 0.0, 5.0, 5.0]),
    ],
)
def test_mask_tight_box_xywh(mask, xywh):
    out = mask_tight_box_xywh(mask)
    assert out == xywh
    assert all(isinstance(v, float) for v in out)


def test_mask_tight_box_xywh_empty_raises():
    with pytest.raises(ValueError):
        mask_tight_box_xywh(np.zeros((4, 4), bool))
