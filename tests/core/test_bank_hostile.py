"""Hostile bank files and concurrent writers.

A bank file carries a sha256 over its header and tensors, but anyone can re-sign a file the same way
(``_digest``): every file here is re-signed, so only the semantic checks of ``MemoryBank`` stand between it and
use. Each must give one ``BankError`` naming the file and what is wrong (the CLI's one-line ``error:``, exit 2),
never a crash later nor a silently wrong result. The concurrency tests run real processes on one bank file.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save as st_save

from ntt.bank.file import bank_lock, file_digest, lock_path, update_bank_file
from ntt.bank.memory import BankError, MemoryBank, _digest
from ntt.cli import main

ENCODER = {"name": "dinov2_vits14", "image_size": 224, "weights": "random:seed=0", "fingerprint": "f", "dim": 3}
FEATURES = np.array([[3.0, 0.0, 0.0], [0.0, 0.0, -2.0], [3.0, 8.0, 0.0]], np.float32)
CLASS_IDS = np.array([17, 18, 17], np.int64)


def _meta() -> dict:
    return {
        "format_version": 3,
        "classes": [{"id": 17, "name": "cat"}, {"id": 18, "name": "dog"}],
        "shots": [{"image_id": i, "annotation_id": 100 + i, "class_id": int(c)} for i, c in enumerate(CLASS_IDS)],
        "encoder": dict(ENCODER),
        "info": {"source": "test"},
    }


def _signed(path: Path, edit=None, features=FEATURES, class_ids=CLASS_IDS) -> Path:
    """A bank file with ``edit(meta)`` applied and these tensors, with a checksum that matches (re-signed)."""
    meta = _meta()
    if edit is not None:
        edit(meta)
    meta["checksum"] = _digest(meta, features, class_ids)
    tensors = {"shot_features": features, "shot_class_ids": class_ids}
    path.write_bytes(st_save(tensors, metadata={"ntt_bank": json.dumps(meta)}))
    return path


def _set(key, value):
    return lambda meta: meta.update({key: value})


def _classes(first):
    """Classes whose first (cat, id 17) is ``first``."""
    return _set("classes", [first, {"id": 18, "name": "dog"}])


def _set_encoder(key, value):
    return lambda meta: meta["encoder"].update({key: value})


def _set_shot(key, value):
    return lambda meta: meta["shots"][1].update({key: value})


def test_a_resigned_genuine_bank_loads(tmp_path):
    # Guards the helper: the failures below come from the edits, not from the signing.
    bank = MemoryBank.load(_signed(tmp_path / "b.safetensors"))
    assert bank.class_names == ["cat", "dog"] and bank.shot_features.shape == (3, 3)


@pytest.mark.parametrize(
    "edit, message",
    [
        pytest.param(_set("shots", ["a", "b", "c"]), "bank shot 0 must be an object", id="shots-strings"),
        pytest.param(_set("shots", "abc"), "bank shots must be a list", id="shots-string"),
        pytest.param(_set("classes", [{"id": 17}, {"id": 18}]), "non-empty name", id="class-without-name"),
        pytest.param(_classes({"id": 17, "name": " "}), "non-empty name", id="blank-name"),
        pytest.param(_classes({"id": 17, "name": 5}), "non-empty name", id="number-name"),
        pytest.param(_classes({"id": "17", "name": "cat"}), "integer id", id="string-id"),
        pytest.param(_classes({"id": 17.5, "name": "cat"}), "integer id", id="float-id"),
        pytest.param(_classes({"id": True, "name": "cat"}), "integer id", id="bool-id"),
        pytest.param(_classes({"id": 2**70, "name": "cat"}), "integer id", id="huge-id"),
        pytest.param(_set("classes", ["cat", "dog"]), "bank class 0 must be an object", id="class-strings"),
        pytest.param(_set("info", "calibrated"), "bank info must be an object, got a string", id="info-string"),
        pytest.param(_set("info", None), "bank info must be an object, got null", id="info-null"),
        pytest.param(_set("info", {"calibration": "yes"}), "info.calibration", id="calibration-string"),
        pytest.param(
            _set("info", {"calibration": {"classes": {"cat": {"threshold": "high"}}}}), "'cat'", id="threshold-string"
        ),
        pytest.param(_set("info", {"calibration": {"classes": {"cat": {"threshold": 7}}}}), "[0, 1]", id="threshold-7"),
        pytest.param(_set("encoder", "dinov2"), "bank encoder must be an object", id="encoder-string"),
        pytest.param(_set_encoder("image_size", "big"), "encoder.image_size must be a positive integer", id="size"),
        pytest.param(_set_encoder("image_size", 0), "encoder.image_size must be a positive integer", id="size-0"),
        pytest.param(_set_encoder("image_size", 224.0), "encoder.image_size must be a positive integer", id="size-f"),
        pytest.param(_set_encoder("dim", "3"), "encoder.dim must be a positive integer", id="dim-string"),
        pytest.param(_set_encoder("name", ["dinov2_vits14"]), "encoder.name must be a non-empty string", id="name"),
        pytest.param(_set_shot("negative", "false"), "bank shot 1: negative must be true or false", id="negative"),
    ],
)
def test_malformed_metadata_is_one_error_naming_the_bank(tmp_path, edit, message):
    path = _signed(tmp_path / "hostile.safetensors", edit)
    with pytest.raises(BankError) as err:
        MemoryBank.load(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


NAN_ROW = np.array([[3.0, 0.0, 0.0], [np.nan, 0.0, 1.0], [3.0, 8.0, 0.0]], np.float32)


@pytest.mark.parametrize(
    "features, class_ids, message",
    [
        pytest.param(np.full((3, 3), np.nan, np.float32), CLASS_IDS, "not finite (NaN or Inf) for 3 of 3", id="nan"),
        pytest.param(NAN_ROW, CLASS_IDS, "not finite (NaN or Inf) for 1 of 3 shots (shot 1)", id="one-nan"),
        pytest.param(np.full((3, 3), np.inf, np.float32), CLASS_IDS, "not finite", id="inf"),
        pytest.param(np.full((3, 3), 1e300), CLASS_IDS, "not finite", id="beyond-float32"),
        pytest.param(np.zeros((3, 3), np.float32), CLASS_IDS, "zero (a shot that matches nothing) for 3 of 3", id="0"),
        pytest.param(FEATURES.reshape(1, 9), CLASS_IDS, "must be (shots, encoder dim 3), got shape (1, 9)", id="flat"),
        pytest.param(FEATURES.reshape(1, 3, 3), CLASS_IDS, "got shape (1, 3, 3)", id="3d"),
        pytest.param(FEATURES.reshape(9), CLASS_IDS, "got shape (9,)", id="1d"),
        pytest.param(FEATURES.astype(np.int32), CLASS_IDS, "must be floats, got int32", id="int-features"),
        pytest.param(FEATURES[:2], CLASS_IDS, "inconsistent numbers of shots: 3 shots, 2 features", id="rows"),
        pytest.param(FEATURES, np.array([17.0, 18.5, 17.0]), "1-D integer array, got float64", id="ids-1.5"),
        pytest.param(FEATURES, np.array([17.0, 18.0, 17.0]), "1-D integer array, got float64", id="ids-float"),
        pytest.param(FEATURES, CLASS_IDS.reshape(3, 1), "of shape (3, 1)", id="ids-2d"),
        pytest.param(FEATURES, np.array([True, False, True]), "1-D integer array, got bool", id="ids-bool"),
        pytest.param(FEATURES, np.array([17, 99, 17]), "shots of unknown classes", id="ids-unknown"),
    ],
)
def test_malformed_tensors_are_one_error_naming_the_bank(tmp_path, features, class_ids, message):
    path = _signed(tmp_path / "hostile.safetensors", features=features, class_ids=class_ids)
    with pytest.raises(BankError) as err:
        MemoryBank.load(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_the_constructor_refuses_what_load_refuses():
    # Banks made in code (plugins, scripts) get the same checks: no silent reshape, no silent cast.
    meta = _meta()
    parts = dict(classes=meta["classes"], shots=meta["shots"], encoder=meta["encoder"])
    with pytest.raises(BankError, match=r"got shape \(1, 9\)"):
        MemoryBank(shot_features=FEATURES.reshape(1, 9), shot_class_ids=CLASS_IDS, **parts)
    with pytest.raises(BankError, match="1-D integer array"):
        MemoryBank(shot_features=FEATURES, shot_class_ids=[17, 18.5, 17], **parts)
    with pytest.raises(BankError, match="not finite"):
        MemoryBank(shot_features=NAN_ROW, shot_class_ids=CLASS_IDS, **parts)
    bank = MemoryBank(shot_features=FEATURES.astype(np.float64), shot_class_ids=[17, 18, 17], **parts)
    assert bank.shot_features.dtype == np.float32 and bank.shot_class_ids.dtype == np.int64
    numpy_ids = [{"id": np.int64(17), "name": "cat"}, {"id": np.int32(18), "name": "dog"}]
    assert MemoryBank(numpy_ids, FEATURES, CLASS_IDS, meta["shots"], meta["encoder"]).class_ids == [17, 18]
    assert type(MemoryBank(numpy_ids, FEATURES, CLASS_IDS, meta["shots"], meta["encoder"]).classes[0]["id"]) is int


@pytest.mark.parametrize(
    "edit, features, message",
    [
        pytest.param(_set("shots", ["a", "b", "c"]), FEATURES, "bank shot 0 must be an object", id="shots"),
        pytest.param(_set("classes", [{"id": 17}, {"id": 18}]), FEATURES, "non-empty name", id="classes"),
        pytest.param(_set("info", "x"), FEATURES, "bank info must be an object", id="info"),
        pytest.param(None, np.full((3, 3), np.nan, np.float32), "not finite", id="nan-features"),
        pytest.param(None, np.zeros((3, 3), np.float32), "are zero", id="zero-features"),
        pytest.param(_set_encoder("image_size", "big"), FEATURES, "encoder.image_size", id="image-size"),
    ],
)
@pytest.mark.parametrize("command", ["info", "segment"])
def test_cli_names_the_bank_and_exits_2(tmp_path, capsys, edit, features, message, command):
    path = _signed(tmp_path / "hostile.safetensors", edit, features=features)
    if command == "info":
        argv = ["bank", "info", str(path)]
    else:
        argv = ["segment", "--bank", str(path), "--images", str(tmp_path), "-o", str(tmp_path / "p.json")]
        argv += ["--preset", "smoke", "--random-weights", "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}: ") and message in err and "\n" not in err, err


def _load_in_thread(path) -> BaseException | None:
    """``MemoryBank.load(path)``'s error, or a failure when it does not return within 10 s (a FIFO opened for
    reading blocks until a writer comes: the thread is left behind, the test fails instead of hanging)."""
    found = []

    def run():
        try:
            MemoryBank.load(path)
        except BaseException as err:  # noqa: BLE001 - handed to the test
            found.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), f"loading {path} blocked"
    return found[0] if found else None


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "link-to-dev-zero", "folder", "broken-link"])
def test_only_regular_files_are_read_as_banks(tmp_path, kind):
    path = tmp_path / "bank.safetensors"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path = Path("/dev/zero")
    elif kind == "link-to-dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "folder":
        path.mkdir()
    else:
        path.symlink_to(tmp_path / "gone.safetensors")
    err = _load_in_thread(path)
    assert isinstance(err, BankError) and str(path) in str(err), err
    assert ("broken symlink" in str(err)) if kind == "broken-link" else ("not a" in str(err))


def test_load_records_the_file_digest_and_save_updates_it(tmp_path):
    path = _signed(tmp_path / "b.safetensors")
    bank = MemoryBank.load(path)
    assert bank.file_digest == hashlib.sha256(path.read_bytes()).hexdigest() == file_digest(path)
    smaller = bank.remove(annotation_ids=[102])
    assert smaller.file_digest is None, "a bank made in memory comes from no file"
    smaller.save(path)
    assert smaller.file_digest == file_digest(path) != bank.file_digest


def test_a_large_bank_still_loads_fast(tmp_path):
    # Every shot is checked: the checks must stay vectorised (a bank of thousands of shots loads at each command).
    shots, dim = 5000, 1024
    rng = np.random.default_rng(0)
    classes = [{"id": i, "name": f"class {i}"} for i in range(1, 101)]
    ids = np.repeat(np.arange(1, 101), shots // 100)
    shot_info = [
        {"image_id": k, "annotation_id": k, "class_id": int(c), "image_path": f"/d/{k}.jpg"} for k, c in enumerate(ids)
    ]
    bank = MemoryBank(
        classes, rng.standard_normal((shots, dim)).astype(np.float32), ids, shot_info, {**ENCODER, "dim": dim}
    )
    path = bank.save(tmp_path / "big.safetensors")
    start = time.perf_counter()
    loaded = MemoryBank.load(path)
    took = time.perf_counter() - start
    assert len(loaded.shots) == shots
    assert took < 3.0, f"loading {shots} shots took {took:.2f} s"


# ---- concurrent writers (real processes) ----------------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import numpy as np
    from ntt.bank.memory import MemoryBank
    from ntt.bank.file import update_bank_file

    path, class_id, folder = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    new = MemoryBank(
        [{"id": class_id, "name": f"class {class_id}"}],
        np.full((1, 3), float(class_id), np.float32),
        [class_id],
        [{"image_id": class_id, "annotation_id": 1000 + class_id}],
        {"name": "dinov2_vits14", "image_size": 224, "weights": "random:seed=0", "fingerprint": "f", "dim": 3},
    )

    def change(current):
        time.sleep(0.3)  # a slow writer: without the lock, every process would read the same old bank
        return current.add(new)

    (folder / f"ready.{class_id}").touch()
    while not (folder / "go").exists():
        time.sleep(0.005)
    update_bank_file(path, change)
    """
)


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "a child process did not get ready"
        time.sleep(0.01)


def test_concurrent_adds_to_one_bank_all_land(tmp_path):
    path = _signed(tmp_path / "b.safetensors")
    new_ids = [31, 32, 33, 34]
    children = [_start([_CHILD, str(path), str(cid), str(tmp_path)]) for cid in new_ids]
    try:
        _wait_for(lambda: all((tmp_path / f"ready.{cid}").exists() for cid in new_ids))
        (tmp_path / "go").touch()  # all at once
        outcomes = [child.communicate(timeout=120) for child in children]
    finally:
        for child in children:
            child.kill()
    assert [child.returncode for child in children] == [0] * len(new_ids), outcomes
    final = MemoryBank.load(path)
    assert set(final.class_ids) == {17, 18, *new_ids}, "a concurrent add was lost"
    assert len(final.shots) == 3 + len(new_ids)
    assert lock_path(path).exists() and lock_path(path).parent == path.parent


_OTHER_WRITER = textwrap.dedent(
    """
    import sys
    from ntt.bank.file import update_bank_file

    update_bank_file(sys.argv[1], lambda bank: bank.remove(annotation_ids=[102]))
    """
)


def test_a_conditional_update_of_a_bank_changed_meanwhile_is_refused(tmp_path):
    path = _signed(tmp_path / "b.safetensors")
    read = MemoryBank.load(path)  # e.g. `bank report --calibrate` grades this one for minutes
    other = _start([_OTHER_WRITER, str(path)])
    outcome = other.communicate(timeout=120)
    assert other.returncode == 0, outcome
    written = path.read_bytes()
    calibrated = {"method": "f1", "classes": {"cat": {"threshold": 0.5}}}

    def calibrate(current):
        return current.with_info(calibration=calibrated)

    with pytest.raises(BankError, match="the bank changed while this command ran.*run it again"):
        update_bank_file(path, calibrate, read_digest=read.file_digest)
    assert path.read_bytes() == written, "the file is untouched"
    fresh = MemoryBank.load(path)
    done = update_bank_file(path, calibrate, read_digest=fresh.file_digest)
    assert MemoryBank.load(path).info["calibration"] == calibrated and done.file_digest == file_digest(path)


def test_a_failing_change_leaves_the_bank_untouched_and_the_lock_free(tmp_path):
    path = _signed(tmp_path / "b.safetensors")
    before = path.read_bytes()

    def unknown_class(current):
        raise ValueError("classes not in the bank: ['emu']")

    with pytest.raises(ValueError, match="emu"):
        update_bank_file(path, unknown_class)
    assert path.read_bytes() == before
    update_bank_file(path, lambda bank: bank.remove(annotation_ids=[102]), wait_s=1.0)
    assert len(MemoryBank.load(path).shots) == 2


def test_an_update_with_output_writes_there_and_leaves_the_source(tmp_path):
    path = _signed(tmp_path / "b.safetensors")
    before = path.read_bytes()
    out = tmp_path / "new" / "smaller.safetensors"
    read = MemoryBank.load(path)
    update_bank_file(path, lambda bank: bank.remove(annotation_ids=[102]), read_digest=read.file_digest, output=out)
    assert path.read_bytes() == before and len(MemoryBank.load(out).shots) == 2
    assert lock_path(out).exists()


_HOLDER = textwrap.dedent(
    """
    import sys, time
    from ntt.bank.file import bank_lock

    with bank_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(300)
    """
)


def test_a_held_lock_makes_others_wait_and_dies_with_its_holder(tmp_path):
    path = _signed(tmp_path / "b.safetensors")
    holder = _start([_HOLDER, str(path)])
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(BankError, match="another ntt command has been writing this bank"):
            update_bank_file(path, lambda bank: bank.remove(annotation_ids=[102]), wait_s=0.3)
        assert len(MemoryBank.load(path).shots) == 3
        holder.send_signal(signal.SIGKILL)  # the kernel releases a dead process's flock
        holder.wait(30)
        start = time.monotonic()
        update_bank_file(path, lambda bank: bank.remove(annotation_ids=[102]), wait_s=30)
        assert time.monotonic() - start < 5 and len(MemoryBank.load(path).shots) == 2
        assert lock_path(path).exists(), "the stale lock file stays, harmless"
    finally:
        holder.kill()
        holder.wait(30)


def test_the_lock_is_per_bank_file(tmp_path):
    a, b = _signed(tmp_path / "a.safetensors"), _signed(tmp_path / "b.safetensors")
    with bank_lock(a):
        update_bank_file(b, lambda bank: bank.remove(annotation_ids=[102]), wait_s=0.3)
    assert len(MemoryBank.load(b).shots) == 2
