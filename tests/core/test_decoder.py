"""SAM2 point decoding across a batch: chunks that span images, padding for the compiled graph, the
compiled decoder itself (captured whole, no graph break) and its fallback."""

from __future__ import annotations

import logging

import pytest
import torch

from ntt.models.sam2 import _best_of_3, build_sam2_model


@pytest.fixture(scope="module")
def sam():
    return build_sam2_model("sam2_hiera_t", 256, None, seed=3)


@pytest.fixture(scope="module")
def feats(sam):
    images = torch.rand(3, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    return sam.encode(images)


@pytest.fixture(scope="module")
def prompts():
    gen = torch.Generator().manual_seed(1)
    return [torch.rand(n, 2, generator=gen) * 256 for n in (5, 0, 7)]


def _one_image_at_a_time(sam, feats, prompts):
    """The plain way: each image alone, all its prompts in one call, its features broadcast."""
    out = []
    for i, coords in enumerate(prompts):
        single = {"image_embed": feats["image_embed"][i : i + 1], "high_res": [f[i : i + 1] for f in feats["high_res"]]}
        out.append(sam.decode_batch(single, [coords], chunk=1000)[0])
    return out


def _assert_same(got, expected):
    assert len(got) == len(expected)
    for (logits, iou), (ref_logits, ref_iou) in zip(got, expected):
        assert logits.shape == ref_logits.shape and iou.shape == ref_iou.shape
        torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(iou, ref_iou, atol=1e-5, rtol=1e-5)


def test_chunks_spanning_images_give_each_prompt_its_own_image(sam, feats, prompts):
    expected = _one_image_at_a_time(sam, feats, prompts)
    assert expected[0][0].shape == (5, 64, 64) and expected[1][0].shape == (0, 64, 64)
    # The images differ, so a prompt decoded on the wrong image would give other logits.
    assert not torch.allclose(expected[0][0][0], sam.decode_batch(feats, [prompts[0][:1]] * 3, 4)[2][0][0])
    _assert_same(sam.decode_batch(feats, prompts, chunk=4), expected)  # chunks: [5 | 7 split 4+3] across images
    _assert_same(sam.decode_batch(feats, prompts, chunk=1), expected)


def test_best_of_three_picks_the_highest_predicted_iou(sam, feats, prompts):
    pts = prompts[0][:, None, :]
    labels = torch.ones(pts.shape[:2], dtype=torch.int)
    embed, high_res = feats["image_embed"][:1], [f[:1] for f in feats["high_res"]]
    sparse, dense = sam.model.sam_prompt_encoder(points=(pts, labels), boxes=None, masks=None)
    masks, iou, _, _ = sam.model.sam_mask_decoder(
        embed, sam.model.sam_prompt_encoder.get_dense_pe(), sparse, dense, True, True, high_res
    )
    logits, best_iou = _best_of_3(sam.model, embed, high_res, pts, True)
    for k in range(len(pts)):
        j = int(iou[k].argmax())
        assert torch.equal(logits[k], masks[k, j]) and best_iou[k] == iou[k].max()


def test_no_prompts_at_all_gives_empty_results(sam, feats):
    out = sam.decode_batch(feats, [torch.zeros(0, 2)] * 3, chunk=8)
    assert [tuple(lg.shape) for lg, _ in out] == [(0, 64, 64)] * 3 and all(len(i) == 0 for _, i in out)


@pytest.mark.slow
def test_compiled_decoder_is_one_graph_and_matches_eager(sam, feats, prompts, caplog):
    """fullgraph=True: a graph break (e.g. an SDPA backend context manager inside SAM2's attention) would
    fail the capture and fall back to eager with a warning, which this test refuses."""
    expected = _one_image_at_a_time(sam, feats, prompts)
    sam.compile_backend = "eager"  # dynamo's capture without code generation: fast, no compiler needed
    sam._compiled = None
    try:
        with caplog.at_level(logging.WARNING, logger="ntt.models.sam2"):
            got = sam.decode_batch(feats, prompts, chunk=7, compiled=True)  # chunks 7 + 5 (padded to 8)
        assert sam._compiled is not _best_of_3 and not caplog.records
        _assert_same(got, expected)
    finally:
        sam.compile_backend, sam._compiled = "inductor", None


def test_a_failing_compiler_falls_back_to_eager(sam, feats, prompts, caplog):
    expected = _one_image_at_a_time(sam, feats, prompts)

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    sam._compiled = broken
    try:
        with caplog.at_level(logging.WARNING, logger="ntt.models.sam2"):
            got = sam.decode_batch(feats, prompts, chunk=8, compiled=True)
        assert "decoding without it" in caplog.text and sam._compiled is _best_of_3
        _assert_same(got, expected)
    finally:
        sam._compiled = None
