"""Re-segmenting from the candidate cache: a hit gives the detections of the run that filled it, a changed bank
re-labels from the cache and agrees with a fresh run, anything the pool depends on changes the key."""

from __future__ import annotations

import numpy as np
import pytest

from ntt.bank import sampling
from ntt.bank.encoder import build_bank
from ntt.cache.stages import stage_cache
from ntt.cache.store import CandidateStore
from ntt.config import derive, get_config
from ntt.io import coco
from ntt.io.images import load_image
from ntt.predict.predictor import Predictor
from ntt.predict.segmenter import Segmenter


def _config(**segment):
    segment = {"pred_iou_thresh": 0.0, "nms_thresh": 1.0, **segment}
    return get_config("smoke", {"model": {"random_weights": True, "device": "cpu"}, "segment": segment})


@pytest.fixture(scope="module")
def bank(coco128):
    data = coco.load_json(coco128 / "annotations" / "instances_train2017.json")
    cats = coco.select_categories(data, ["person", "dog", "car", "chair"])
    anns = sampling.sample_shots(data, cats, shots=2, seed=33, explicit=True)
    refs = coco.references_from_coco(data, coco128 / "images" / "train2017", anns, box_only=False)
    return build_bank(refs, _config())


@pytest.fixture(scope="module")
def paths(coco128):
    return sorted((coco128 / "images" / "val2017").glob("*.jpg"))[:4]


def _iou(a, b) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _agreement(expected, got) -> float:
    """Share of ``expected``'s detections that ``got`` has too: same class, mask IoU >= 0.9."""
    total = matched = 0
    for a, b in zip(expected, got):
        total += len(a)
        matched += sum(
            any(c == d and _iou(m, n) >= 0.9 for d, n in zip(b.class_ids, b.masks))
            for c, m in zip(a.class_ids, a.masks)
        )
    return matched / max(total, 1)


def test_a_hit_gives_the_detections_of_the_run_that_filled_it(bank, paths, tmp_path):
    store = CandidateStore(tmp_path)
    filling = Segmenter(bank, _config(), cache=store)
    first = [r.instances for r in filling.run(paths)]
    assert (filling.cache.hits, filling.cache.misses) == (0, len(paths)) and store.info()["entries"] == len(paths)
    again = Segmenter(bank, _config(), cache=store)
    second = [r.instances for r in again.run(paths)]
    assert (again.cache.hits, again.cache.misses) == (len(paths), 0)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.class_ids, b.class_ids)
    uncached = [r.instances for r in Segmenter(bank, _config()).run(paths)]
    assert sum(len(r) for r in uncached) > 0 and _agreement(uncached, first) >= 0.99


def test_after_a_bank_change_the_cache_relabels_like_a_fresh_run(bank, paths, tmp_path):
    store = CandidateStore(tmp_path)
    list(Segmenter(bank, _config(), cache=store).run(paths))
    changed = bank.remove(class_names=[bank.class_names[0]])
    cached = Segmenter(changed, _config(), cache=store)
    relabelled = [r.instances for r in cached.run(paths)]
    assert cached.cache.hits == len(paths)
    fresh = [r.instances for r in Segmenter(changed, _config()).run(paths)]
    assert set(np.concatenate([r.class_ids for r in relabelled]).tolist()) <= set(changed.class_ids)
    assert _agreement(fresh, relabelled) >= 0.95


def test_the_key_follows_the_image_content_models_sizes_and_prompts(bank, paths, tmp_path):
    store = CandidateStore(tmp_path)
    image = load_image(paths[0])
    base = stage_cache(Predictor(bank, _config()), store)
    renamed = tmp_path / "renamed.jpg"
    renamed.write_bytes(paths[0].read_bytes())
    assert base.key(paths[0], image) == base.key(renamed, image)
    edited = image.copy()
    edited[0, 0] ^= 1
    assert base.key(edited, edited) != base.key(image, image)
    others = [
        _config(points_per_side=5),
        _config(pred_iou_thresh=0.1),
        derive(_config(), model={"sam2_image_size": 320}),
        derive(_config(), model={"seed": 3}),  # other weights: other fingerprints
    ]
    for cfg in others:
        other_bank = bank if cfg.model.seed == 0 else build_bank_like(bank, cfg)
        assert stage_cache(Predictor(other_bank, cfg), store).key(paths[0], image) != base.key(paths[0], image)


def build_bank_like(bank, cfg):
    """The same shots for other (random) weights: a predictor refuses a bank of another encoder."""
    from ntt.bank.memory import MemoryBank
    from ntt.models import encoder_identity, get_dinov2

    encoder = encoder_identity(get_dinov2(cfg.model), cfg.model)
    return MemoryBank(bank.classes, bank.shot_features, bank.shot_class_ids, bank.shots, encoder)


def test_guided_prompts_reuse_the_encoders_outputs(bank, paths, tmp_path):
    """Guided prompts depend on the bank: the cache keeps the encoders' outputs and the decoder runs again."""
    store = CandidateStore(tmp_path)
    guided = _config(prompt_mode="guided", guided_points=8, guided_grid=2)
    filling = Segmenter(bank, guided, cache=store)
    first = [r.instances for r in filling.run(paths)]
    assert (filling.cache.hits, filling.cache.misses) == (0, len(paths)) and store.info()["entries"] == len(paths)
    uncached = [r.instances for r in Segmenter(bank, guided).run(paths)]
    assert sum(len(r) for r in uncached) > 0 and _agreement(uncached, first) >= 0.99

    changed = bank.remove(class_names=[bank.class_names[0]])
    more_points = derive(guided, segment={"guided_points": 12})  # prompts are not in the key: still hits
    cached = Segmenter(changed, more_points, cache=store)
    relabelled = [r.instances for r in cached.run(paths)]
    assert (cached.cache.hits, cached.cache.misses) == (len(paths), 0)
    fresh = [r.instances for r in Segmenter(changed, more_points).run(paths)]
    assert _agreement(fresh, relabelled) >= 0.95
    grid_key = stage_cache(Predictor(bank, _config()), store).key(paths[0], load_image(paths[0]))
    assert grid_key != cached.cache.key(paths[0], load_image(paths[0]))
