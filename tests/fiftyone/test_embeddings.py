"""Each prediction's embedding is kept outside the samples, by label id, on every way of segmenting: the vector its
class was matched with (checked against the detection's own ``class_cosine``), none left behind for labels that
were replaced or never written, and none at all when not asked for."""

from __future__ import annotations

import numpy as np
import pytest
from bson import ObjectId

import ntt.fo as nfo
from ntt.fo.embeddings import delete_dataset_embeddings, embeddings_collection, load_embeddings
from ntt.fo.jobs.shards import shards_collection
from ntt.fo.labelling.writes import EmbeddingWrites, write_labels
from ntt.fo.store import dataset_key
from ntt.steps import drive


@pytest.fixture
def banked(dataset, random_config):
    nfo.mark_references(dataset.limit(3))
    nfo.build_bank(dataset, "pets", label_field="gt", config=random_config)
    return dataset


def _stored(ds) -> int:
    """How many vectors the collection holds for this dataset (orphans included)."""
    return embeddings_collection().count_documents({"_id": {"$regex": f"^{dataset_key(ds)}"}})


def _assert_each_label_has_its_own_vector(ds, field: str) -> None:
    """Every label of ``field`` has a vector, it is the one its class was matched with (its cosine to the class
    prototype is the label's ``class_cosine``), and the dataset holds no other vector."""
    bank = nfo.load_bank(ds, "pets")
    prototypes = dict(zip(bank.class_names, bank.class_prototypes()))
    dets = [d for s in ds.exists(field) for d in s[field].detections]
    assert len(dets) > 5, "the random-weights run should predict something"
    vectors = load_embeddings(ds, [d.id for d in dets])
    assert set(vectors) == {d.id for d in dets}
    cosines = np.array([vectors[d.id] @ prototypes[d.label] for d in dets])
    np.testing.assert_allclose(cosines, [d.class_cosine for d in dets], atol=0.01)
    assert np.ptp([d.class_cosine for d in dets]) > 0.03, "distinct cosines: a swapped vector would show"
    np.testing.assert_allclose([np.linalg.norm(v) for v in vectors.values()], 1.0, atol=0.01)
    assert _stored(ds) == len(dets), "no vector of a label that is not there"


def test_segment_keeps_each_predictions_vector_and_replaces_them_with_the_labels(banked):
    ds = banked
    nfo.segment(ds, "pets", label_field="ntt", batch_size=4)
    _assert_each_label_has_its_own_vector(ds, "ntt")
    before = set(ds.values("ntt.detections.id", unwind=True))
    nfo.segment(ds, "pets", label_field="ntt", overwrite=True, batch_size=4)
    assert not before & set(ds.values("ntt.detections.id", unwind=True))
    _assert_each_label_has_its_own_vector(ds, "ntt")  # the replaced labels' vectors are gone


def test_nothing_is_kept_when_not_asked_and_a_clone_owns_its_vectors(banked):
    ds = banked
    nfo.segment(ds, "pets", label_field="ntt", keep_embeddings=False)
    assert ds.count("ntt.detections") and _stored(ds) == 0
    with pytest.raises(nfo.NTTFiftyOneError, match="keep_embeddings must be True or False"):
        nfo.segment(ds, "pets", label_field="other", keep_embeddings="yes")
    nfo.segment(ds, "pets", label_field="ntt", overwrite=True)
    clone = ds.clone()
    try:
        assert _stored(clone) == 0, "a clone keeps the label ids, not the vectors: they are the source's"
        nfo.segment(clone, "pets", label_field="ntt", overwrite=True)
        _assert_each_label_has_its_own_vector(ds, "ntt")  # segmenting the clone again left the source's alone
        assert delete_dataset_embeddings(clone) == clone.count("ntt.detections") and _stored(clone) == 0
    finally:
        clone.delete()


def test_apply_model_keeps_the_vectors_of_the_labels_it_returns(banked):
    ds = banked
    targets = nfo.forms.without_references(ds)
    targets.apply_model(nfo.load_model(ds, "pets"), label_field="ntt", confidence_thresh=0.0)
    _assert_each_label_has_its_own_vector(ds, "ntt")
    nfo.load_model(ds, "pets", keep_embeddings=False)  # accepted; the default keeps them


def test_shards_keep_the_vectors_of_what_they_write_and_submit_can_turn_it_off(banked):
    ds = banked
    _run_shards(ds, nfo.submit_job(ds, "pets", label_field="ntt", shards=2))
    _assert_each_label_has_its_own_vector(ds, "ntt")
    _run_shards(ds, nfo.submit_job(ds, "pets", label_field="bare", shards=1, keep_embeddings=False))
    labels = ds.values("bare.detections.id", unwind=True)
    assert labels and not load_embeddings(ds, labels)


def _run_shards(ds, queued: dict) -> None:
    """Run a submitted job's shards here, as a worker would."""
    from fiftyone.operators.delegated import DelegatedOperationService

    for shard in shards_collection().find({"run_id": ObjectId(queued["job"])}):
        DelegatedOperationService().set_running(shard["op_id"], run_link="ntt-worker://t/1/a", required_state="queued")
        drive(nfo.jobs.workers.shard_steps(ds, str(shard["_id"])))


def test_the_attempt_that_lost_a_sample_removes_its_vectors(banked):
    """First writer wins (shards): the second attempt's labels are not written, so its vectors must go."""
    ds = banked
    sample = nfo.forms.without_references(ds).first()
    import fiftyone as fo

    def batch():
        dets = fo.Detections(detections=[fo.Detection(label="dog", bounding_box=[0, 0, 0.5, 0.5]) for _ in range(2)])
        writes = EmbeddingWrites(ds, "ntt")
        writes.add(sample.id, dets, np.eye(2, 4, dtype=np.float32))
        writes.save(replacing=False)
        return dets, writes

    first, first_writes = batch()
    first_writes.settle(write_labels(ds, "ntt", {sample.id: first}, first_writer_wins=True))
    second, second_writes = batch()
    assert _stored(ds) == 4, "both attempts saved their vectors before writing"
    second_writes.settle(write_labels(ds, "ntt", {sample.id: second}, first_writer_wins=True))
    assert set(load_embeddings(ds, [d.id for d in first.detections + second.detections])) == {
        d.id for d in first.detections
    }
    np.testing.assert_allclose(load_embeddings(ds, [first.detections[1].id])[first.detections[1].id], [0, 1, 0, 0])


def test_a_stopped_run_resumed_and_a_run_from_the_candidate_cache_keep_every_labels_vector(banked):
    """Closed at a step, a run keeps whole batches (labels and vectors); resumed, the rest gets both. From the
    candidate cache (int8 embeddings), the vectors are still the ones matched with."""
    ds = banked
    steps = nfo.steps.segment_steps(ds, "pets", label_field="ntt", batch_size=2, cache=True)
    next(steps), next(steps)  # models loaded, one batch written
    steps.close()
    assert 0 < ds.exists("ntt").count() < len(nfo.forms.without_references(ds))
    nfo.segment(ds, "pets", label_field="ntt", batch_size=2, skip_existing=True, cache=True)
    _assert_each_label_has_its_own_vector(ds, "ntt")
    again = nfo.segment(ds, "pets", label_field="ntt", overwrite=True, cache=True)
    assert again["reused"] == again["samples"], "every image from the candidate cache"
    _assert_each_label_has_its_own_vector(ds, "ntt")
