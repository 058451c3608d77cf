"""Matching and post-processing: pooling, cosine matching, NMS, soft merging, selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ntt.predict.postprocess import (
    apply_decay,
    class_aware_nms,
    interpolation_matrix,
    mask_intersections,
    match_classes,
    pool_mask_features,
    select_top,
    soft_merge_decay,
    upsample_logits,
)

# ---- interpolation_matrix / pooling ------------------------------------------------------------------


def test_interpolation_matrix_by_hand():
    # 2 -> 4, align_corners=False: source coords (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 (clamped).
    a = interpolation_matrix(2, 4)
    assert a.shape == (4, 2)
    torch.testing.assert_close(a, torch.tensor([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]]))


@pytest.mark.parametrize("src, dst", [(5, 17), (37, 256), (4, 8), (3, 3), (16, 64), (7, 5)])
def test_interpolation_matrix_equals_bilinear(src, dst):
    gen = torch.Generator().manual_seed(src * 1000 + dst)
    x = torch.randn(src, src, generator=gen)
    a = interpolation_matrix(src, dst)
    assert a.shape == (dst, src)
    torch.testing.assert_close(a.sum(1), torch.ones(dst))
    want = F.interpolate(x[None, None], size=(dst, dst), mode="bilinear", align_corners=False)[0, 0]
    torch.testing.assert_close(a @ x @ a.T, want, atol=1e-5, rtol=1e-5)


def _direct_pool(masks: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """NTT's way: upsample the (g, g, D) map to (m, m), average inside each mask, L2-normalise."""
    m = masks.shape[-1]
    up = F.interpolate(features.permute(2, 0, 1)[None], size=(m, m), mode="bilinear", align_corners=False)[0]
    flat = masks.flatten(1).double()
    pooled = flat @ up.flatten(1).T.double() / flat.sum(1, keepdim=True)
    return F.normalize(pooled, dim=1).float()


@pytest.mark.parametrize("g, m, d", [(5, 17, 8), (37, 256, 16), (4, 4, 3)])
def test_pool_mask_features_equals_direct(g, m, d):
    gen = torch.Generator().manual_seed(g + m + d)
    features = torch.randn(g, g, d, generator=gen)
    masks = torch.rand(4, m, m, generator=gen) > 0.5
    masks[1] = False
    masks[1, m // 4 : m // 2, m // 3 : m - 1] = True  # a blob
    masks[2] = False
    masks[2, m - 1, 0] = True  # a single pixel in a corner
    masks[3] = True  # everything
    out = pool_mask_features(masks, features)
    assert out.shape == (4, d) and out.dtype == torch.float32
    torch.testing.assert_close(out, _direct_pool(masks, features), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4))


def test_pool_mask_features_constant_map():
    # A constant feature map pools to the same (normalised) vector for any mask.
    features = torch.tensor([3.0, 0.0, 4.0]).expand(6, 6, 3)
    masks = torch.zeros(2, 24, 24, dtype=torch.bool)
    masks[0, :3, :3] = True
    masks[1, 10:, 5:9] = True
    torch.testing.assert_close(pool_mask_features(masks, features), torch.tensor([[0.6, 0.0, 0.8]] * 2))


# ---- match_classes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "embedding, prototypes, score, label",
    [
        ([1.0, 0.0], [[1.0, 0.0], [0.0, 1.0]], 1.0, 0),
        ([0.0, 1.0], [[1.0, 0.0], [0.0, 1.0]], 1.0, 1),
        ([0.6, 0.8], [[1.0, 0.0], [0.0, 1.0]], 0.8, 1),
        ([0.6, -0.8], [[0.0, 1.0], [1.0, 0.0]], 0.6, 1),  # negative cosine to class 0 clamped
        ([0.6, 0.8], [[-1.0, 0.0], [0.0, -1.0], [0.8, 0.6]], 0.96, 2),
        ([-1.0, 0.0], [[1.0, 0.0], [0.0, 1.0]], 0.0, None),  # all cosines <= 0: score 0
        ([-0.6, -0.8], [[0.6, 0.8], [0.8, 0.6]], 0.0, None),
    ],
)
def test_match_classes(embedding, prototypes, score, label):
    scores, labels = match_classes(torch.tensor([embedding]), torch.tensor(prototypes))
    assert scores.shape == (1,) and labels.dtype == torch.int64
    assert scores.item() == pytest.approx(score, abs=1e-6)
    assert scores.item() >= 0.0
    if label is not None:
        assert labels.item() == label


def test_match_classes_batch():
    emb = torch.tensor([[1.0, 0.0], [0.6, 0.8], [-1.0, 0.0]])
    scores, labels = match_classes(emb, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    torch.testing.assert_close(scores, torch.tensor([1.0, 0.8, 0.0]))
    assert labels[:2].tolist() == [0, 1]


# ---- class_aware_nms -------------------------------------------------------------------------------

A = [0.0, 0.0, 10.0, 10.0]
B = [1.0, 1.0, 11.0, 11.0]  # IoU with A = 81 / 119 = 0.68
C = [5.0, 0.0, 15.0, 10.0]  # IoU with A = 50 / 150 = 1/3
FAR1, FAR2 = [50.0, 50.0, 60.0, 60.0], [100.0, 0.0, 120.0, 10.0]


@pytest.mark.parametrize(
    "boxes, ranking, labels, thresh, max_keep, expected",
    [
        pytest.param([A, B], [0.7, 0.9], [0, 0], 0.5, 800, [1], id="same-class-higher-ranking-kept"),
        pytest.param([A, B], [0.9, 0.7], [0, 0], 0.5, 800, [0], id="same-class-reversed"),
        pytest.param([A, B], [0.7, 0.9], [0, 1], 0.5, 800, [1, 0], id="different-classes-both-kept"),
        pytest.param([A, C], [0.9, 0.8], [0, 0], 0.5, 800, [0, 1], id="iou-below-threshold"),
        pytest.param([A, C], [0.8, 0.9], [0, 0], 0.3, 800, [1], id="iou-above-threshold"),
        pytest.param([A, FAR1, FAR2], [0.2, 0.9, 0.5], [0, 0, 0], 0.5, 800, [1, 2, 0], id="descending"),
        pytest.param([A, FAR1, FAR2], [0.2, 0.9, 0.5], [0, 1, 2], 0.5, 2, [1, 2], id="max-keep"),
        pytest.param([A, B, FAR1, C], [0.5, 0.6, 0.95, 0.55], [3, 3, 3, 7], 0.5, 800, [2, 1, 3], id="mixed"),
    ],
)
def test_class_aware_nms(boxes, ranking, labels, thresh, max_keep, expected):
    keep = class_aware_nms(torch.tensor(boxes), torch.tensor(ranking), torch.tensor(labels), thresh, max_keep)
    assert keep.dtype == torch.int64
    assert keep.tolist() == expected


def test_class_aware_nms_ranks_by_ranking_not_semantic_score():
    # The semantic score prefers box 0, SAM's IoU prefers box 1: NTT ranks by SAM's IoU.
    semantic = torch.tensor([0.95, 0.30])
    sam_iou = torch.tensor([0.50, 0.99])
    keep = class_aware_nms(torch.tensor([A, B]), sam_iou, torch.tensor([0, 0]), 0.5, 800)
    assert keep.tolist() == [1]
    assert semantic[keep].tolist() == [pytest.approx(0.30)]


# ---- soft merging ----------------------------------------------------------------------------------


def _decay(inter, areas, labels, emb):
    return soft_merge_decay(
        torch.tensor(inter, dtype=torch.float32),
        torch.tensor(areas, dtype=torch.float32),
        torch.tensor(labels),
        F.normalize(torch.tensor(emb, dtype=torch.float32), dim=1),
    )


@pytest.mark.parametrize(
    "inter, areas, labels, emb, expected",
    [
        # mask 1 (area 8) lies half inside mask 0 (area 16), same class, cos 0.8 -> 0.5 * 0.8;
        # mask 2 is another class overlapping mask 0 (cos 1) -> 0.
        pytest.param(
            [[16, 4, 6], [4, 8, 0], [6, 0, 10]],
            [16, 8, 10],
            [0, 0, 1],
            [[1, 0, 0], [0.8, 0.6, 0], [1, 0, 0]],
            [0.0, 0.4, 0.0],
            id="brief-example",
        ),
        # mask 0 (area 4) lies inside the later, bigger mask 1 (area 16): only earlier masks count,
        # so d0 = 0 and d1 = IoS(1, 0) * cos = 4 / 16 * 1.
        pytest.param([[4, 4], [4, 16]], [4, 16], [2, 2], [[1, 0], [1, 0]], [0.0, 0.25], id="only-earlier"),
        # the first mask of each class has d = 0 even when an earlier mask of another class covers it
        pytest.param(
            [[10, 10, 5], [10, 10, 8], [5, 8, 10]],
            [10, 10, 10],
            [0, 1, 0],
            [[1, 0], [1, 0], [1, 0]],
            [0.0, 0.0, 0.5],
            id="first-of-class",
        ),
        # max over earlier masks, not sum: IoS 0.5 x cos 0.6 = 0.3 vs IoS 0.25 x cos 1 = 0.25
        pytest.param(
            [[10, 0, 10], [0, 10, 5], [10, 5, 20]],
            [10, 10, 20],
            [0, 0, 0],
            [[0.6, 0.8], [1, 0], [1, 0]],
            [0.0, 0.0, 0.3],
            id="max-not-sum",
        ),
        # negative cosine contributes 0
        pytest.param([[8, 8], [8, 8]], [8, 8], [0, 0], [[1, 0], [-0.6, 0.8]], [0.0, 0.0], id="negative-cos"),
        # identical masks and features: d = 1 for the later one
        pytest.param([[5, 5], [5, 5]], [5, 5], [4, 4], [[0, 1], [0, 1]], [0.0, 1.0], id="duplicate"),
        # a zero-area mask gets d = 0 (no NaN)
        pytest.param([[16, 0], [0, 0]], [16, 0], [0, 0], [[1, 0], [1, 0]], [0.0, 0.0], id="zero-area"),
        pytest.param([[0, 0], [0, 9]], [0, 9], [0, 0], [[1, 0], [1, 0]], [0.0, 0.0], id="zero-area-first"),
    ],
)
def test_soft_merge_decay(inter, areas, labels, emb, expected):
    d = _decay(inter, areas, labels, emb)
    assert d.shape == (len(areas),)
    assert torch.isfinite(d).all()
    torch.testing.assert_close(d, torch.tensor(expected), atol=1e-6, rtol=0)


def test_soft_merge_decay_empty():
    no_labels = torch.zeros(0, dtype=torch.int64)
    d = soft_merge_decay(torch.zeros(0, 0), torch.zeros(0), no_labels, torch.zeros(0, 4))
    assert d.shape == (0,)


def test_soft_merge_decay_from_real_masks():
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[0, 0:4, 0:4] = True  # 16 px
    masks[1, 2:4, 0:4] = True  # 8 px, all inside mask 0
    masks[1, 4:6, 0:4] = True  # +8 px outside -> 16 px, IoS(1, 0) = 8 / 16
    masks[2, 0:8, 0:8] = True  # 64 px, IoS(2, 0) = 16/64, IoS(2, 1) = 16/64
    inter, areas = mask_intersections(masks)
    emb = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), dim=1)
    d = soft_merge_decay(inter, areas, torch.tensor([0, 0, 0]), emb)
    torch.testing.assert_close(d, torch.tensor([0.0, 0.5, 0.0]))


@pytest.mark.parametrize(
    "scores, decay, exponent, expected",
    [
        ([0.8, 0.5, 0.9, 0.7], [0.0, 0.75, 0.36, 1.0], 0.5, [0.8, 0.25, 0.72, 0.0]),
        ([0.8, 0.5, 0.9], [0.0, 0.75, 0.36], 1.0, [0.8, 0.125, 0.576]),
        ([0.4], [0.19], 0.5, [0.36]),
    ],
)
def test_apply_decay(scores, decay, exponent, expected):
    out = apply_decay(torch.tensor(scores), torch.tensor(decay), exponent)
    torch.testing.assert_close(out, torch.tensor(expected), atol=1e-6, rtol=0)


# ---- mask_intersections ----------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 7, 10, 63, 1 << 16])
def test_mask_intersections_equals_numpy(chunk):
    rng = np.random.default_rng(chunk)
    masks = rng.random((5, 7, 9)) > 0.4
    masks[3] = False  # an empty mask
    inter, areas = mask_intersections(torch.from_numpy(masks), chunk=chunk)
    flat = masks.reshape(5, -1)
    want = np.array([[(flat[i] & flat[j]).sum() for j in range(5)] for i in range(5)])
    assert inter.dtype == torch.float32 and areas.dtype == torch.float32
    np.testing.assert_array_equal(inter.numpy(), want)
    np.testing.assert_array_equal(areas.numpy(), flat.sum(1))


def test_mask_intersections_large_counts_exact():
    masks = torch.zeros(2, 2048, 2048, dtype=torch.bool)
    masks[0] = True
    masks[1, :1000, :] = True
    inter, areas = mask_intersections(masks)
    assert areas.tolist() == [4194304.0, 2048000.0]
    assert inter.tolist() == [[4194304.0, 2048000.0], [2048000.0, 2048000.0]]


def test_mask_intersections_empty():
    inter, areas = mask_intersections(torch.zeros(0, 4, 4, dtype=torch.bool))
    assert inter.shape == (0, 0) and areas.shape == (0,)


# ---- upsample_logits -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "region, expected_true",
    [
        # 8 -> 50 columns: the sign changes at source x = 3.5 -> output x = 24.5, so columns 0..24
        ("left", (slice(None), slice(0, 25))),
        ("top", (slice(0, 15), slice(None))),  # 8 -> 30 rows: output y = 14.5
        ("right", (slice(None), slice(25, 50))),
        ("bottom", (slice(15, 30), slice(None))),
    ],
)
def test_upsample_logits_places_regions(region, expected_true):
    logits = torch.full((1, 8, 8), -5.0)
    if region == "left":
        logits[0, :, :4] = 5.0
    elif region == "top":
        logits[0, :4, :] = 5.0
    elif region == "right":
        logits[0, :, 4:] = 5.0
    else:
        logits[0, 4:, :] = 5.0
    out = upsample_logits(logits, (30, 50))
    assert out.shape == (1, 30, 50) and out.dtype == torch.bool
    want = torch.zeros(30, 50, dtype=torch.bool)
    want[expected_true] = True
    assert torch.equal(out[0], want)


def test_upsample_logits_chunks_and_empty():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 16, 16, generator=gen)
    full = upsample_logits(logits, (40, 24))
    assert torch.equal(upsample_logits(logits, (40, 24), max_pixels=2 * 40 * 24), full)
    for i in range(5):
        assert torch.equal(upsample_logits(logits[i : i + 1], (40, 24))[0], full[i])
    assert upsample_logits(torch.zeros(0, 16, 16), (40, 24)).shape == (0, 40, 24)


# ---- select_top ------------------------------------------------------------------------------------

SCORES = [0.3, 0.9, 0.5, 0.9, 0.1]
LABELS = [0, 1, 0, 1, 0]


@pytest.mark.parametrize(
    "max_instances, thresh, class_thresh, expected",
    [
        (10, 0.0, None, [1, 3, 2, 0, 4]),  # descending, ties keep input order
        (10, 0.3, None, [1, 3, 2, 0]),  # threshold is inclusive
        (10, 0.31, None, [1, 3, 2]),
        (2, 0.0, None, [1, 3]),
        (3, 0.0, None, [1, 3, 2]),
        (0, 0.0, None, []),
        (10, 0.95, None, []),
        (10, 0.0, [0.4, 0.95], [2]),  # class 0 needs 0.4, class 1 needs 0.95
        (10, 0.99, [0.1, 0.9], [1, 3, 2, 0, 4]),  # per-class thresholds replace the global one
    ],
)
def test_select_top(max_instances, thresh, class_thresh, expected):
    ct = torch.tensor(class_thresh) if class_thresh is not None else None
    keep = select_top(torch.tensor(SCORES), torch.tensor(LABELS), max_instances, thresh, ct)
    assert keep.tolist() == expected


def test_select_top_stable_ties_many():
    scores = torch.full((50,), 0.5)
    assert select_top(scores, torch.zeros(50, dtype=torch.int64), 100, 0.0).tolist() == list(range(50))


@pytest.mark.parametrize(
    "m, size", [(64, (100, 150)), (64, (64, 64)), (256, (480, 640)), (64, (300, 70)), (64, (30, 50))]
)
def test_logits_to_crops_equals_full_upsampling_then_crop(m, size):
    from ntt.predict.postprocess import logits_to_crops

    gen = torch.Generator().manual_seed(m + size[0])
    logits = torch.randn(5, m, m, generator=gen) * 3 - 4
    logits[0] = -5.0  # empty
    logits[1, 10:20, 5:9] = 4.0
    logits[2, -3:, -2:] = 6.0  # touches the bottom-right border
    full = upsample_logits(logits, size).numpy()
    for mask, found in zip(full, logits_to_crops(logits, size)):
        if found is None:
            assert not mask.any()
            continue
        (x1, y1, x2, y2), crop = found
        pasted = np.zeros_like(mask)
        pasted[y1:y2, x1:x2] = crop
        np.testing.assert_array_equal(pasted, mask)
        assert crop[0].any() and crop[-1].any() and crop[:, 0].any() and crop[:, -1].any()


@pytest.mark.parametrize(
    "n, size, expected", [(10, (480, 640), (480, 640)), (800, (480, 640), (480, 640)), (800, (7000, 9000), (510, 656))]
)
def test_merge_size_is_full_resolution_unless_over_budget(n, size, expected):
    from ntt.predict.postprocess import merge_size

    got = merge_size(n, size)
    assert got == expected
    assert got[0] * got[1] * n <= 256 * 2**20


def test_nms_ties_are_broken_by_candidate_index():
    # bf16 IoU predictions tie often; the kept set and order must not depend on the sort implementation.
    from ntt.predict.postprocess import class_aware_nms

    n = 2000  # enough for torch's sort to reorder ties (at 1000 it happens to keep index order on CPU)
    same = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(n, 1)
    tied = torch.full((n,), 0.5)
    labels = torch.zeros(n, dtype=torch.int64)
    assert class_aware_nms(same, tied, labels, 0.5, 800).tolist() == [0]
    apart = torch.stack(
        [torch.arange(n) * 20.0, torch.zeros(n), torch.arange(n) * 20.0 + 10, torch.full((n,), 10.0)], 1
    )
    assert class_aware_nms(apart, tied, labels, 0.5, n).tolist() == list(range(n))
    ranked = torch.tensor([0.2, 0.9, 0.9, 0.1])
    assert class_aware_nms(apart[:4], ranked, labels[:4], 0.5, 800).tolist() == [1, 2, 0, 3]
