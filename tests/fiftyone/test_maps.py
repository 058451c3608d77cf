"""Maps and "more like this" from the kept embeddings: oracle cases with planted vectors, then a real run."""

from __future__ import annotations

import fiftyone as fo
import numpy as np
import pytest

import ntt.fo as nfo
from ntt.fo.embeddings import load_embeddings, save_embeddings
from ntt.fo.review.maps import index_similarity, map_predictions

DIM = 32


@pytest.fixture
def planted(tmp_path):
    """6 samples x 4 predictions with controlled vectors: 5 false positives (spread over the samples) all close to
    one direction, the others random; returns the dataset and the planted labels' ids."""
    rng = np.random.default_rng(7)
    ds = fo.Dataset()
    ds.add_samples(
        [
            fo.Sample(
                filepath=str(tmp_path / f"{i}.jpg"),
                pred=fo.Detections(
                    detections=[fo.Detection(label="dog", bounding_box=[0.1 * k, 0.1, 0.1, 0.1]) for k in range(4)]
                ),
            )
            for i in range(6)
        ]
    )
    sample_ids, label_ids = ds.values(["id", "pred.detections.id"])
    toy = _unit(rng.normal(size=DIM))
    planted = [label_ids[s][k] for s, k in ((0, 1), (1, 3), (2, 0), (4, 2), (5, 1))]
    rows = []
    for sid, labels in zip(sample_ids, label_ids):
        for lid in labels:
            vector = toy + 0.05 * rng.normal(size=DIM) if lid in planted else rng.normal(size=DIM)
            rows.append((sid, lid, _unit(vector)))
    save_embeddings(ds, rows)
    yield ds, planted
    ds.delete()


def _unit(v):
    return (v / np.linalg.norm(v)).astype(np.float32)


def test_more_like_this_finds_the_planted_false_positives_through_the_similarity_index(planted):
    ds, fps = planted
    found = index_similarity(ds, "pred")
    assert found == {"brain_key": "pred_sim", "indexed": 24, "missing": 0}
    patches = ds.to_patches("pred")
    for query in (fps[0], fps[3]):
        nearest = patches.sort_by_similarity(query, k=5, brain_key="pred_sim").values("id")
        assert set(nearest) == set(fps), "the five planted false positives are each other's nearest neighbours"
    again = index_similarity(ds, "pred")  # after segmenting again: the key is replaced, not refused
    assert again["indexed"] == 24 and ds.list_brain_runs() == ["pred_sim"]


def test_predictions_without_a_kept_vector_are_left_out_and_counted(planted):
    ds, fps = planted
    from ntt.fo.embeddings import delete_embeddings

    other = next(i for i in ds.values("pred.detections.id", unwind=True) if i not in fps)
    delete_embeddings(ds, [other])
    found = index_similarity(ds, "pred", brain_key="sim")
    assert found["indexed"] == 23 and found["missing"] == 1
    nearest = ds.to_patches("pred").sort_by_similarity(fps[1], k=5, brain_key="sim").values("id")
    assert set(nearest) == set(fps)


def test_a_map_clusters_the_planted_group_and_refuses_anothers_brain_key(planted):
    ds, fps = planted
    out = map_predictions(ds, "pred", method="pca", similarity=False)
    assert out["points"] == 24 and out["missing"] == 0 and out["shots"] == 0 and out["similarity"] is None
    results = ds.load_brain_results("pred_map")
    by_label = dict(zip(results.current_label_ids, results.current_points))
    spread = lambda ids: np.ptp(np.stack([by_label[i] for i in ids]), axis=0).max()  # noqa: E731
    others = [i for i in by_label if i not in fps]
    assert spread(fps) < 0.2 * spread(others), "the planted group is one tight cluster on the map"

    ds.compute_metadata()  # a user's own run under the key ntt would use for its index
    import fiftyone.brain as fob

    fob.compute_visualization(ds, points=np.zeros((len(ds), 2)), brain_key="pred_sim")
    with pytest.raises(nfo.NTTFiftyOneError, match="brain key 'pred_sim' holds another run"):
        map_predictions(ds, "pred", method="pca")
    assert "pred_sim" in ds.list_brain_runs()
    with pytest.raises(nfo.NTTFiftyOneError, match="method must be one of"):
        map_predictions(ds, "pred", method="mds")


def test_a_field_without_kept_vectors_says_what_to_do(planted):
    ds, _ = planted
    from ntt.fo.embeddings import delete_dataset_embeddings

    delete_dataset_embeddings(ds)
    with pytest.raises(nfo.NTTFiftyOneError, match="keep_embeddings=True"):
        map_predictions(ds, "pred")
    with pytest.raises(nfo.NTTFiftyOneError, match="has no field 'nope'"):
        index_similarity(ds, "nope")


def test_a_real_run_maps_its_predictions_with_the_banks_shots_in_the_same_coordinates(dataset, random_config):
    ds = dataset
    nfo.mark_references(ds.limit(3))
    nfo.build_bank(ds, "pets", label_field="gt", config=random_config)
    nfo.segment(ds, "pets", label_field="ntt")
    bank = nfo.load_bank(ds, "pets")
    # a prediction whose vector is exactly a shot's must land on that shot
    first = ds.values("ntt.detections.id", unwind=True)[0]
    shot = bank.shot_features[0] / np.linalg.norm(bank.shot_features[0])
    save_embeddings(ds, [(None, first, shot)])
    out = map_predictions(ds, "ntt", method="pca")
    assert out["points"] == ds.count("ntt.detections") and out["missing"] == 0
    assert out["shots"] == len(bank.shots) == out["shots_here"] and out["shots_brain_key"] == "ntt_map_shots"
    assert out["similarity"]["indexed"] == out["points"]
    preds = ds.load_brain_results("ntt_map")
    point = dict(zip(preds.current_label_ids, preds.current_points))[first]
    np.testing.assert_allclose(point, out["shot_points"][0], atol=0.05 * np.ptp(preds.current_points))
    shots = ds.load_brain_results("ntt_map_shots")
    assert shots.config.patches_field == "gt" and len(shots.current_points) == len(bank.shots)
    where = dict(zip(shots.current_label_ids, shots.current_points))
    np.testing.assert_allclose(where[str(bank.shots[0]["annotation_id"])], out["shot_points"][0], atol=1e-5)
    assert set(load_embeddings(ds, preds.current_label_ids)) == set(preds.current_label_ids)


def test_the_map_operator_opens_the_panel_and_a_lassoed_cluster_becomes_negatives(dataset, random_config):
    """The App's flow: 'NTT: map predictions' opens the Embeddings panel; a lasso there (FiftyOne 1.22's panel
    narrows the view with an extended MatchLabels stage of their ids, as the browser test sees) then 'NTT: mark as
    negatives', with no other step, teaches the bank those labels."""
    from test_plugin import _stream

    ds = dataset
    nfo.mark_references(ds.limit(3))
    nfo.build_bank(ds, "pets", label_field="gt", config=random_config)
    nfo.segment(ds, "pets", label_field="ntt")
    messages, error = _stream("map_predictions", ds, {"label_field": "ntt", "method": "pca"})
    assert error is None
    sent = dict(messages)
    assert sent["open_panel"]["name"] == "Embeddings"
    results = sent["show_output"]["results"]
    assert results["brain_key"] == "ntt_map" and results["points"] == ds.count("ntt.detections")
    assert results["similarity_key"] == "ntt_sim" and results["shots_brain_key"] == "ntt_map_shots"

    lassoed = ds.values("ntt.detections.id", unwind=True)[:3]
    classes = {i: c for i, c in zip(*ds.values(["ntt.detections.id", "ntt.detections.label"], unwind=True))}
    lasso = {"fiftyone.core.stages.MatchLabels": {"ids": lassoed, "fields": ["ntt"], "bool": True}}
    _, error = _stream("mark_negatives", ds, {"bank": "pets", "device": "cpu"}, extended=lasso)
    assert error is None
    negatives = [s for s in nfo.load_bank(ds, "pets").shots if s.get("negative")]
    assert sorted(s["annotation_id"] for s in negatives) == sorted(lassoed)
    bank = nfo.load_bank(ds, "pets")
    names = dict(zip(bank.class_ids, bank.class_names))
    assert all(names[s["class_id"]] == classes[s["annotation_id"]] for s in negatives), "each of its own class"


def test_promotion_with_a_lasso_promotes_the_verdicts_of_the_lassoed_labels_only(dataset, random_config):
    from test_plugin import _stream

    ds = dataset
    nfo.mark_references(ds.limit(3))
    nfo.build_bank(ds, "pets", label_field="gt", config=random_config)
    nfo.segment(ds, "pets", label_field="ntt")
    sample = ds.exists("ntt").match(fo.ViewField("ntt.detections").length() >= 2).first()
    lassoed, other = sample.ntt.detections[:2]
    lassoed.tags, other.tags = ["correct"], ["correct"]
    sample.save()
    before = len(nfo.load_bank(ds, "pets").shots)
    lasso = {"fiftyone.core.stages.MatchLabels": {"ids": [lassoed.id], "fields": ["ntt"], "bool": True}}
    params = {"bank": "pets", "label_field": "ntt", "device": "cpu"}
    _, error = _stream("promote_corrections", ds, params, extended=lasso)
    assert error is None
    added = nfo.load_bank(ds, "pets").shots[before:]
    assert [s["annotation_id"] for s in added] == [lassoed.id], "only the lassoed label's verdict"
