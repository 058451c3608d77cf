"""Hostile inputs and outputs found by probing the CLI as an attacker would: pipes and devices where files are
expected, outputs that are inputs in disguise (a target image, a reference image, the bank), a disk that fills
between two files, runs where nothing can be read, odd file names, hand-edited sidecars. Each ends in one
`error:` line (exit 2) or a correct result, and never loses a file."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ntt.cli import main

SMOKE = ["--preset", "smoke", "--random-weights", "--device", "cpu"]


@pytest.fixture(scope="module")
def bank_path(coco128, refs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bank")
    (folder / "refs.json").write_text(json.dumps(refs))
    out = folder / "bank.safetensors"
    args = ["bank", "build", str(folder / "refs.json"), "--images", str(coco128 / "images" / "train2017")]
    assert main([*args, "-o", str(out), *SMOKE]) == 0
    return out


def _one_error(capsys, *needles) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _segment(bank_path, images, out, *extra) -> list[str]:
    return ["segment", "--bank", str(bank_path), "--images", str(images), "-o", str(out), *extra, *SMOKE]


def test_a_pipe_or_device_given_as_a_json_file_is_named_not_read(refs, coco128, tmp_path):
    """A FIFO blocks its reader forever and /dev/zero never ends: both are refused before they are opened."""
    fifo = tmp_path / "refs.json"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.json"
    zero.symlink_to("/dev/zero")
    for path in (fifo, zero):
        args = [sys.executable, "-m", "ntt.cli", "bank", "build", str(path), "-o", str(tmp_path / "b.st"), *SMOKE]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "not a regular file" in proc.stderr and "Traceback" not in proc.stderr


def test_a_cache_limit_that_is_no_number_names_the_variable(monkeypatch, capsys):
    for value in ("inf", "nan", "lots", "-5"):
        monkeypatch.setenv("NTT_CACHE_LIMIT_MB", value)
        assert main(["cache", "info"]) == 2
        _one_error(capsys, "NTT_CACHE_LIMIT_MB must be a number of megabytes", repr(value))


def test_outputs_that_are_inputs_in_disguise_are_refused(bank_path, coco128, small_images, tmp_path, capsys):
    from ntt.bank.memory import MemoryBank

    folder = tmp_path / "targets"
    folder.mkdir()
    for img in small_images:
        shutil.copy(img, folder / img.name)
    victim = folder / small_images[0].name
    before = victim.read_bytes()
    assert main(_segment(bank_path, folder, victim)) == 2  # a target image
    _one_error(capsys, "is also an input")
    assert victim.read_bytes() == before

    refs_file = bank_path.parent / "refs.json"
    data = json.loads(refs_file.read_text())
    shot_image = Path(MemoryBank.load(bank_path).shots[0]["image_path"])
    copies = tmp_path / "refs"
    copies.mkdir()
    for img in data["images"]:
        shutil.copy(coco128 / "images" / "train2017" / img["file_name"], copies / img["file_name"])
    victim = copies / shot_image.name
    before = victim.read_bytes()
    build = ["bank", "build", str(refs_file), "--images", str(copies), *SMOKE]
    assert main([*build, "-o", str(victim)]) == 2  # a reference image
    _one_error(capsys, "is also an input")
    assert victim.read_bytes() == before

    bank = tmp_path / "bank.safetensors"
    shutil.copy(bank_path, bank)
    before = bank.read_bytes()
    report = ["bank", "grade", str(bank), str(refs_file), "--images", str(coco128 / "images" / "train2017")]
    for extra in (
        ["--json", str(bank)],
        ["--json", str(refs_file)],
        ["--calibrate", "-o", str(tmp_path / "c.st"), "--json", str(tmp_path / "c.st")],
    ):
        assert main([*report, *extra, *SMOKE]) == 2
        _one_error(capsys, "is also an input")
    assert bank.read_bytes() == before


def test_a_pipe_as_output_is_refused_and_a_link_is_written_through(bank_path, small_images, tmp_path, capsys):
    folder = small_images[0].parent
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    assert main(_segment(bank_path, folder, fifo)) == 2
    _one_error(capsys, "not a regular file")
    assert fifo.is_fifo()

    real = tmp_path / "real" / "preds.json"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    assert main(_segment(bank_path, folder, link)) == 0
    capsys.readouterr()
    assert link.is_symlink() and isinstance(json.loads(real.read_text()), list), "the file behind the link is new"


def test_a_disk_full_between_results_and_sidecar_keeps_the_old_pair(
    bank_path, small_images, tmp_path, capsys, monkeypatch
):
    import ntt.io.atomic as atomic

    out = tmp_path / "preds.json"
    assert main(_segment(bank_path, small_images[0].parent, out)) == 0
    capsys.readouterr()
    old = out.read_bytes(), out.with_name("preds.meta.json").read_bytes()
    real_write = atomic.os.write

    def full_for_the_sidecar(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp") and ".preds.meta.json." in os.readlink(
            f"/proc/self/fd/{fd}"
        ):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(atomic.os, "write", full_for_the_sidecar)
    assert main(_segment(bank_path, small_images[0].parent, out, "--max-instances", "3")) == 2
    _one_error(capsys, "the disk is full")
    assert (out.read_bytes(), out.with_name("preds.meta.json").read_bytes()) == old, "the old pair, as it was"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_when_no_image_can_be_read_nothing_is_written(bank_path, tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"")
    (folder / "b.jpg").write_text("text")
    out = tmp_path / "preds.json"
    out.write_text("the results of an earlier run")
    assert main(_segment(bank_path, folder, out)) == 2
    printed = capsys.readouterr()
    assert "none of the 2 image(s) could be read" in printed.err and "Traceback" not in printed.err
    assert "a.jpg: empty file" in printed.out and "b.jpg: not a readable image" in printed.out
    assert out.read_text() == "the results of an earlier run" and not out.with_name("preds.meta.json").exists()


def test_each_listed_target_gets_its_own_detections_even_one_file_twice(bank_path, small_images, tmp_path, capsys):
    targets = tmp_path / "targets.json"
    image = {"file_name": small_images[0].name}
    targets.write_text(
        json.dumps(
            {"images": [{**image, "id": 1}, {**image, "id": 2}, {"file_name": "./" + small_images[0].name, "id": 3}]}
        )
    )
    out = tmp_path / "preds.json"
    opened = ["--config", '{"segment": {"pred_iou_thresh": 0.0, "nms_thresh": 1.0}}']  # random weights find things
    assert main(_segment(bank_path, targets, out, "--image-root", str(small_images[0].parent), *opened)) == 0
    capsys.readouterr()
    meta = json.loads(out.with_name("preds.meta.json").read_text())
    assert meta["image_ids"] == [1, 2, 3]
    by_id = {}
    for item in json.loads(out.read_text()):
        by_id.setdefault(item.pop("image_id"), []).append(item)
    assert sorted(by_id) == [1, 2, 3] and by_id[1] == by_id[2] == by_id[3]


@pytest.mark.parametrize(("name", "expected_id"), [("².jpg", 140), ("١٢.jpg", 140), ("12.jpg", 12)])
def test_only_ascii_digits_name_an_image_id(small_images, tmp_path, name, expected_id):
    from ntt.io.coco import targets_from_dir

    shutil.copy(small_images[0], tmp_path / "139.jpg")
    shutil.copy(small_images[1], tmp_path / name)
    assert dict((p.name, i) for i, p in targets_from_dir(tmp_path))[name] == expected_id


def test_results_of_another_image_size_and_hand_edited_sidecars_are_named(refs, tmp_path, capsys):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(refs))
    ann = next(a for a in refs["annotations"] if not a["iscrowd"])
    wrong = {"size": [10, 10], "counts": [100]}
    preds = tmp_path / "preds.json"
    preds.write_text(
        json.dumps([{**{k: ann[k] for k in ("image_id", "category_id", "bbox")}, "score": 0.9, "segmentation": wrong}])
    )
    assert main(["evaluate", str(gt), str(preds)]) == 2
    _one_error(capsys, "results[0]", "segmentation size [10, 10] is not its image's")

    preds.write_text("[]")
    from ntt.io.atomic import file_sha256

    for edit in ({"files": ["a", "b"]}, {"image_ids": [[1], [2]]}, {"category_ids": "all"}):
        meta = {"results_sha256": file_sha256(preds), "files": {}, "image_ids": [], **edit}
        preds.with_name("preds.meta.json").write_text(json.dumps(meta))
        assert main(["evaluate", str(gt), str(preds)]) == 2
        _one_error(capsys, "not a sidecar written by `ntt segment`")


def test_bad_flag_values_are_refused(bank_path, tmp_path, capsys):
    assert main(_segment(bank_path, "", tmp_path / "p.json")) == 2
    _one_error(capsys, "--images is empty")
    report = ["bank", "grade", str(bank_path), str(bank_path.parent / "refs.json")]
    for value in ("nan", "2", "0"):
        with pytest.raises(SystemExit) as stop:
            main([*report, "--target-precision", value, *SMOKE])
        assert stop.value.code == 2
        assert "must be in (0, 1]" in capsys.readouterr().err


def test_arrays_that_are_no_rgb_image_are_skipped_one_by_one(bank_path, small_images):
    from ntt.bank.memory import MemoryBank
    from ntt.config import get_config
    from ntt.predict.segmenter import Segmenter

    good = np.asarray(Image.open(small_images[0]).convert("RGB"))
    bad = [good[..., 0], np.dstack([good, good[..., :1]]), good.astype(np.float64), good > 0, good[:0]]
    cfg = get_config("smoke", {"model": {"random_weights": True, "device": "cpu"}, "segment": {"batch_size": 2}})
    results = list(Segmenter(MemoryBank.load(bank_path), cfg).run([good, *bad, good]))
    assert [r.error is None for r in results] == [True, False, False, False, False, False, True]
    assert all("images are RGB uint8 (H, W, 3)" in r.error for r in results[1:-1])


def test_a_closed_output_pipe_ends_quietly(bank_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "ntt.cli", "bank", "info", str(bank_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # the reader went away before the first line
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, 141) and b"Traceback" not in err and b"error" not in err, err
