"""A bank stored with a dataset changes by compare-and-swap: each change stores only if the bank is still the version
it read (one conditional update in MongoDB, so it holds across processes and machines). Changes that commute
(adding shots) land on whichever version is current, without encoding anything again; calibrating a bank that
changed while it was graded is refused. Every replaced version's file is released once, by whoever replaced it;
a store that lost removes its own file; a file an unfinished sharded run uses is kept."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ntt.fo as nfo
from ntt.fo import banks, store
from ntt.fo.review import grades

BANK = "pets"

_CHILD = """
import json, sys, time
from pathlib import Path
import fiftyone as fo
import ntt.fo as nfo
from ntt.fo import banks

dataset_name, labels, barrier, me = sys.argv[1], sys.argv[2].split(","), Path(sys.argv[3]), sys.argv[4]
dataset = fo.load_dataset(dataset_name)
real, swaps = banks._swap, []

def swap(*args, **kwargs):  # both processes have read the bank and encoded their negatives: store at once
    (barrier / me).touch()
    while not (barrier / "go").exists():
        time.sleep(0.02)
    swaps.append(real(*args, **kwargs))
    return swaps[-1]

banks._swap = swap
bank = nfo.add_negatives(dataset, "pets", "gt", label_ids=labels, device="cpu")
print(json.dumps({"swaps": swaps, "negatives": sum(bool(s.get("negative")) for s in bank.shots)}))
"""


@pytest.fixture
def pets(dataset, random_config):
    """Bank "pets" from three instances of the first sample: a person, a chair and a book (small, to be quick)."""
    first = dataset.first().gt.detections
    chosen = [next(d.id for d in first if d.label == label) for label in ("person", "chair", "book")]
    nfo.mark_references(dataset, "gt", label_ids=chosen)
    nfo.build_bank(dataset, BANK, label_field="gt", config=random_config)
    return dataset


def _files(ds) -> list[Path]:
    return sorted(nfo.forms.bank_dir(ds).glob("*.safetensors"))


def _path(ds) -> Path:
    return Path(nfo.get_bank_info(ds, BANK)["bank_path"])


def _candidates(ds, count: int) -> list[tuple[str, str, str]]:
    """(sample id, label id, label) of ``count`` ``gt`` labels of the bank's classes on samples after the first
    (the reference sample), in sample and label order."""
    classes = set(nfo.load_bank(ds, BANK).class_names)
    found = [(s.id, d.id, d.label) for s in ds.skip(1) for d in s.gt.detections if d.label in classes]
    assert len(found) >= count, "the test data has too few labels of the bank's classes"
    return found[:count]


def _negative_ids(bank) -> list[str]:
    return sorted(str(s["annotation_id"]) for s in bank.shots if s.get("negative"))


def _unattached_shots() -> list:
    """GridFS files (run results) written during this test that no run document points at."""
    db = banks._db()
    used = {d["results"] for d in db.runs.find({"results": {"$ne": None}}, {"results": 1})}
    return [f["_id"] for f in db["fs.files"].find({}, {"_id": 1}) if f["_id"] not in used | _EARLIER_SHOTS]


_EARLIER_SHOTS: set = set()


@pytest.fixture(autouse=True)
def _earlier_shots():
    """GridFS files there before this test (a dataset deleted through a stale handle leaves its results)."""
    _EARLIER_SHOTS.clear()
    _EARLIER_SHOTS.update(f["_id"] for f in banks._db()["fs.files"].find({}, {"_id": 1}))


def _track_new_files(monkeypatch) -> list[Path]:
    """Every bank file path handed out from now on, in order."""
    made, real = [], store.new_bank_path

    def new_bank_path(coll):
        made.append(real(coll))
        return made[-1]

    monkeypatch.setattr(store, "new_bank_path", new_bank_path)
    return made


def _before_first_store(monkeypatch, other_change) -> list[bool]:
    """Run ``other_change`` just before the first store of a bank version (after its reading and encoding);
    returns the results of the stores (True: landed) in order."""
    real, results = banks._swap, []

    def swap(*args, **kwargs):
        if not getattr(swap, "busy", False):
            swap.busy = True  # once, and the other change's own stores pass straight through
            other_change()
        results.append(real(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(banks, "_swap", swap)
    return results


def _child_env() -> dict[str, str]:
    from fiftyone.core.odm.database import get_db_client

    host, port = get_db_client().address
    env = {k: v for k, v in os.environ.items() if k not in ("FIFTYONE_PRIVATE_DATABASE_PORT", "FIFTYONE_DATABASE_DIR")}
    env["FIFTYONE_DATABASE_URI"] = f"mongodb://{host}:{port}/"  # the test's database
    return env


def test_two_processes_adding_negatives_at_once_both_land(pets, tmp_path):
    ds = pets
    before = _path(ds)
    labels = [label for _, label, _ in _candidates(ds, 4)]
    mine, theirs = labels[:2], labels[2:]
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, ds.name, ",".join(chosen), str(barrier), f"ready{i}"],
            env=_child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, chosen in enumerate((mine, theirs))
    ]
    try:
        deadline = time.monotonic() + 300
        while not all((barrier / f"ready{i}").exists() for i in range(2)):
            failed = [c for c in children if c.poll() is not None]
            assert not failed and time.monotonic() < deadline, [c.communicate() for c in failed]
            time.sleep(0.05)
        (barrier / "go").touch()  # both read the same version and encoded: they store at the same moment
        outputs = [c.communicate(timeout=300) for c in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    assert all(c.returncode == 0 for c in children), [err[-3000:] for _, err in outputs]
    results = sorted(json.loads(out.strip().splitlines()[-1])["swaps"] for out, _ in outputs)
    assert results == [[False, True], [True]], "one store lost the race and was applied to the winner's version"

    # this process's dataset object was loaded before either change: it still reads the current version
    stored = nfo.load_bank(ds, BANK)
    assert _negative_ids(stored) == sorted(labels), "both sets of negatives land, each once"
    assert _files(ds) == [_path(ds)] and not before.exists(), "one version file left, none orphaned"
    assert _unattached_shots() == []
    ds.reload()  # FiftyOne deletes a dataset's runs as its object holds them


def test_negatives_stored_after_other_references_keep_both(pets, monkeypatch):
    ds = pets
    first = _path(ds)
    new_refs = ds.skip(3).limit(1)  # new classes only
    nfo.mark_references(new_refs)
    negatives = [label for _, label, _ in _candidates(ds, 2)]
    made = _track_new_files(monkeypatch)
    stores = _before_first_store(monkeypatch, lambda: nfo.add_references(ds, BANK))

    bank = nfo.add_negatives(ds, BANK, "gt", label_ids=negatives)
    assert stores == [True, False, True], "references first; the negatives lost, then landed on their version"
    stored = nfo.load_bank(ds, BANK)
    assert stored.shots == bank.shots and _negative_ids(stored) == sorted(negatives)
    added = {s["annotation_id"] for s in stored.shots if s["image_id"] == new_refs.first().id}
    assert added == set(new_refs.values("gt.detections.id", unwind=True)), "the other change's references stay"
    assert len(made) == 3 and [p.exists() for p in made] == [False, False, True], "the loser removed its file"
    assert _files(ds) == [made[-1]] == [_path(ds)] and not first.exists()
    assert _unattached_shots() == []


def test_shots_the_new_version_holds_already_are_not_added_twice(pets, monkeypatch):
    ds = pets
    x, y, z = (label for _, label, _ in _candidates(ds, 3))
    encoded, real = [], banks.memory_bank_steps

    def encode(refs, *args, **kwargs):
        encoded.extend(refs)
        return (yield from real(refs, *args, **kwargs))

    monkeypatch.setattr("ntt.bank.teach.build_bank_steps", encode)
    _before_first_store(monkeypatch, lambda: nfo.add_negatives(ds, BANK, "gt", label_ids=[y, z]))
    bank = nfo.add_negatives(ds, BANK, "gt", label_ids=[x, y])
    assert _negative_ids(bank) == sorted([x, y, z]) and _negative_ids(nfo.load_bank(ds, BANK)) == sorted([x, y, z])
    assert sorted(r.annotation_id for r in encoded) == sorted([x, y, y, z]), "each change encoded its own once"


def test_promotions_made_at_once_match_new_classes_by_name(pets, monkeypatch):
    ds = pets
    ds.clone_sample_field("gt", "pred")
    (s1, a, _), (s1b, b, _), *rest = _candidates(ds, 20)
    assert s1 == s1b, "the test wants two labels of one sample"
    s2, c = next((sample, label) for sample, label, _ in rest if sample != s1)
    for sample in ds.select([s1, s2]):
        for det in sample.pred.detections:
            if det.id in (a, b, c):
                det["predicted_label"] = det.label
                det.label = {a: "toy", b: "robot", c: "robot"}[det.id]
        sample.save()
    before = nfo.load_bank(ds, BANK)
    other = ds.select_labels(ids=[c], fields="pred")
    mine = ds.select_labels(ids=[a, b], fields="pred")
    stores = _before_first_store(monkeypatch, lambda: nfo.promote_predictions(other, BANK, "pred"))
    bank = nfo.promote_predictions(
        mine, BANK, "pred"
    )  # "toy" and "robot" get the next two ids; "robot" took the first meanwhile

    assert stores == [True, False, True]
    assert sorted(bank.class_names) == sorted({*before.class_names, "toy", "robot"})
    assert len(set(bank.class_ids)) == len(bank.class_ids)
    assert bank.shots_per_class()["robot"] == 2 and bank.shots_per_class()["toy"] == 1, "one robot class, by name"
    names = dict(zip(bank.class_ids, bank.class_names))
    promoted = {(s["annotation_id"], names[s["class_id"]]) for s in bank.shots if not s.get("negative")}
    assert {(a, "toy"), (b, "robot"), (c, "robot")} <= promoted
    assert [names[int(i)] for i in bank.shot_class_ids] == [names[s["class_id"]] for s in bank.shots]
    assert nfo.get_bank_info(ds, BANK)["classes"] == bank.class_names


def test_calibrating_a_bank_that_changed_while_graded_is_refused(pets, monkeypatch):
    ds = pets
    labels = [label for _, label, _ in _candidates(ds, 2)]
    real, changed = grades.grade_steps, []

    def grade_then_another_change(*args, **kwargs):
        report = yield from real(*args, **kwargs)
        changed.append(nfo.add_negatives(ds, BANK, "gt", label_ids=labels))
        return report

    monkeypatch.setattr(grades, "grade_steps", grade_then_another_change)
    with pytest.raises(nfo.NTTFiftyOneError, match="bank 'pets' changed while it was being graded.*grade it again"):
        nfo.grade_references(ds, BANK, calibrate=True)
    stored = nfo.load_bank(ds, BANK)
    assert stored.shots == changed[0].shots and "calibration" not in stored.info, "the other change stays"
    assert _files(ds) == [_path(ds)] and _unattached_shots() == []


def test_a_dataset_object_loaded_before_a_change_reads_and_changes_the_new_version(pets, monkeypatch):
    import fiftyone as fo

    ds = pets
    x, y = (label for _, label, _ in _candidates(ds, 2))
    monkeypatch.setattr(fo.config, "singleton_cache", False)
    other = fo.load_dataset(ds.name)  # another handle, as another process (the App server) holds
    assert other is not ds
    changed = nfo.add_negatives(other, BANK, "gt", label_ids=[x])
    assert nfo.load_bank(ds, BANK).shots == changed.shots, "the old handle reads the new version"
    assert nfo.get_bank_info(ds, BANK)["bank_path"] == nfo.get_bank_info(other, BANK)["bank_path"]
    again = nfo.add_negatives(ds, BANK, "gt", label_ids=[y])  # a change through the old handle keeps x
    assert _negative_ids(again) == sorted([x, y]) and _negative_ids(nfo.load_bank(other, BANK)) == sorted([x, y])
    assert _files(ds) == [_path(ds)]


def test_fiftyone_readers_see_the_swapped_version(pets):
    ds = pets
    [label] = [label for _, label, _ in _candidates(ds, 1)]
    assert ds.load_run_results(BANK).shots  # cached by FiftyOne: must not outlive the version
    bank = nfo.add_negatives(ds, BANK, "gt", label_ids=[label])
    info = ds.get_run_info(BANK)
    assert info.config.bank_path == str(_path(ds)) and info.config.num_shots == len(bank.shots)
    assert ds.load_run_results(BANK).shots == bank.shots
    assert ds.load_run_results(BANK, cache=False).shots == bank.shots
    assert ds.list_runs() == [BANK] and nfo.list_banks(ds) == [BANK]
    nfo.rename_bank(ds, BANK, "renamed")
    assert nfo.load_bank(ds, "renamed").shots == bank.shots
    nfo.delete_bank(ds, "renamed")
    assert ds.list_runs() == [] and _files(ds) == [] and _unattached_shots() == []


def test_an_overwrite_racing_a_change_wins_and_releases_each_version_once(pets, monkeypatch, random_config):
    ds = pets
    first = _path(ds)
    labels = [label for _, label, _ in _candidates(ds, 1)]
    made = _track_new_files(monkeypatch)
    stores = _before_first_store(monkeypatch, lambda: nfo.add_negatives(ds, BANK, "gt", label_ids=labels))
    rebuilt = nfo.build_bank(ds, BANK, label_field="gt", config=random_config, overwrite=True)
    assert stores == [True, False, True], "the replacement lost once, then replaced the other change's version"
    assert nfo.load_bank(ds, BANK).shots == rebuilt.shots and _negative_ids(rebuilt) == []
    assert _files(ds) == [made[-1]] and not first.exists() and _unattached_shots() == []


def test_a_change_to_a_bank_deleted_meanwhile_is_refused_and_leaves_no_file(pets, monkeypatch):
    ds = pets
    labels = [label for _, label, _ in _candidates(ds, 1)]
    _before_first_store(monkeypatch, lambda: nfo.delete_bank(ds, BANK))
    with pytest.raises(nfo.NTTFiftyOneError, match="no bank named 'pets'"):
        nfo.add_negatives(ds, BANK, "gt", label_ids=labels)
    assert _files(ds) == [] and nfo.list_banks(ds) == [] and _unattached_shots() == []


def test_a_file_an_unfinished_sharded_run_uses_is_kept_until_the_run_ends(pets):
    ds = pets
    path = _path(ds)
    key = store.bank_file_key(path)
    assert key == f"{store.dataset_key(ds)}/{path.name}"
    runs = banks._db()["ntt_runs"]
    run = runs.insert_one({"state": "running", "job": {"bank_file": key}}).inserted_id
    try:
        [label] = [label for _, label, _ in _candidates(ds, 1)]
        nfo.add_negatives(ds, BANK, "gt", label_ids=[label])  # swaps the version out while the run uses it
        assert path.is_file() and banks._records(path) == 1
        runs.update_one({"_id": run}, {"$set": {"state": "completed"}})
        assert banks._records(path) == 0
        assert store.release(path, banks._records(path)) and not path.exists()
        assert _files(ds) == [_path(ds)]
    finally:
        runs.delete_one({"_id": run})


def test_bank_file_keys_locate_files_under_this_machines_bank_root(tmp_path, monkeypatch):
    root = tmp_path / "banks"
    monkeypatch.setenv("NTT_BANK_DIR", str(root))
    folder = "0123456789abcdef01234567"  # a dataset id
    file = root / folder / "f00d.safetensors"
    file.parent.mkdir(parents=True)
    file.touch()
    assert store.bank_file_key(file) == f"{folder}/f00d.safetensors"
    assert store.locate_bank_file(f"{folder}/f00d.safetensors") == file
    assert store.locate_bank_file(str(file)) == file
    assert store.locate_bank_file(f"/mnt/elsewhere/banks/{folder}/f00d.safetensors") == file, "a moved root"
    outside = tmp_path / "mine.safetensors"
    outside.touch()
    assert store.bank_file_key(outside) == str(outside) and store.locate_bank_file(str(outside)) == outside
    stray = "/nowhere/not-a-dataset/x.safetensors"
    assert store.locate_bank_file(stray) == Path(stray), "not in a dataset's folder: taken as is"


def test_a_bank_folder_mounted_at_another_root_still_loads(pets, tmp_path, monkeypatch):
    ds = pets
    bank = nfo.load_bank(ds, BANK)
    here = nfo.forms.bank_dir(ds)
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    shutil.move(here, mounted / here.name)  # the recorded path no longer exists on this "machine"
    try:
        monkeypatch.setenv("NTT_BANK_DIR", str(mounted))
        assert nfo.load_bank(ds, BANK).shots == bank.shots
    finally:
        monkeypatch.undo()
        shutil.move(mounted / here.name, here)
