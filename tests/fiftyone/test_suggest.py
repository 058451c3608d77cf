"""Which samples to label next (``suggest_references``): on planted groups of near-duplicate images the cover picks
one per group and starts from the references; with a bank, its targets most unsure first; unreadable images are
reported; the image vectors are cached; bad input is one clear error; the operator runs it and opens the picks.

Random-weight DINOv2 (no pretrained weights here) still embeds a picture and its lightly perturbed copies far
closer to each other (cosine > 0.9) than to other pictures (< 0.3): the groups are a known answer.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import ntt.fo as nfo
from ntt.fo.review.suggest import suggest_references
from ntt.predict import image_embeddings

COPIES = 4
TAG = "ntt_to_label"


@pytest.fixture
def planted(coco_source, tmp_path):
    """A dataset of 3 groups x 4 PNGs: 3 distinct COCO pictures (160 px), each copy with a little noise (+-3)
    and its own brightness shift (0-6). Yields (dataset, group of each sample id)."""
    import fiftyone as fo

    rng = np.random.default_rng(0)
    sources = [coco_source.skip(k).first().filepath for k in (0, 3, 7)]
    ds = fo.Dataset()
    groups = {}
    for g, source in enumerate(sources):
        with Image.open(source) as img:
            img = img.convert("RGB")
            img.thumbnail((160, 160))
            pixels = np.asarray(img).astype(int)
        for k in range(COPIES):
            copy = np.clip(pixels + rng.integers(-3, 4, pixels.shape) + 2 * k, 0, 255).astype(np.uint8)
            path = tmp_path / f"group{g}_copy{k}.png"
            Image.fromarray(copy).save(path)
            sample = fo.Sample(filepath=str(path))
            ds.add_sample(sample)
            groups[sample.id] = g
    yield ds, groups
    ds.delete()


def test_the_cover_picks_one_sample_of_each_planted_group_and_tags_them(planted, random_config):
    ds, groups = planted
    ids, paths = ds.values(["id", "filepath"])
    vectors = image_embeddings.image_embeddings(paths, random_config).vectors
    same = np.equal.outer([groups[i] for i in ids], [groups[i] for i in ids])
    cosines = vectors @ vectors.T
    assert cosines[same].min() > 0.9 and cosines[~same].max() < 0.3  # the premise: the groups are the answer

    result = suggest_references(ds, count=3, config=random_config)
    assert result["mode"] == "cover" and result["skipped"] == [] and result["centres"] == 0
    assert sorted(groups[i] for i in result["picked"]) == [0, 1, 2]
    assert sorted(ds.match_tags(TAG).values("id")) == sorted(result["picked"])
    assert not ds.match_tags(nfo.forms.DEFAULT_TAG)  # suggestions are not references


def test_references_and_earlier_picks_count_as_centres(planted, random_config):
    ds, groups = planted
    ref = next(i for i, g in groups.items() if g == 0)
    nfo.mark_references(ds.select(ref))
    first = suggest_references(ds, count=2, config=random_config)
    assert first["centres"] == 1 and ref not in first["picked"]
    assert sorted(groups[i] for i in first["picked"]) == [1, 2]  # group 0 has its reference: no pick there

    second = suggest_references(ds, count=3, config=random_config)  # the earlier picks are on the to-label list
    assert second["centres"] == 3
    assert not set(second["picked"]) & {ref, *first["picked"]}
    assert len(ds.match_tags(TAG)) == 5  # earlier tags kept, new picks added


def test_a_label_level_reference_counts_as_a_centre(planted, random_config):
    import fiftyone as fo

    ds, groups = planted
    ref = next(i for i, g in groups.items() if g == 2)
    sample = ds[ref]
    sample["gt"] = fo.Detections(detections=[fo.Detection(label="thing", bounding_box=[0.1, 0.1, 0.5, 0.5])])
    sample.save()
    nfo.mark_references(ds, "gt", label_ids=[sample.gt.detections[0].id])
    result = suggest_references(ds, count=2, config=random_config)
    assert sorted(groups[i] for i in result["picked"]) == [0, 1]


def test_unreadable_images_are_skipped_and_reported_not_raised(planted, random_config, tmp_path):
    import fiftyone as fo

    ds, groups = planted
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    missing = fo.Sample(filepath=str(tmp_path / "gone.png"))
    corrupt = fo.Sample(filepath=str(broken))
    ds.add_samples([missing, corrupt])
    result = suggest_references(ds, count=3, config=random_config)
    reasons = {s["id"]: s for s in result["skipped"]}
    assert set(reasons) == {missing.id, corrupt.id}
    assert reasons[missing.id]["filepath"] == missing.filepath and "gone.png" in reasons[missing.id]["reason"]
    assert "not a readable image" in reasons[corrupt.id]["reason"]
    assert sorted(groups[i] for i in result["picked"]) == [0, 1, 2]
    assert not {missing.id, corrupt.id} & set(ds.match_tags(TAG).values("id"))


def test_a_second_call_takes_the_image_vectors_from_the_cache(planted, random_config, monkeypatch, tmp_path):
    ds, _ = planted
    monkeypatch.setenv("NTT_CACHE_DIR", str(tmp_path / "cache"))
    encoded = []
    real = image_embeddings.embed_images

    def counting(images, encoder, cfg):
        encoded.append(len(images))
        return real(images, encoder, cfg)

    monkeypatch.setattr(image_embeddings, "embed_images", counting)
    first = suggest_references(ds, count=3, config=random_config)
    assert sum(encoded) == len(ds)
    store = image_embeddings.CandidateStore(tmp_path / "cache" / "image_embeddings")
    assert store.info()["entries"] == len(ds)

    encoded.clear()
    ds.untag_samples(TAG)  # the same question again: the same answer, without encoding
    again = suggest_references(ds, count=3, config=random_config)
    assert encoded == [] and again["picked"] == first["picked"]


@pytest.fixture
def banked(dataset, random_config):
    """A bank "pets" from the first two samples of the COCO fixture."""
    nfo.mark_references(dataset.limit(2))
    nfo.build_bank(dataset, "pets", label_field="gt", config=random_config)
    return dataset


def test_with_a_bank_its_targets_are_ranked_most_unsure_first_and_nothing_is_tagged(banked):
    ds = banked
    refs = set(ds.limit(2).values("id"))
    result = suggest_references(ds, count=50, bank="pets")  # the bank's own (random-weights) settings
    assert result["mode"] == "unsure" and result["bank"] == "pets" and result["skipped"] == []
    assert sorted(result["picked"]) == sorted(set(ds.values("id")) - refs)  # every target, no reference
    assert result["targets"] == len(ds) - 2
    scores = result["scores"]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) > 1
    assert all(0 < s <= 1 for s in scores)
    assert ds.count_sample_tags() == {nfo.forms.DEFAULT_TAG: 2}  # nothing tagged

    top = suggest_references(ds, count=3, bank="pets")
    assert top["picked"] == result["picked"][:3] and top["scores"] == scores[:3]


def test_the_smallest_prediction_margin_raises_a_targets_unsureness(banked):
    """All targets given predictions: the target the bank was surest of gets the smallest margin (0.01), the others
    a clear one. Each score is then the mean of its distance rank (alone: its score without predictions) and its
    margin rank: (far + 1) / 2 for the ambiguous one."""
    import fiftyone as fo

    ds = banked
    alone = suggest_references(ds, count=50, bank="pets")
    far = dict(zip(alone["picked"], alone["scores"]))
    surest = alone["picked"][-1]
    for k, sample in enumerate(ds.select(list(far))):
        margin = 0.01 if sample.id == surest else 0.5 + 0.01 * k
        dets = [fo.Detection(label="person", bounding_box=[0, 0, 0.1, 0.1], margin=m) for m in (margin, 0.95)]
        sample["pred"] = fo.Detections(detections=dets)
        sample.save()
    both = suggest_references(ds, count=50, bank="pets", label_field="pred")
    scores = dict(zip(both["picked"], both["scores"]))
    assert scores[surest] == pytest.approx((far[surest] + 1.0) / 2)
    assert both["picked"].index(surest) < alone["picked"].index(surest)


def test_bad_input_is_one_clear_error(banked, random_config):
    ds = banked
    for count in (0, -2, 2.5, "3", True):
        with pytest.raises(nfo.NTTFiftyOneError, match="count must be a whole number >= 1"):
            suggest_references(ds, count=count, config=random_config)
    with pytest.raises(nfo.NTTFiftyOneError, match="no bank named 'nope'.*banks: pets"):
        suggest_references(ds, bank="nope")
    with pytest.raises(nfo.NTTFiftyOneError, match="'filepath' holds StringField, not Detections"):
        suggest_references(ds, bank="pets", label_field="filepath")
    with pytest.raises(nfo.NTTFiftyOneError, match="no field 'nope'"):
        suggest_references(ds, bank="pets", label_field="nope")
    with pytest.raises(nfo.NTTFiftyOneError, match="label_field .* needs a bank"):
        suggest_references(ds, label_field="gt", config=random_config)
    with pytest.raises(nfo.NTTFiftyOneError, match="is the reference tag"):
        suggest_references(ds, tag=nfo.forms.DEFAULT_TAG, config=random_config)
    assert ds.count_sample_tags() == {nfo.forms.DEFAULT_TAG: 2}  # nothing tagged by a refused call


def _context(view, params):
    from fiftyone.operators.executor import ExecutionContext, Executor
    from test_plugin import PLUGIN, _request

    return ExecutionContext(
        request_params=_request(view, params), executor=Executor(), operator_uri=f"{PLUGIN}/suggest_references"
    )


def test_the_operator_tags_the_cover_and_opens_it(planted):
    from plugin.operators.suggest import SuggestReferences

    ds, groups = planted
    operator = SuggestReferences()
    params = {"count": 3, "preset": "smoke", "random_weights": True, "device": "cpu"}
    assert not operator.resolve_input(_context(ds, params)).invalid
    form = operator.resolve_input(_context(ds, {**params, "random_weights": False, "preset": "lite"}))
    assert form.invalid and "dinov2_vits14_pretrain.pth" in form.error_message
    assert "sam2" not in form.error_message  # only DINOv2 runs here

    messages = _messages(operator, ds, params)
    tagged = ds.match_tags(TAG).values("id")
    assert sorted(groups[i] for i in tagged) == [0, 1, 2]
    assert messages["show_output"]["results"]["mode"] == "cover" and messages["show_output"]["results"]["picked"] == 3
    assert sorted(_shown(ds, messages).values("id")) == sorted(tagged)  # the view: the tagged samples


def test_the_operator_opens_a_banks_most_unsure_targets_in_order(banked):
    from plugin.operators.suggest import SuggestReferences

    ds = banked
    expected = suggest_references(ds, count=4, bank="pets")["picked"]
    operator = SuggestReferences()
    form = operator.resolve_input(_context(ds, {"bank": "pets"}))
    assert not form.invalid, form.error_message  # the bank's own random-weights settings: no files needed
    assert form.type.properties["bank"].type.values == ["(none)", "pets"]
    messages = _messages(operator, ds, {"bank": "pets", "count": 4, "label_field": "(none)"})
    assert messages["show_output"]["results"]["mode"] == "unsure"
    assert _shown(ds, messages).values("id") == expected  # most unsure first
    assert ds.count_sample_tags() == {nfo.forms.DEFAULT_TAG: 2}


def _context(view, params):
    from fiftyone.operators.executor import ExecutionContext, Executor
    from test_plugin import PLUGIN, _request

    return ExecutionContext(
        request_params=_request(view, params), executor=Executor(), operator_uri=f"{PLUGIN}/suggest_references"
    )


def _messages(operator, view, params) -> dict:
    """An immediate run as the App streams it (the operator is not registered in this checkout's manifest yet):
    the last params of each operator it triggered."""
    return {m.body.operator_uri: m.body.params for m in operator.execute(_context(view, params))}


def _shown(dataset, messages):
    """The view of ``dataset`` the run opened (``set_view``)."""
    from fiftyone.core.view import DatasetView

    return DatasetView._build(dataset, messages["set_view"]["view"])
