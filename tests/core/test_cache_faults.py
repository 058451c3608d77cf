"""The candidate cache under faults: processes sharing one store race harmlessly, a corrupt entry (any byte of its
header or arrays) is a miss that is removed with one warning and rebuilt, never a crash or a silent change."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest

import ntt
from ntt.bank import sampling
from ntt.cache.store import CandidateStore, entry_key
from ntt.config import get_config
from ntt.io import atomic, coco
from ntt.io.images import load_image
from ntt.predict.segmenter import Segmenter

CACHE_LOGGERS = ("ntt.cache.store", "ntt.cache.stages")


def _arrays(seed: int = 0, n: int = 50) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "embeddings": rng.standard_normal((n, 384)).astype(np.float16),
        "masks": np.packbits(rng.random((n, 64, 64)) > 0.5, axis=-1),
        "iou": rng.random(n).astype(np.float32),
        "boxes": rng.integers(0, 256, (n, 4)).astype(np.int64),
    }


def _key(i: int = 0) -> str:
    return entry_key(image=f"{i:064x}")


def _cache_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name in CACHE_LOGGERS and r.levelno >= logging.WARNING]


def _assert_same(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name].dtype == value.dtype and np.array_equal(got[name], value), name


@pytest.fixture
def store(tmp_path):
    return CandidateStore(tmp_path / "candidates", limit_mb=100)


# --- processes sharing one store ----------------------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import json, logging, random, sys, time
    import numpy as np
    from ntt.cache.store import CandidateStore, entry_key

    root, seed, seconds, limit_mb, keys = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), 6
    warnings = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("ntt").addHandler(handler)

    def arrays(i):  # the same arrays for a key in every process
        rng = np.random.default_rng(i)
        return {"a": rng.standard_normal(500).astype(np.float32), "b": rng.integers(0, 255, 64).astype(np.uint8)}

    expected = [arrays(i) for i in range(keys)]
    store, rng = CandidateStore(root, limit_mb=limit_mb), random.Random(seed)
    counts = {"hits": 0, "misses": 0}

    def found(i):
        got = store.get(entry_key(image=i))
        if got is None:
            counts["misses"] += 1
            return False
        assert set(got) == set(expected[i]), sorted(got)
        assert all(np.array_equal(got[k], v) and got[k].dtype == v.dtype for k, v in expected[i].items()), i
        counts["hits"] += 1
        return True

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        i = rng.randrange(keys)
        if not found(i):
            store.put(entry_key(image=i), expected[i])  # evicts: the other process's reads race with it
        for j in range(keys):  # cheap reads and listings between two (fsynced, slow) writes
            found(j)
        store.info()
        chance = rng.random()
        if chance < 0.2:
            store.evict()
        elif chance < 0.22:
            store.clear()
    print(json.dumps({**counts, "warnings": warnings}))
    """
)


def test_processes_sharing_a_tiny_store_race_harmlessly(tmp_path):
    """Two processes put and get the same keys in a store that holds about three entries: evictions race with
    reads, writes and listings. Neither raises, every hit is exactly what was put, and nothing warns (a vanished
    entry is a plain miss, never a corrupt one)."""
    probe = {"a": np.zeros(500, np.float32), "b": np.zeros(64, np.uint8)}
    limit_mb = 3.5 * len(CandidateStore(tmp_path / "probe").put(_key(), probe).read_bytes()) / 1e6
    # the ntt under test, not one the working folder would shadow it with
    env = {**os.environ, "PYTHONPATH": str(Path(ntt.__file__).resolve().parent.parent)}
    root = tmp_path / "shared"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(root), str(seed), "4", str(limit_mb)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    outcomes = [worker.communicate(timeout=60) for worker in workers]
    for worker, (out, err) in zip(workers, outcomes):
        assert worker.returncode == 0, err[-3000:]
        counts = json.loads(out)
        assert counts["hits"] > 0 and counts["misses"] > 0 and counts["warnings"] == [], counts
    assert CandidateStore(root, limit_mb=limit_mb).info()["entries"] <= 4


def test_an_entry_removed_between_its_read_and_its_use_time_is_still_a_hit(store, monkeypatch, caplog):
    """Another process evicts the entry right after this one read and verified it: the arrays are returned."""
    store.put(_key(), _arrays())
    real_utime = os.utime

    def evicted_first(path, *args, **kwargs):
        Path(path).unlink()
        return real_utime(path, *args, **kwargs)

    monkeypatch.setattr(os, "utime", evicted_first)
    with caplog.at_level(logging.WARNING):
        got = store.get(_key())
    _assert_same(got, _arrays())
    assert _cache_warnings(caplog) == [] and store.get(_key()) is None


def test_an_entry_that_vanishes_before_its_read_is_a_plain_miss(store, monkeypatch, caplog):
    store.put(_key(), _arrays())
    real_read = Path.read_bytes

    def evicted_first(path):
        path.unlink()
        return real_read(path)

    monkeypatch.setattr(Path, "read_bytes", evicted_first)
    with caplog.at_level(logging.WARNING):
        assert store.get(_key()) is None
    assert _cache_warnings(caplog) == []


def test_listing_evicting_and_clearing_survive_entries_that_vanish(tmp_path, monkeypatch):
    """``entries()`` may list a file another process removes before it is measured or removed here."""
    store = CandidateStore(tmp_path / "candidates", limit_mb=100)
    for i in range(3):
        store.put(_key(i), _arrays(seed=i, n=2))
    store.limit_bytes = 0  # now every entry is over the limit
    real = store.entries()
    ghosts = [store.path(_key(10 + i)) for i in range(3)]  # listed, then removed by "another process"
    monkeypatch.setattr(store, "entries", lambda: ghosts[:1] + real + ghosts[1:])
    info = store.info()
    assert info["entries"] == 3 and info["bytes"] == sum(p.stat().st_size for p in real)
    assert store.evict() == 3 and not any(p.exists() for p in real)
    for i in range(3):
        store.path(_key(i)).parent.mkdir(parents=True, exist_ok=True)
        store.path(_key(i)).write_bytes(b"x" * 10)
    assert store.clear() == {"entries": 3, "bytes": 30}


def test_a_shard_folder_that_vanishes_while_writing_is_recreated(store, monkeypatch):
    """A clearing process removes the entry's folder between the writer's ``mkdir`` and its temp file."""
    real_remove_stale_temps = atomic.remove_stale_temps
    calls = []

    def folder_removed_first(path):
        if not calls:
            shutil.rmtree(path.parent)
        calls.append(path)
        return real_remove_stale_temps(path)

    monkeypatch.setattr(atomic, "remove_stale_temps", folder_removed_first)
    path = store.put(_key(), _arrays())
    assert path.is_file() and len(calls) == 2
    _assert_same(store.get(_key()), _arrays())


# --- corrupt entries ----------------------------------------------------------------------------------------


def _layout(data: bytes) -> tuple[int, dict]:
    """A safetensors file's data start (8-byte little-endian header size, then the JSON header) and header."""
    size = int.from_bytes(data[:8], "little")
    return 8 + size, json.loads(data[8 : 8 + size])


def _array_range(path: Path, name: str) -> tuple[int, int]:
    """Where an array's bytes lie in its entry file: [start, end)."""
    start, header = _layout(path.read_bytes())
    begin, end = header[name]["data_offsets"]
    return start + begin, start + end


def _flip_bit(path: Path, position: int) -> None:
    """Flip the lowest bit of one byte of a file (in a header, usually another valid character)."""
    data = bytearray(path.read_bytes())
    data[position] ^= 0x01
    path.write_bytes(bytes(data))


def _invert(path: Path, start: int, end: int) -> None:
    """Invert every byte in [start, end) of a file."""
    data = bytearray(path.read_bytes())
    data[start:end] = bytes(b ^ 0xFF for b in data[start:end])
    path.write_bytes(bytes(data))


def _header_positions(path: Path) -> dict[str, int]:
    """One byte of each part of the header: its size, the JSON's first brace, a dtype, and in the metadata the
    format's version, the key and the checksum."""
    data = path.read_bytes()
    json_text = data[8 : _layout(data)[0]]
    return {
        "size": 0,
        "brace": 8,
        "dtype": 8 + json_text.index(b'"dtype"') + len(b'"dtype":"'),
        "format": 8 + json_text.index(b'"ntt-candidates-') + len(b'"ntt-candidates-'),
        "key": 8 + json_text.index(b'"key":"') + len(b'"key":"') + 20,
        "checksum": 8 + json_text.index(b'"sha256":"') + len(b'"sha256":"') + 10,
    }


def _assert_a_removed_miss(store, key, path, caplog) -> str:
    """The entry at ``path`` is a miss, removed with one warning (returned) that names it; then a plain miss."""
    with caplog.at_level(logging.WARNING):
        assert store.get(key) is None
    warned = _cache_warnings(caplog)
    assert len(warned) == 1 and str(path) in warned[0] and "ignoring and removing" in warned[0], warned
    assert not path.exists()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert store.get(key) is None  # the file is gone: a plain miss, no second warning
    assert _cache_warnings(caplog) == []
    return warned[0]


@pytest.mark.parametrize("part", ["size", "brace", "dtype", "format", "key", "checksum"])
def test_a_corrupt_header_is_a_removed_miss_with_one_warning(store, caplog, part):
    path = store.put(_key(), _arrays())
    _flip_bit(path, _header_positions(path)[part])
    _assert_a_removed_miss(store, _key(), path, caplog)
    store.put(_key(), _arrays())
    _assert_same(store.get(_key()), _arrays())


@pytest.mark.parametrize("name", sorted(_arrays()))
def test_one_flipped_bit_in_any_array_is_a_removed_miss_with_one_warning(store, caplog, name):
    path = store.put(_key(), _arrays())
    start, end = _array_range(path, name)
    _flip_bit(path, (start + end) // 2)
    _assert_a_removed_miss(store, _key(), path, caplog)


def test_an_entry_of_the_older_format_is_a_removed_miss(store, caplog):
    from safetensors.numpy import save

    path = store.path(_key())
    path.parent.mkdir(parents=True)
    path.write_bytes(save(_arrays(), metadata={"format": "ntt-candidates-1", "key": _key()}))  # no checksum
    assert "older" in _assert_a_removed_miss(store, _key(), path, caplog)


def test_an_unreadable_entry_file_is_a_removed_miss(store, caplog):
    path = store.put(_key(), _arrays())
    path.unlink()
    path.mkdir()  # not a file: reading it fails with something other than "not found"
    with caplog.at_level(logging.WARNING):
        assert store.get(_key()) is None
    assert len(_cache_warnings(caplog)) == 1


# --- end to end: a segmenter over a cache with a corrupt entry ----------------------------------------------

GRID = {"pred_iou_thresh": 0.0, "nms_thresh": 1.0}
GUIDED = {**GRID, "prompt_mode": "guided", "guided_points": 8, "guided_grid": 2}


def _config(segment: dict):
    return get_config("smoke", {"model": {"random_weights": True, "device": "cpu"}, "segment": segment})


@pytest.fixture(scope="module")
def small_bank(coco128):
    from ntt.bank.encoder import build_bank

    data = coco.load_json(coco128 / "annotations" / "instances_train2017.json")
    cats = coco.select_categories(data, ["person", "dog"])
    anns = sampling.sample_shots(data, cats, shots=1, seed=33, explicit=True)
    refs = coco.references_from_coco(data, coco128 / "images" / "train2017", anns, box_only=False)
    return build_bank(refs, _config(GRID))


@pytest.fixture(scope="module")
def two_images(coco128):
    return sorted((coco128 / "images" / "val2017").glob("*.jpg"))[:2]


def _segment(bank, segment: dict, paths, store):
    segmenter = Segmenter(bank, _config(segment), cache=store)
    return [r.instances for r in segmenter.run(paths)], segmenter.cache


def _filled(bank, segment, paths, folder):
    """A cache filled by a run: its folder, the run's detections and the first image's entry key."""
    instances, cache = _segment(bank, segment, paths, CandidateStore(folder))
    return folder, instances, cache.key(paths[0], load_image(paths[0]))


@pytest.fixture(scope="module")
def grid_cache(small_bank, two_images, tmp_path_factory):
    return _filled(small_bank, GRID, two_images, tmp_path_factory.mktemp("grid-cache"))


@pytest.fixture(scope="module")
def guided_cache(small_bank, two_images, tmp_path_factory):
    return _filled(small_bank, GUIDED, two_images, tmp_path_factory.mktemp("guided-cache"))


def _invert_array(name: str):
    def corrupt(store: CandidateStore, key: str) -> None:
        _invert(store.path(key), *_array_range(store.path(key), name))

    return corrupt


def _unpackable_blob(store: CandidateStore, key: str) -> None:
    """A well-formed entry (valid checksum) whose mask crops the codec cannot unpack: too few logit values."""
    arrays = store.get(key)
    short = zlib.decompress(arrays["blob"].tobytes())[:-7]
    store.put(key, {**arrays, "blob": np.frombuffer(zlib.compress(short), np.uint8)})


def _assert_same_detections(expected, got) -> None:
    assert len(expected) == len(got)
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.class_ids, b.class_ids)
        np.testing.assert_array_equal(a.masks, b.masks)


@pytest.mark.parametrize(
    ("filled", "corrupt"),
    [
        ("grid_cache", _invert_array("embeddings")),
        ("grid_cache", _invert_array("blob")),
        ("grid_cache", _unpackable_blob),
        ("guided_cache", _invert_array("tokens")),
    ],
    ids=["grid-embeddings", "grid-blob", "grid-unpackable-blob", "guided-tokens"],
)
def test_a_corrupt_entry_is_recomputed_not_used(request, small_bank, two_images, tmp_path, caplog, filled, corrupt):
    """The corrupt entry is rebuilt, with one warning: the detections are those of the run that filled the
    cache, the other image is still a hit, and the entry is back."""
    folder, clean, key = request.getfixturevalue(filled)
    store = CandidateStore(shutil.copytree(folder, tmp_path / "cache"))
    corrupt(store, key)
    segment = GRID if filled == "grid_cache" else GUIDED
    with caplog.at_level(logging.WARNING):
        again, cache = _segment(small_bank, segment, two_images, store)
    warned = _cache_warnings(caplog)
    assert len(warned) == 1 and str(store.path(key)) in warned[0], warned
    assert (cache.hits, cache.misses) == (1, 1)
    _assert_same_detections(clean, again)
    assert store.path(key).is_file() and store.get(key) is not None
