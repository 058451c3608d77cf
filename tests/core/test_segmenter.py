"""Predictor and Segmenter on real COCO images with tiny random-weight models: invariants, batching, empty results."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntt.bank import sampling
from ntt.bank.encoder import build_bank
from ntt.bank.memory import BankError
from ntt.config import derive, get_config
from ntt.geometry import mask_tight_box_xywh
from ntt.io import coco
from ntt.io.images import load_image
from ntt.predict.predictor import DecoderOutOfMemory, Predictor
from ntt.predict.segmenter import MAX_AUTO_BATCH, MIN_POINTS_CHUNK, Segmenter, fit_batch_size


@pytest.fixture(scope="module")
def bank(coco128):
    cfg = get_config("smoke", {"model": {"random_weights": True, "device": "cpu"}})
    data = coco.load_json(coco128 / "annotations" / "instances_train2017.json")
    cats = coco.select_categories(data, ["person", "dog", "car"])
    anns = sampling.sample_shots(data, cats, shots=2, seed=33, explicit=True)
    refs = coco.references_from_coco(data, coco128 / "images" / "train2017", anns, box_only=False)
    return build_bank(refs, cfg)


@pytest.fixture(scope="module")
def images(coco128):
    paths = sorted((coco128 / "images" / "val2017").glob("*.jpg"))[:3]
    return [load_image(p) for p in paths]


def _config(**segment):
    # Random weights propose near-identical masks: let every candidate through the filters.
    segment = {"pred_iou_thresh": 0.0, "nms_thresh": 1.0, **segment}
    return get_config("smoke", {"model": {"random_weights": True, "device": "cpu"}, "segment": segment})


def test_predictions_are_well_formed(bank, images):
    seg = Predictor(bank, _config())
    results = seg.predict(images)
    assert len(results) == len(images)
    assert sum(len(r) for r in results) > 0
    for img, inst in zip(images, results):
        h, w = img.shape[:2]
        assert inst.image_size == (h, w) and inst.masks.shape[1:] == (h, w)
        assert len(inst) <= seg.cfg.segment.max_instances
        assert np.all(np.diff(inst.scores) <= 0), "scores must be sorted"
        assert np.all((inst.scores >= 0) & (inst.scores <= 1))
        assert set(inst.class_ids.tolist()) <= set(bank.class_ids)
        assert np.all(inst.boxes[:, :2] >= 0) and np.all(inst.boxes[:, 2] <= w) and np.all(inst.boxes[:, 3] <= h)
        for box, mask in zip(inst.boxes, inst.masks):
            x, y, bw, bh = mask_tight_box_xywh(mask)
            assert box.tolist() == [x, y, x + bw, y + bh]


def test_batching_does_not_change_results(bank, images):
    one = Predictor(bank, _config(batch_size=1))
    batched = [one.predict([img])[0] for img in images]
    together = Predictor(bank, _config(batch_size=3)).predict(images)
    for a, b in zip(batched, together):
        assert len(a) == len(b)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
        assert (a.masks != b.masks).mean() < 1e-3


def test_every_prompt_is_decoded_whatever_the_chunk(bank, images):
    seg = Predictor(bank, _config(points_per_side=5, points_batch_size=7))
    seg.predict(images[:1])
    assert seg.last_counts[0]["prompts"] == 25


def test_nothing_left_gives_empty_result(bank, images):
    seg = Predictor(bank, _config(pred_iou_thresh=1.5))
    inst = seg.predict(images[:1])[0]
    assert len(inst) == 0
    assert inst.masks.shape == (0, *images[0].shape[:2])


def test_score_threshold_and_max_instances(bank, images):
    base = Predictor(bank, _config()).predict(images[:1])[0]
    assert len(base) >= 2
    cut = float(np.median(base.scores))
    limited = Predictor(bank, _config(score_thresh=cut, max_instances=1)).predict(images[:1])[0]
    assert len(limited) == 1 and limited.scores[0] >= cut


def test_per_class_threshold_removes_only_that_class(bank, images):
    base = Predictor(bank, _config()).predict(images)
    names = {c["id"]: c["name"] for c in bank.classes}
    present = {names[i] for r in base for i in r.class_ids.tolist()}
    target = sorted(present)[0]
    gated = Predictor(bank, _config(class_thresholds={target: 1.0})).predict(images)  # scores < 1 here
    kept = {names[i] for r in gated for i in r.class_ids.tolist()}
    assert target not in kept
    assert kept == present - {target}


def test_unknown_class_threshold_is_rejected(bank):
    with pytest.raises(ValueError, match="not in the bank"):
        Predictor(bank, _config(class_thresholds={"unicorn": 0.5}))


def test_bank_from_other_encoder_is_rejected(bank):
    cfg = get_config("smoke", {"model": {"random_weights": True, "device": "cpu", "seed": 7}})
    with pytest.raises(BankError, match="random"):
        Predictor(bank, cfg)


def test_bf16_autocast_runs_and_agrees_on_shapes(bank, images):
    cfg = derive(_config(), model={"dtype": "bf16"})
    inst = Predictor(bank, cfg).predict(images[:1])[0]
    ref = Predictor(bank, _config()).predict(images[:1])[0]
    assert inst.masks.dtype == bool and inst.scores.dtype == np.float32
    assert np.all((inst.scores >= 0) & (inst.scores <= 1)) and len(inst) > 0
    assert abs(len(inst) - len(ref)) <= max(2, len(ref) // 5)


def test_out_of_memory_splits_the_batch_and_keeps_going(bank, images, monkeypatch):
    seg = Segmenter(bank, _config(batch_size=3, loader_workers=0))
    expected = seg.predictor.predict(images)
    real_pools = seg.predictor.mask_pools
    sizes = []

    def pools_with_small_memory(batch, prepared=None, points_chunk=None):
        sizes.append(len(batch))
        if len(batch) > 1:  # an encoder's failure: only a smaller batch helps
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_pools(batch, prepared, points_chunk)

    monkeypatch.setattr(seg.predictor, "mask_pools", pools_with_small_memory)
    got = [r.instances for r in seg.run(images)]
    assert sizes[:3] == [3, 1, 2] and seg.batch_size == 1
    assert [len(r) for r in got] == [len(r) for r in expected]
    assert seg.points_chunk == 256  # the decoder did not fail: its chunk is left alone


def test_image_that_never_fits_is_reported_not_raised(bank, images, monkeypatch):
    seg = Segmenter(bank, _config())

    def always_oom(batch, prepared=None, points_chunk=None):
        raise DecoderOutOfMemory("CUDA out of memory.")

    monkeypatch.setattr(seg.predictor, "mask_pools", always_oom)
    got = list(seg.run(images[:2]))
    assert [r.error for r in got] == ["out of memory even alone (CUDA out of memory.)"] * 2
    assert [r.instances for r in got] == [None, None]
    assert seg.points_chunk == MIN_POINTS_CHUNK  # fewer prompts per decoder call were tried first


def test_an_encoder_out_of_memory_on_one_image_is_reported_at_once(bank, images, monkeypatch):
    seg = Segmenter(bank, _config())
    calls = []

    def encoder_oom(batch, prepared=None, points_chunk=None):
        calls.append(points_chunk)
        raise torch.OutOfMemoryError("CUDA out of memory.")

    monkeypatch.setattr(seg.predictor, "mask_pools", encoder_oom)
    assert [r.error for r in seg.run(images[:1])] == ["out of memory even alone (CUDA out of memory.)"]
    assert calls == [256]  # smaller decoder chunks cannot help an encoder


def test_decoder_out_of_memory_halves_the_chunk_not_the_batch(bank, images, monkeypatch):
    seg = Segmenter(bank, _config(batch_size=3, points_batch_size=256, loader_workers=0))
    expected = seg.predictor.predict(images)
    real_decode = seg.predictor.sam.decode_batch
    batches = []

    def decode_needing_small_chunks(feats, prompts, chunk, compiled=False):
        batches.append(len(prompts))
        if chunk > 64:
            raise torch.OutOfMemoryError("CUDA out of memory.")
        return real_decode(feats, prompts, chunk, compiled)

    monkeypatch.setattr(seg.predictor.sam, "decode_batch", decode_needing_small_chunks)
    got = [r.instances for r in seg.run(images)]
    assert seg.points_chunk == 64 and seg.batch_size == 3 and batches == [3, 3, 3]
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


@pytest.mark.parametrize("prompt_mode", ["grid", "guided"])
def test_a_retried_batch_counts_each_cached_image_once(bank, images, monkeypatch, tmp_path, prompt_mode):
    """The decoder fails once on a batch of 3 with the cache on: the retry (which finds the guided prompts'
    encoder outputs already stored) still counts 3 images computed, none reused."""
    from ntt.cache.store import CandidateStore

    cfg = _config(batch_size=3, loader_workers=0, prompt_mode=prompt_mode, guided_points=4, guided_grid=2)
    seg = Segmenter(bank, cfg, cache=CandidateStore(tmp_path))
    real_decode, failed = seg.predictor.sam.decode_batch, []

    def decode_failing_once(feats, prompts, chunk, compiled=False):
        if not failed:
            failed.append(chunk)
            raise torch.OutOfMemoryError("CUDA out of memory.")
        return real_decode(feats, prompts, chunk, compiled)

    monkeypatch.setattr(seg.predictor.sam, "decode_batch", decode_failing_once)
    assert all(r.error is None for r in seg.run(images)) and failed
    assert (seg.cache.hits, seg.cache.misses) == (0, len(images)) == (0, 3)


@pytest.mark.parametrize(
    ("available", "per_image", "expected"),
    [(10e9, 1e9, 8), (1e9, 2e9, 1), (1e12, 1e9, MAX_AUTO_BATCH), (5e9, 0, MAX_AUTO_BATCH), (2.5e9, 1e9, 2)],
)
def test_fit_batch_size(available, per_image, expected):
    assert fit_batch_size(available, per_image) == expected


def test_automatic_batch_size_is_one_on_the_cpu(bank):
    seg = Segmenter(bank, _config(batch_size=0))
    assert seg.batch_size == 1 and not seg._fit_batch


def test_automatic_batch_size_fits_the_first_images_peak_memory(bank, coco128, images, monkeypatch):
    """The GPU sizing logic, with torch.cuda's memory counters faked: 2 GiB peak for one image,
    20 GiB free -> 8 images per batch (80 % headroom); the results do not depend on it."""
    gib = 2**30
    fake = {
        "reset_peak_memory_stats": lambda device=None: None,
        "memory_allocated": lambda device=None: 1 * gib,
        "max_memory_allocated": lambda device=None: 3 * gib,
        "memory_reserved": lambda device=None: 1 * gib,
        "mem_get_info": lambda device=None: (20 * gib, 80 * gib),
    }
    for name, fn in fake.items():
        monkeypatch.setattr(torch.cuda, name, fn)
    seg = Segmenter(bank, _config(batch_size=0))
    seg._fit_batch = True  # as on a GPU
    paths = sorted((coco128 / "images" / "val2017").glob("*.jpg"))[:3]
    got = [r.instances for r in seg.run(paths)]
    assert seg.batch_size == 8 and not seg._fit_batch
    expected = Predictor(bank, _config(batch_size=1)).predict(images)
    assert [len(r) for r in got] == [len(r) for r in expected]


@pytest.mark.parametrize("workers", [0, 2])
def test_run_loading_ahead_or_not_gives_the_same_results(bank, coco128, images, workers):
    paths = sorted((coco128 / "images" / "val2017").glob("*.jpg"))[:3]
    expected = Predictor(bank, _config(batch_size=2)).predict(images)
    got = [r.instances for r in Segmenter(bank, _config(batch_size=2, loader_workers=workers)).run(paths)]
    for a, b in zip(got, expected):
        assert len(a) == len(b) and np.array_equal(a.class_ids, b.class_ids)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
        assert np.array_equal(a.masks, b.masks)


def test_run_keeps_the_order_of_sources(bank, coco128, tmp_path):
    good = sorted((coco128 / "images" / "val2017").glob("*.jpg"))[:3]
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope")
    sources = [good[0], bad, good[1], tmp_path / "missing.jpg", good[2]]
    results = list(Segmenter(bank, _config(batch_size=2)).run(sources))
    assert [r.source for r in results] == sources
    assert [r.instances is None for r in results] == [False, True, False, True, False]


def test_with_grid_prompts_the_mask_pool_does_not_depend_on_the_bank(bank, images):
    """What a cache may keep across bank changes: the same pool from two banks; and the stages compose to
    ``predict``."""
    smaller = bank.remove(class_names=[bank.class_names[0]])
    first, second = Predictor(bank, _config()), Predictor(smaller, _config())
    pools = []
    for predictor in (first, second):
        encoded = predictor.encode([predictor.prepare(images[0])])
        pools.append(predictor.pool_masks(predictor.propose(encoded, 256)[0], encoded.tokens[0]))
    assert len(pools[0].iou) > 0
    for name in ("logits", "iou", "embeddings", "boxes"):
        assert torch.equal(getattr(pools[0], name), getattr(pools[1], name)), name
    staged = first.select(first.match(pools[0]), images[0].shape[:2])
    whole = first.predict(images[:1])[0]
    np.testing.assert_array_equal(staged.boxes, whole.boxes)
    np.testing.assert_array_equal(staged.scores, whole.scores)
    assert np.array_equal(staged.masks, whole.masks)


def test_every_stage_has_a_result_for_a_batch_of_no_images(bank):
    """A batch can be left with no image after the loader skipped some: each stage says what that gives."""
    from ntt.predict.predictor import Encoded

    pred = Predictor(bank, _config(prompt_mode="guided", guided_points=4, guided_grid=2))
    empty = Encoded.join([])
    assert len(empty) == 0 and empty.split() == [] and len(pred.encode([])) == 0
    assert pred.pools_from(empty) == [] and pred.mask_pools([]) == [] and pred.predict([]) == []
    one = pred.encode([pred.prepare(np.zeros((32, 48, 3), np.uint8))])
    assert len(Encoded.join([empty, one, Encoded.empty()])) == 1, "empty parts add nothing"


@pytest.mark.parametrize("prompt_mode", ["grid", "guided"])
@pytest.mark.parametrize(("batch", "order"), [(1, "BGB"), (3, "GGGBB"), (2, "BBB")])
def test_a_batch_left_with_only_unreadable_files_is_skipped_not_raised(
    bank, coco128, tmp_path, prompt_mode, batch, order
):
    """The report: guided prompts with the cache on died in ``Encoded.join([])`` when the last batch held only
    unreadable files (a full batch of good images before them)."""
    from ntt.cache.store import CandidateStore

    good = iter(sorted((coco128 / "images" / "val2017").glob("*.jpg")))
    sources = []
    for i, slot in enumerate(order):
        sources.append(next(good) if slot == "G" else tmp_path / f"bad{i}.jpg")
        if slot == "B":
            sources[-1].write_bytes(b"")
    cfg = _config(batch_size=batch, prompt_mode=prompt_mode, guided_points=4, guided_grid=2)
    for cache in (None, CandidateStore(tmp_path / "cache"), CandidateStore(tmp_path / "cache")):  # off, fill, hit
        results = list(Segmenter(bank, cfg, cache=cache).run(sources))
        assert [r.source for r in results] == sources
        assert [r.error is not None and "empty file" in r.error for r in results] == [s == "B" for s in order]
