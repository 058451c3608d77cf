"""Bad input of every kind reaches a CLI user as one `error:` line and exit code 2, before any work, and
nothing a user owns is overwritten: malformed COCO files (generated here), bad numbers, missing devices,
unsafe checkpoints, outputs that are inputs, folders or under files, a full disk."""

from __future__ import annotations

import copy
import errno
import json
import shutil

import pytest

from ntt.cli import main

SMOKE = ["--preset", "smoke", "--random-weights", "--device", "cpu"]


@pytest.fixture(scope="module")
def bank_path(coco128, refs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bank")
    path = folder / "refs.json"
    path.write_text(json.dumps(refs))
    out = folder / "bank.safetensors"
    args = ["bank", "build", str(path), "--images", str(coco128 / "images" / "train2017"), "-o", str(out)]
    assert main(args + ["--classes", "person"] + SMOKE) == 0
    return out


def _one_error(capsys, *needles):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _edit(data, fn):
    out = copy.deepcopy(data)
    fn(out)
    return out


def _first_ann(data):
    return data["annotations"][0]


MALFORMED = {
    "image-without-id": (lambda d: d["images"][0].pop("id"), "images[0]: missing 'id'"),
    "duplicate-image-id": (lambda d: d["images"][1].update(id=d["images"][0]["id"]), "duplicate image id"),
    "image-without-file-name": (lambda d: d["images"][0].pop("file_name"), "file_name"),
    "negative-width": (lambda d: d["images"][0].update(width=-5), "width must be between"),
    "absurd-height": (lambda d: d["images"][0].update(height=10**9), "height must be between"),
    "annotation-without-id": (lambda d: _first_ann(d).pop("id"), "annotations[0]: missing 'id'"),
    "string-category-id": (lambda d: _first_ann(d).update(category_id="1"), "category_id must be an integer, got '1'"),
    "unknown-category": (lambda d: _first_ann(d).update(category_id=4242), "category_id 4242 is not in"),
    "unknown-image": (lambda d: _first_ann(d).update(image_id=4242), "image_id 4242 is not in"),
    "bbox-of-three": (lambda d: _first_ann(d).update(bbox=[1, 2, 3]), "bbox must be"),
    "bbox-nan": (lambda d: _first_ann(d).update(bbox=[1, 2, float("nan"), 4]), "bbox must be"),
    "bbox-negative": (lambda d: _first_ann(d).update(bbox=[1, 2, -3, 4]), "negative or absurd"),
    "segmentation-number": (lambda d: _first_ann(d).update(segmentation=7), "segmentation must be"),
    "rle-without-size": (lambda d: _first_ann(d).update(segmentation={"counts": "abc"}), "RLE needs"),
    "iscrowd-five": (lambda d: _first_ann(d).update(iscrowd=5), "iscrowd must be 0 or 1"),
    "one-id-two-names": (
        lambda d: d["categories"].append({"id": d["categories"][0]["id"], "name": "lion"}),
        "appears twice",
    ),
    "one-name-two-ids": (lambda d: d["categories"].append({"id": 999, "name": "person"}), "has two ids"),
    "category-id-beyond-int64": (lambda d: _first_ann(d).update(category_id=10**30), "between 0 and 2**63 - 1"),
    "annotations-not-a-list": (lambda d: d.update(annotations={}), "'annotations' must be a list"),
    "annotation-not-an-object": (lambda d: d["annotations"].append(3), "must be an object"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_reference_file_is_one_line_naming_the_entry(case, refs, coco128, tmp_path, capsys):
    edit, needle = MALFORMED[case]
    path = tmp_path / "refs.json"
    path.write_text(json.dumps(_edit(refs, edit)))
    images = str(coco128 / "images" / "train2017")
    assert main(["bank", "build", str(path), "--images", images, "-o", str(tmp_path / "b.st")] + SMOKE) == 2
    _one_error(capsys, str(path), needle)
    assert not (tmp_path / "b.st").exists()


@pytest.mark.parametrize(
    "content, needle",
    [
        ("{not json", "not valid JSON"),
        ("", "not valid JSON"),
        ("[1, 2]", "not a COCO file"),
        ("[" * 200_000 + "]" * 200_000, "nested too deeply"),
        (b"\xff\xfe\x00bad", "not a UTF-8 text file"),
    ],
)
def test_unreadable_json_is_one_line(content, needle, tmp_path, capsys):
    path = tmp_path / "refs.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["bank", "build", str(path), "-o", str(tmp_path / "b.st")] + SMOKE) == 2
    _one_error(capsys, needle)


def test_directory_instead_of_a_file(tmp_path, capsys):
    assert main(["bank", "build", str(tmp_path), "-o", str(tmp_path / "b.st")] + SMOKE) == 2
    _one_error(capsys, "is a directory")


def test_malformed_target_and_ground_truth_files(bank_path, refs, tmp_path, capsys):
    bad = tmp_path / "targets.json"
    bad.write_text(json.dumps(_edit(refs, lambda d: d["images"][0].update(id="x"))))
    args = ["segment", "--bank", str(bank_path), "--images", str(bad), "-o", str(tmp_path / "p.json")]
    assert main(args + SMOKE) == 2
    _one_error(capsys, "id must be an integer")
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": "high"}]))
    assert main(["evaluate", str(bad), str(preds)]) == 2
    _one_error(capsys, "id must be an integer")
    good = tmp_path / "gt.json"
    good.write_text(json.dumps(refs))
    assert main(["evaluate", str(good), str(preds)]) == 2
    _one_error(capsys, "score must be a finite number")


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--score-thresh", "1.5"], "score_thresh must be a number in [0, 1]"),
        (["--score-thresh", "-0.1"], "score_thresh must be a number in [0, 1]"),
        (["--max-instances", "0"], "max_instances"),
        (["--batch-size", "-2"], "batch_size"),
        (["--points-per-side", "0"], "points_per_side"),
        (["--device", "cuda:99"], "this machine has: cpu"),
        (["--device", "tpu"], "unknown device 'tpu'"),
    ],
)
def test_invalid_values_are_one_line(extra, needle, bank_path, coco128, tmp_path, capsys):
    args = ["segment", "--bank", str(bank_path), "--images", str(coco128 / "images" / "val2017")]
    assert main(args + ["-o", str(tmp_path / "p.json")] + SMOKE + extra) == 2
    _one_error(capsys, needle)
    assert not (tmp_path / "p.json").exists()


@pytest.mark.parametrize("flag", ["--max-images", "--points-per-side"])
def test_counts_below_one_are_refused(flag, bank_path, coco128, tmp_path, capsys):
    args = ["segment", "--bank", str(bank_path), "--images", str(coco128 / "images" / "val2017")]
    code = _exit_code(args + ["-o", str(tmp_path / "p.json"), flag, "-1"] + SMOKE)
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" in err


def _exit_code(argv) -> int:
    try:
        return main(argv)
    except SystemExit as stop:  # argparse's own errors
        return stop.code


def test_cuda_without_cuda_names_the_devices_there(bank_path, coco128, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    args = ["segment", "--bank", str(bank_path), "--images", str(coco128 / "images" / "val2017")]
    assert main(args + ["-o", str(tmp_path / "p.json")] + SMOKE[:-2] + ["--device", "cuda"]) == 2
    _one_error(capsys, "device 'cuda' is not available", "this machine has: cpu")


def test_checkpoint_with_code_is_refused_for_safety(refs, coco128, tmp_path, capsys):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("must never run",))

    evil = tmp_path / "dinov2_vits14_pretrain.pth"
    evil.write_bytes(pickle.dumps({"w": Evil()}))
    path = tmp_path / "refs.json"
    path.write_text(json.dumps(refs))
    args = ["bank", "build", str(path), "--images", str(coco128 / "images" / "train2017")]
    args += ["-o", str(tmp_path / "b.st"), "--preset", "smoke", "--device", "cpu", "--dinov2-checkpoint", str(evil)]
    assert main(args) == 2
    line = _one_error(capsys, "refused for safety")
    assert "weights_only=False" not in line


# ---- nothing a user owns is overwritten ---------------------------------------------------------------


def test_output_equal_to_an_input_is_refused_before_any_work(bank_path, refs, coco128, tmp_path, capsys):
    targets = tmp_path / "t.json"
    targets.write_text(json.dumps(refs))
    before = targets.read_bytes()
    img_root = ["--image-root", str(coco128 / "images" / "train2017")]
    args = ["segment", "--bank", str(bank_path), "--images", str(targets), *img_root, "-o", str(targets)]
    assert main(args + SMOKE) == 2
    _one_error(capsys, "is also an input")
    assert targets.read_bytes() == before
    args = ["bank", "build", str(targets), "--images", str(coco128 / "images" / "train2017"), "-o", str(targets)]
    assert main(args + SMOKE) == 2
    _one_error(capsys, "is also an input")
    assert targets.read_bytes() == before
    bank_before = bank_path.read_bytes()
    args = ["segment", "--bank", str(bank_path), "--images", str(targets), *img_root, "-o", str(bank_path)]
    assert main(args + SMOKE) == 2
    _one_error(capsys, "is also an input")
    assert bank_path.read_bytes() == bank_before
    preds = tmp_path / "preds.json"
    preds.write_text("[]")
    for victim in (targets, preds):
        assert main(["evaluate", str(targets), str(preds), "--json", str(victim)]) == 2
        _one_error(capsys, "is also an input")
    assert targets.read_bytes() == before and preds.read_text() == "[]"


def test_output_that_is_a_folder_or_under_a_file(bank_path, coco128, tmp_path, capsys):
    args = ["segment", "--bank", str(bank_path), "--images", str(coco128 / "images" / "val2017")]
    (tmp_path / "dir.json").mkdir()
    assert main(args + ["-o", str(tmp_path / "dir.json")] + SMOKE) == 2
    _one_error(capsys, "is a directory")
    (tmp_path / "file").write_text("x")
    assert main(args + ["-o", str(tmp_path / "file" / "p.json")] + SMOKE) == 2
    _one_error(capsys, "is a file, not a folder")


def test_full_disk_is_said_and_the_old_bank_stays(bank_path, refs, coco128, tmp_path, capsys, monkeypatch):
    import ntt.io.atomic as atomic

    out = tmp_path / "bank.safetensors"
    shutil.copy(bank_path, out)
    before = out.read_bytes()
    path = tmp_path / "refs.json"
    path.write_text(json.dumps(refs))

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "write", full)
    args = ["bank", "build", str(path), "--images", str(coco128 / "images" / "train2017"), "-o", str(out)]
    assert main(args + ["--classes", "person"] + SMOKE) == 2
    _one_error(capsys, "the disk is full", "intact")
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank.safetensors", "refs.json"]


def test_removing_every_class_is_refused_and_the_bank_stays(bank_path, tmp_path, capsys):
    bank = tmp_path / "bank.safetensors"
    shutil.copy(bank_path, bank)
    before = bank.read_bytes()
    assert main(["bank", "remove", str(bank), "--classes", "person,"]) == 2
    _one_error(capsys, "empty bank")
    assert bank.read_bytes() == before


# ---- hostile COCO values: refused before any work, never a crash (ntt.io.coco_check) -----------------------------


def _rle_of_another_size(d):
    # the real compressed RLEs of a 480 x 640 image, declared 480 x 641 like the image: 480 pixels short
    image = d["images"][0]
    image["width"] += 1
    for ann in d["annotations"]:
        if ann["image_id"] == image["id"]:
            ann["segmentation"]["size"] = [image["height"], image["width"]]


HOSTILE = {
    "category-id-beyond-int64": (
        lambda d: (_first_ann(d).update(category_id=10**30), d["categories"].append({"id": 10**30, "name": "x"})),
        "id must be between 0 and 2**63 - 1",
    ),
    "negative-image-id": (lambda d: d["images"][0].update(id=-1), "images[0] (id -1): id must be between"),
    "rle-counts-short": (
        lambda d: _first_ann(d).update(segmentation={"size": [480, 640], "counts": [5, 10, 20]}),
        "counts add up to 35 pixels, not 480 x 640 = 307200",
    ),
    "rle-string-of-another-size": (_rle_of_another_size, "counts add up to 307200 pixels, not 480 x 641 = 307680"),
    "rle-string-truncated": (
        lambda d: _first_ann(d).update(segmentation={"size": [480, 640], "counts": "0\\"}),
        "not a COCO compressed RLE",
    ),
    "rle-size-not-the-image": (
        lambda d: _first_ann(d)["segmentation"].update(size=[640, 480]),
        "segmentation size [640, 480] is not its image's [height, width] [480, 640]",
    ),
    "polygon-at-1e30": (  # crashed the process (segmentation fault) in pycocotools
        lambda d: _first_ann(d).update(segmentation=[[0, 0, 1e30, 0, 1e30, 1e30]]),
        "far outside the image",
    ),
    "image-of-a-trillion-pixels": (
        lambda d: d["images"][0].update(width=1_000_000, height=1_000_000),
        "is more than 500,000,000 pixels",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_reference_values_are_one_line(case, refs, coco128, tmp_path, capsys):
    edit, needle = HOSTILE[case]
    path = tmp_path / "refs.json"
    path.write_text(json.dumps(_edit(refs, edit)))
    images = str(coco128 / "images" / "train2017")
    assert main(["bank", "build", str(path), "--images", images, "-o", str(tmp_path / "b.st")] + SMOKE) == 2
    _one_error(capsys, str(path), needle)


def _perfect_results(data):
    keys = ("image_id", "category_id", "bbox", "segmentation")
    return [{**{k: a[k] for k in keys}, "score": 0.9} for a in data["annotations"] if not a["iscrowd"]]


def test_hostile_ground_truth_and_results_through_evaluate(refs, tmp_path, capsys, caplog):
    gt, preds = tmp_path / "gt.json", tmp_path / "preds.json"
    results = _perfect_results(refs)
    # a results RLE whose counts fall short of its size was read past its end (uninitialised pixels)
    short = _edit(results, lambda r: r[3].update(segmentation={"size": [480, 640], "counts": "0<"}))
    gt.write_text(json.dumps(refs))
    preds.write_text(json.dumps(short))
    assert main(["evaluate", str(gt), str(preds)]) == 2
    _one_error(capsys, str(preds), "results[3]: segmentation RLE counts add up to 12 pixels")
    # a ground-truth object without a segmentation stopped pycocotools with a KeyError
    gt.write_text(json.dumps(_edit(refs, lambda d: _first_ann(d).pop("segmentation"))))
    preds.write_text(json.dumps(results))
    assert main(["evaluate", str(gt), str(preds)]) == 2
    _one_error(capsys, str(gt), "annotations[0]", "ground truth needs a segmentation")
    # ... and one without an area too: now it is the mask's pixel count, and the results score perfectly
    gt.write_text(json.dumps(_edit(refs, lambda d: [a.pop("area") for a in d["annotations"]])))
    metrics = tmp_path / "metrics.json"
    assert main(["evaluate", str(gt), str(preds), "--json", str(metrics)]) == 0
    assert json.loads(metrics.read_text())["segm"]["AP"] == pytest.approx(1.0)
    assert f"{len(refs['annotations'])} annotation(s) have no 'area'" in caplog.text


def test_repeated_annotation_ids_build_a_bank_whose_shots_keep_them(refs, coco128, tmp_path, caplog):
    from ntt.bank.memory import MemoryBank

    oranges = [a for a in refs["annotations"] if a["category_id"] == 55]
    written = oranges[0]["id"]

    def repeat(d):
        for ann in d["annotations"]:
            if ann["category_id"] == 55:
                ann["id"] = written

    path = tmp_path / "refs.json"
    path.write_text(json.dumps(_edit(refs, repeat)))
    out = tmp_path / "bank.safetensors"
    args = ["bank", "build", str(path), "--images", str(coco128 / "images" / "train2017"), "-o", str(out)]
    assert main(args + ["--classes", "orange"] + SMOKE) == 0
    shots = MemoryBank.load(out).shots
    assert [s["annotation_id"] for s in shots] == [written] * len(oranges)
    repeats = len(oranges) - 1
    assert f"{repeats} annotation ids repeat an earlier one, given new ids" in caplog.text
