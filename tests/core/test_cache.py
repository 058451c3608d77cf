"""The candidate cache's store: entries round-trip, keys change with everything they depend on, unusable entries
are misses that get rebuilt, eviction keeps the limit, a killed writer leaves nothing that is used."""

from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pytest

from ntt.cache.store import CandidateStore, entry_key, image_digest

PARTS = dict(
    image="ab" * 32,
    sam2=("sam2_hiera_l", "fp-sam"),
    dinov2=("dinov2_vitl14", "fp-dino"),
    sizes=(1024, 518),
    prompts={"mode": "grid", "points_per_side": 32},
)


def _arrays(seed: int = 0, n: int = 50) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "embeddings": rng.standard_normal((n, 384)).astype(np.float16),
        "masks": np.packbits(rng.random((n, 64, 64)) > 0.5, axis=-1),
        "iou": rng.random(n).astype(np.float32),
        "boxes": rng.integers(0, 256, (n, 4)).astype(np.int64),
    }


@pytest.fixture
def store(tmp_path):
    return CandidateStore(tmp_path / "candidates", limit_mb=100)


def test_an_entry_round_trips_exactly(store):
    key = entry_key(**PARTS)
    assert store.get(key) is None
    arrays = _arrays()
    store.put(key, arrays)
    got = store.get(key)
    assert set(got) == set(arrays)
    for name, value in arrays.items():
        assert got[name].dtype == value.dtype and np.array_equal(got[name], value), name
    assert store.info()["entries"] == 1 and store.info()["bytes"] > 0


@pytest.mark.parametrize(
    "change",
    [
        {"image": "cd" * 32},
        {"sam2": ("sam2_hiera_l", "another fingerprint")},
        {"dinov2": ("dinov2_vitl14", "another fingerprint")},
        {"sizes": (768, 518)},
        {"prompts": {"mode": "grid", "points_per_side": 16}},
    ],
)
def test_any_change_of_what_the_work_depends_on_is_a_miss(store, change):
    store.put(entry_key(**PARTS), _arrays())
    assert store.get(entry_key(**{**PARTS, **change})) is None


def test_the_key_is_canonical():
    assert entry_key(**PARTS) == entry_key(**dict(reversed(list(PARTS.items()))))


def test_the_image_key_is_its_content_not_its_path(tmp_path):
    a, b, c = tmp_path / "a.jpg", tmp_path / "renamed.jpg", tmp_path / "c.jpg"
    a.write_bytes(b"same bytes")
    shutil.copy(a, b)
    c.write_bytes(b"other bytes")
    assert image_digest(a) == image_digest(b) != image_digest(c)


def test_a_truncated_entry_is_ignored_removed_and_rebuilt(store, caplog):
    key = entry_key(**PARTS)
    path = store.put(key, _arrays())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="ntt.cache.store"):
        assert store.get(key) is None
    assert "ignoring and removing" in caplog.text and not path.exists()
    store.put(key, _arrays())
    assert np.array_equal(store.get(key)["iou"], _arrays()["iou"])


def test_a_foreign_entry_under_this_key_is_a_miss(store, caplog):
    mine, theirs = entry_key(**PARTS), entry_key(**{**PARTS, "image": "ef" * 32})
    other = store.put(theirs, _arrays(seed=1))
    store.path(mine).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(other, store.path(mine))  # a file whose content is another image's entry
    with caplog.at_level(logging.WARNING, logger="ntt.cache.store"):
        assert store.get(mine) is None
    assert "another key" in caplog.text
    assert store.get(theirs) is not None


def test_eviction_keeps_the_limit_and_the_recently_used(tmp_path):
    one = len(CandidateStore(tmp_path / "probe").put("00" * 32, _arrays()).read_bytes())
    store = CandidateStore(tmp_path / "candidates", limit_mb=3.5 * one / 1e6)
    keys = [entry_key(**{**PARTS, "image": f"{i:064x}"}) for i in range(6)]
    for i, key in enumerate(keys):
        store.put(key, _arrays(seed=i))
        os.utime(store.path(key), (1000 + i, 1000 + i))  # distinct use times, oldest first
        if i == 2:
            assert store.get(keys[0]) is not None  # used again: now the most recent of the first three
    info = store.info()
    assert info["bytes"] <= info["limit_bytes"] and info["entries"] == 3
    # k0 was used again after k1 and k2 were written: they went first, k0 stays with the newest two
    assert [store.get(k) is not None for k in keys] == [True, False, False, False, True, True]


def test_a_killed_writer_leaves_no_entry_that_is_used(store):
    key = entry_key(**PARTS)
    path = store.path(key)
    path.parent.mkdir(parents=True)
    stale = path.with_name(f".{path.name}.999999999.deadbeef.tmp")  # what a killed writer leaves: a temp file
    stale.write_bytes(b"half an entry")
    assert store.get(key) is None and store.info()["entries"] == 0
    store.put(key, _arrays())
    assert store.get(key) is not None and not stale.exists()  # the next write of that entry removes the leftover


def test_clear_frees_every_entry(store):
    for i in range(3):
        store.put(entry_key(**{**PARTS, "image": f"{i:064x}"}), _arrays(seed=i))
    freed = store.clear()
    assert freed["entries"] == 3 and freed["bytes"] > 0 and store.info()["entries"] == 0


def test_cli_shows_and_frees_the_cache(tmp_path, monkeypatch, capsys):
    import json

    from ntt.cli import main

    monkeypatch.setenv("NTT_CACHE_DIR", str(tmp_path))
    CandidateStore().put(entry_key(**PARTS), _arrays())
    assert main(["cache", "info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["root"] == str(tmp_path / "candidates") and info["entries"] == 1 and info["bytes"] > 0
    assert main(["cache", "clear"]) == 0
    assert json.loads(capsys.readouterr().out)["freed"]["entries"] == 1
    assert CandidateStore().info()["entries"] == 0
