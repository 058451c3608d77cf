"""Which images to label next, on hand-built vectors with known answers (``ntt.grading.suggest``), and the cached
image vectors they come from (``ntt.predict.image_embeddings``)."""

from __future__ import annotations

import numpy as np
import pytest

from ntt.grading.suggest import k_center, percentile_ranks, shot_distances, unsureness


def _unit(rows) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _groups() -> np.ndarray:
    """Three tight groups around the x, y and z axes: rows 0-2 near x, 3-5 near y, 6-8 near z. Row 1 is the exact
    axis x; row 4 the exact axis y."""
    x = [[1, 0.05, 0], [1, 0, 0], [1, 0, 0.05]]
    y = [[0.05, 1, 0], [0, 1, 0], [0, 1, 0.05]]
    z = [[0.05, 0, 1], [0, 0.05, 1], [0.05, 0.05, 1]]
    return _unit(x + y + z)


GROUP = [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_k_center_picks_one_of_each_tight_group_the_most_typical_first():
    vectors = _groups()
    picks = k_center(vectors, 3)
    assert sorted(GROUP[i] for i in picks) == [0, 1, 2]
    assert picks[0] == int(np.argmax(vectors @ vectors.mean(axis=0)))  # nearest the mean direction
    assert k_center(vectors, 3) == picks  # deterministic


def test_k_center_goes_on_inside_the_groups_once_each_has_a_centre():
    picks = k_center(_groups(), 5)
    assert sorted(GROUP[i] for i in picks[:3]) == [0, 1, 2]
    assert len(set(picks)) == 5


def test_k_center_starts_from_the_given_centres_and_never_picks_them():
    vectors = _groups()
    picks = k_center(vectors, 2, start=[1, 4])  # x and y are labelled: the first new pick is in z
    assert GROUP[picks[0]] == 2
    assert not {1, 4} & set(picks)
    assert GROUP[picks[1]] in (0, 1, 2) and picks[1] not in (1, 4)
    assert k_center(vectors, 1, start=[1, 4, 7]) != []  # every group covered: a pick is still made
    assert sorted(k_center(vectors, 20, start=[0, 8])) == [1, 2, 3, 4, 5, 6, 7]  # n > what is left: all of it


def test_k_center_breaks_ties_by_the_lowest_index():
    # four orthogonal directions: all equally far from each other; the mean is equally near each of them
    vectors = np.eye(4)
    assert k_center(vectors, 4) == [0, 1, 2, 3]
    assert k_center(vectors, 2, start=[1]) == [0, 2]
    duplicates = _unit([[1, 0], [1, 0], [0, 1], [0, 1]])
    assert k_center(duplicates, 2) == [0, 2]  # a duplicate of a centre is at distance 0: never before the other


def test_k_center_edge_cases():
    vectors = _groups()
    assert k_center(vectors, 0) == []
    assert sorted(k_center(vectors, 50)) == list(range(9))
    assert k_center(np.zeros((0, 3)), 3) == []
    with pytest.raises(ValueError, match="n must be >= 0"):
        k_center(vectors, -1)


def test_percentile_ranks_average_ties_and_leave_nan_out():
    np.testing.assert_allclose(percentile_ranks([3.0, 1.0, 2.0]), [1.0, 1 / 3, 2 / 3])
    np.testing.assert_allclose(percentile_ranks([1.0, 1.0, 5.0, 0.0]), [2.5 / 4, 2.5 / 4, 1.0, 0.25])
    ranks = percentile_ranks([np.nan, 2.0, 1.0])
    assert np.isnan(ranks[0])
    np.testing.assert_allclose(ranks[1:], [1.0, 0.5])


def test_shot_distances_are_one_minus_the_nearest_shots_cosine_raw_shots_normalised():
    vectors = _unit([[1, 0], [0, 1], [1, 1]])
    shots = np.array([[10.0, 0.0], [0.0, 0.0001]])  # raw, as a bank holds them: lengths do not matter
    np.testing.assert_allclose(shot_distances(vectors, shots), [0.0, 0.0, 1 - np.sqrt(0.5)], atol=1e-9)
    np.testing.assert_allclose(shot_distances(vectors, np.zeros((0, 2))), [1.0, 1.0, 1.0])


def test_unsureness_known_answer():
    """Three targets, shots along x: target 0 is on x (near), 1 at 45 degrees, 2 on y (far). Margins: target 0 is
    the most ambiguous (0.05), 1 clear (0.9), 2 has no predictions."""
    vectors = _unit([[1, 0], [1, 1], [0, 1]])
    shots = np.array([[2.0, 0.0]])
    far_only = unsureness(vectors, shots)
    np.testing.assert_allclose(far_only, [1 / 3, 2 / 3, 1.0])  # the farther, the more unsure
    both = unsureness(vectors, shots, margins=np.array([0.05, 0.9, np.nan]))
    # margin ranks among the two with margins: 0.05 -> 1.0 (most ambiguous), 0.9 -> 0.5; target 2: distance alone
    np.testing.assert_allclose(both, [(1 / 3 + 1.0) / 2, (2 / 3 + 0.5) / 2, 1.0])
    assert list(np.argsort(-both, kind="stable")) == [2, 0, 1]


def test_image_embeddings_are_unit_mean_tokens_cached_and_skip_unreadable_files(tmp_path, smoke_config, monkeypatch):
    """One vector per readable image, equal to the mean patch token normalised; a second call reads them from the
    store (the encoder does not run); a missing, an empty and a non-image file are skipped with why."""
    import torch
    from PIL import Image

    import ntt.models
    from ntt.cache.store import CandidateStore
    from ntt.predict import image_embeddings as module

    rng = np.random.default_rng(0)
    paths = []
    for k in range(3):
        paths.append(tmp_path / f"img{k}.png")
        Image.fromarray(rng.integers(0, 255, (40 + 10 * k, 60, 3), dtype=np.uint8)).save(paths[-1])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    paths[1:1] = [tmp_path / "missing.png", tmp_path / "empty.png", tmp_path / "text.png"]  # positions 1, 2, 3
    store = CandidateStore(tmp_path / "store")

    found = module.image_embeddings(paths, smoke_config, store=store, batch_size=2)
    assert found.indices == [0, 4, 5] and found.encoded == 3
    assert [i for i, _ in found.skipped] == [1, 2, 3]
    reasons = [reason for _, reason in found.skipped]
    assert "missing.png" in reasons[0] and "empty file" in reasons[1] and "not a readable image" in reasons[2]
    assert found.vectors.dtype == np.float32 and found.vectors.shape == (
        3,
        ntt.models.get_dinov2(smoke_config.model).dim,
    )
    np.testing.assert_allclose(np.linalg.norm(found.vectors, axis=1), 1.0, atol=1e-5)

    encoder = ntt.models.get_dinov2(smoke_config.model)
    image = torch.from_numpy(np.array(Image.open(paths[5]).convert("RGB"))).permute(2, 0, 1)[None].float() / 255
    tokens = encoder(encoder.resize(image)).reshape(-1, encoder.dim)
    expected = torch.nn.functional.normalize(tokens.mean(0), dim=0).numpy()
    np.testing.assert_allclose(found.vectors[2], expected, atol=1e-5)
    assert store.info()["entries"] == 3

    def no_encoding(*args, **kwargs):
        raise AssertionError("the encoder ran: the vectors should come from the store")

    monkeypatch.setattr(module, "embed_images", no_encoding)
    again = module.image_embeddings(paths, smoke_config, store=store)
    assert again.encoded == 0 and again.indices == found.indices and again.skipped == found.skipped
    np.testing.assert_array_equal(again.vectors, found.vectors)
