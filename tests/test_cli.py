"""The CLI chain on the real COCO128 images with tiny random-weight models, and its bad-input handling."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from ntt.bank.memory import MemoryBank
from ntt.cli import main

SMOKE = ["--preset", "smoke", "--random-weights", "--device", "cpu"]


@pytest.fixture(scope="module")
def bank_path(coco128, tmp_path_factory):
    out = tmp_path_factory.mktemp("bank") / "bank.safetensors"
    refs = coco128 / "annotations" / "instances_train2017.json"
    args = ["bank", "build", str(refs), "-o", str(out), "--shots", "2", "--classes", "person", "Dog ", "car"]
    assert main(args + SMOKE) == 0
    return out


def test_bank_info(bank_path, capsys):
    assert main(["bank", "info", str(bank_path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shots_per_class"] == {"person": 2, "car": 2, "dog": 2}
    assert info["class_ids"] == {"person": 1, "car": 3, "dog": 18}
    assert info["encoder"]["weights"] == "random:seed=0"


def test_segment_json_targets_then_evaluate(coco128, bank_path, tmp_path, capsys):
    gt = coco128 / "annotations" / "instances_val2017.json"
    preds = tmp_path / "preds.json"
    args = ["segment", "--bank", str(bank_path), "--images", str(gt), "-o", str(preds), "--max-images", "3"]
    assert main(args + SMOKE) == 0
    results = json.loads(preds.read_text())
    meta = json.loads((tmp_path / "preds.meta.json").read_text())
    gt_data = json.loads(gt.read_text())
    first3 = [img["id"] for img in gt_data["images"][:3]]
    assert meta["image_ids"] == first3 and meta["category_ids"] == [1, 3, 18]
    sizes = {img["id"]: (img["height"], img["width"]) for img in gt_data["images"]}
    bank = MemoryBank.load(bank_path)
    for r in results:
        assert r["image_id"] in first3 and r["category_id"] in (1, 3, 18)
        shot = next(s for s in bank.shots if s["annotation_id"] == r["shot_annotation_id"])  # why it was found
        assert shot["class_id"] == r["category_id"] and shot["image_id"] == r["shot_image_id"]
        assert {"shot_cosine", "class_cosine", "margin", "negative_cosine", "sam_iou"} <= set(r)
        mask = mask_utils.decode(r["segmentation"])
        assert mask.shape == sizes[r["image_id"]]
        ys, xs = np.nonzero(mask)
        assert r["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    capsys.readouterr()
    assert main(["evaluate", str(gt), str(preds)]) == 0
    table = capsys.readouterr().out
    assert "bbox" in table and "segm" in table and "AP50" in table


def test_bad_files_among_targets_are_skipped_and_named(coco128, bank_path, tmp_path, capsys):
    folder = tmp_path / "targets"
    folder.mkdir()
    for src in sorted((coco128 / "images" / "val2017").glob("*.jpg"))[:2]:
        shutil.copy(src, folder / src.name)
    (folder / "notes.jpg").write_text("this is text, not a JPEG")
    (folder / "empty.png").write_bytes(b"")
    preds = tmp_path / "preds.json"
    assert main(["segment", "--bank", str(bank_path), "--images", str(folder), "-o", str(preds)] + SMOKE) == 0
    out = capsys.readouterr().out
    assert "notes.jpg" in out and "empty.png" in out and "2 image(s) skipped" in out
    meta = json.loads((tmp_path / "preds.meta.json").read_text())
    assert len(meta["image_ids"]) == 2 and len(meta["skipped"]) == 2
    assert {r["image_id"] for r in json.loads(preds.read_text())} <= set(meta["image_ids"])


def test_reference_with_empty_mask_fails_with_its_annotation(tmp_path, coco128, capsys):
    refs = json.loads((coco128 / "annotations" / "instances_train2017.json").read_text())
    image = refs["images"][0]
    empty = mask_utils.encode(np.zeros((image["height"], image["width"]), np.uint8, order="F"))
    ann = {
        "id": 999001,
        "image_id": image["id"],
        "category_id": 1,
        "bbox": [50, 50, 60, 60],
        "segmentation": {"size": empty["size"], "counts": empty["counts"].decode()},
        "iscrowd": 0,
    }
    small = {"images": [image], "annotations": [ann], "categories": refs["categories"]}
    path = tmp_path / "refs.json"
    path.write_text(json.dumps(small))
    images = coco128 / "images" / "train2017"
    rc = main(["bank", "build", str(path), "--images", str(images), "-o", str(tmp_path / "b.st")] + SMOKE)
    assert rc == 2
    err = capsys.readouterr().err
    assert "annotation 999001" in err and "empty" in err


def test_class_without_valid_references_fails_naming_it(coco128, tmp_path, capsys):
    refs = coco128 / "annotations" / "instances_train2017.json"
    data = json.loads(refs.read_text())
    # A class whose every instance is small or at the border cannot give a shot by the paper's protocol.
    path = tmp_path / "refs.json"
    for ann in data["annotations"]:
        if ann["category_id"] == 1:
            ann["iscrowd"] = 1
    path.write_text(json.dumps(data))
    args = ["bank", "build", str(path), "--images", str(coco128 / "images" / "train2017")]
    rc = main(args + ["-o", str(tmp_path / "b.st"), "--shots", "1", "--classes", "person"] + SMOKE)
    assert rc == 2
    assert "class 'person' has no valid reference" in capsys.readouterr().err


def test_segment_without_weights_fails_fast_with_instructions(bank_path, coco128, tmp_path, capsys):
    args = ["segment", "--bank", str(bank_path), "--images", str(coco128 / "images" / "val2017")]
    rc = main(args + ["-o", str(tmp_path / "p.json"), "--preset", "smoke", "--device", "cpu"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "dinov2_vits14_pretrain.pth" in err and "sam2_hiera_tiny.pt" in err and "--random-weights" in err


def test_random_bank_needs_random_weights_with_same_seed(bank_path, coco128, tmp_path, capsys):
    args = ["segment", "--bank", str(bank_path), "--images", str(coco128 / "images" / "val2017")]
    rc = main(args + ["-o", str(tmp_path / "p.json"), "--weights-seed", "3"] + SMOKE)
    assert rc == 2
    assert "random:seed=0" in capsys.readouterr().err


def test_class_thresholds_name_only_the_banks_classes(bank_path, coco128, tmp_path, capsys):
    args = ["segment", "--bank", str(bank_path), "--images", str(coco128 / "images" / "val2017")]
    rc = main(args + ["-o", str(tmp_path / "p.json"), "--class-thresholds", '{"dog": 0.5, "unicorn": 0.5}'] + SMOKE)
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --class-thresholds names classes the bank does not have: ['unicorn']"), err
    assert not (tmp_path / "p.json").exists()


def test_bank_add_then_remove(coco128, bank_path, tmp_path, capsys):
    refs = coco128 / "annotations" / "instances_train2017.json"
    grown = tmp_path / "grown.safetensors"
    args = ["bank", "add", str(bank_path), str(refs), "-o", str(grown), "--shots", "1", "--classes", "cup"]
    assert main(args + SMOKE) == 0
    assert main(["bank", "info", str(grown)]) == 0
    info = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert info["shots_per_class"] == {"person": 2, "car": 2, "dog": 2, "cup": 1}
    # Re-adding the same shots changes nothing; the original shots keep their exact features.
    assert main(args[:2] + [str(grown), str(refs), "--shots", "1", "--classes", "cup"] + SMOKE) == 0
    from ntt.bank.memory import MemoryBank

    before, after = MemoryBank.load(bank_path), MemoryBank.load(grown)
    assert len(after.shots) == 7
    np.testing.assert_array_equal(after.shot_features[:6], before.shot_features)
    assert main(["bank", "remove", str(grown), "--classes", "person"]) == 0
    assert MemoryBank.load(grown).shots_per_class() == {"car": 2, "dog": 2, "cup": 1}
    assert main(["bank", "remove", str(grown), "--classes", "unicorn"]) == 2


def test_runtime_flags_reach_the_config():
    from ntt.cli import build_parser
    from ntt.cli.entry import _config

    args = build_parser().parse_args(
        ["segment", "--bank", "b", "--images", "i", "-o", "o", "--preset", "fast", "--no-compile"]
        + ["--batch-size", "0", "--points-batch-size", "64", "--prompt-mode", "guided"]
    )
    cfg = _config(args, {"prompt_mode": args.prompt_mode})
    assert (cfg.model.dtype, cfg.model.compile, cfg.model.sam2) == ("bf16", False, "sam2_hiera_l")
    assert (cfg.segment.batch_size, cfg.segment.points_batch_size, cfg.segment.prompt_mode) == (0, 64, "guided")
    plain = _config(build_parser().parse_args(["segment", "--bank", "b", "--images", "i", "-o", "o"]))
    assert (plain.model.compile, plain.segment.batch_size, plain.segment.points_batch_size) == (False, 1, 256)


def test_results_never_pair_with_another_runs_sidecar(coco128, bank_path, tmp_path, capsys):
    # A crash between writing the results and their sidecar must not let evaluate use a stale sidecar.
    gt = coco128 / "annotations" / "instances_val2017.json"
    preds = tmp_path / "preds.json"
    args = ["segment", "--bank", str(bank_path), "--images", str(gt), "-o", str(preds)]
    assert main(args + ["--max-images", "2"] + SMOKE) == 0
    sidecar = tmp_path / "preds.meta.json"
    old_sidecar = sidecar.read_bytes()
    assert main(args + ["--max-images", "1"] + SMOKE) == 0
    assert main(["evaluate", str(gt), str(preds)]) == 0
    sidecar.write_bytes(old_sidecar)  # new results, old sidecar
    capsys.readouterr()
    assert main(["evaluate", str(gt), str(preds)]) == 2
    assert "does not describe" in capsys.readouterr().err


def test_folder_targets_keep_their_ids_and_evaluate_by_file_name(coco128, bank_path, tmp_path, monkeypatch):
    import ntt.cli.pipeline as pipeline

    gt_data = json.loads((coco128 / "annotations" / "instances_val2017.json").read_text())
    first, second, third = gt_data["images"][:3]
    folder = tmp_path / "targets"
    folder.mkdir()
    for img in (first, second):
        shutil.copy(coco128 / "images" / "val2017" / img["file_name"], folder / img["file_name"])
    shutil.copy(coco128 / "images" / "val2017" / third["file_name"], folder / "street.jpg")
    third["file_name"] = "street.jpg"  # the ground truth knows that image by this name
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(gt_data))
    preds = tmp_path / "preds.json"
    assert main(["segment", "--bank", str(bank_path), "--images", str(folder), "-o", str(preds)] + SMOKE) == 0
    meta = json.loads((tmp_path / "preds.meta.json").read_text())
    # one odd name no longer renumbers the COCO-named files 1..N
    by_name = {Path(p).name: i for p, i in meta["files"].items()}
    assert by_name[first["file_name"]] == first["id"] and by_name[second["file_name"]] == second["id"]
    assert by_name["street.jpg"] == max(first["id"], second["id"]) + 1
    seen = {}
    monkeypatch.setattr(pipeline, "evaluate_results", lambda g, r, cat_ids, img_ids: seen.update(ids=img_ids) or {})
    pipeline.evaluate_files(gt, preds)
    assert sorted(seen["ids"]) == sorted([first["id"], second["id"], third["id"]])


def test_weights_names_every_missing_checkpoint_then_where_each_is(tmp_path, capsys, monkeypatch):
    assert main(["weights", "--preset", "lite"]) == 2
    err = capsys.readouterr().err
    assert "sam2.1_hiera_tiny.pt" in err and "dinov2_vits14_pretrain.pth" in err and "--random-weights" in err
    monkeypatch.setenv("NTT_CHECKPOINT_DIR", str(tmp_path))
    for name in ("sam2.1_hiera_tiny.pt", "dinov2_vits14_pretrain.pth"):
        (tmp_path / name).write_bytes(b"x")
    assert main(["weights", "--preset", "lite"]) == 0
    out = capsys.readouterr().out
    assert f"sam2 sam2.1_hiera_t: {tmp_path / 'sam2.1_hiera_tiny.pt'}" in out
    assert f"dinov2 dinov2_vits14: {tmp_path / 'dinov2_vits14_pretrain.pth'}" in out
    assert main(["weights", "--preset", "paper", "--random-weights"]) == 0
    assert "no checkpoint needed" in capsys.readouterr().out


@pytest.mark.parametrize("prompt_mode", ["grid", "guided"])
def test_segment_again_from_the_cache_then_clear_it(coco128, bank_path, tmp_path, capsys, monkeypatch, prompt_mode):
    """--cache fills the cache, a second run reuses every image and writes the same results; --no-cache and
    ``ntt cache clear`` leave nothing behind."""
    monkeypatch.setenv("NTT_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "targets"
    folder.mkdir()
    for src in sorted((coco128 / "images" / "val2017").glob("*.jpg"))[:2]:
        shutil.copy(src, folder / src.name)
    args = ["segment", "--bank", str(bank_path), "--images", str(folder), "--prompt-mode", prompt_mode] + SMOKE
    results = []
    for name in ("a.json", "b.json"):
        assert main(args + ["-o", str(tmp_path / name), "--cache"]) == 0
        results.append(json.loads((tmp_path / name).read_text()))
    out = capsys.readouterr().out
    assert "0 image(s) reused, 2 computed and stored" in out and "2 image(s) reused, 0 computed" in out
    assert results[0] == results[1] and len(results[0]) > 0
    assert main(["cache", "info"]) == 0 and json.loads(capsys.readouterr().out)["entries"] == 2
    assert main(["cache", "clear"]) == 0 and json.loads(capsys.readouterr().out)["freed"]["entries"] == 2
    assert main(args + ["-o", str(tmp_path / "c.json"), "--no-cache"]) == 0
    assert not list((tmp_path / "cache").rglob("*.safetensors"))


def test_bank_add_negative_shots(coco128, bank_path, tmp_path, capsys):
    """--negative adds shots as negatives of classes the bank has; a class it lacks is refused by name; a label that
    is a positive of the bank becomes a negative (the newer verdict); the taught bank segments and its detections
    report their nearest negative."""
    refs = coco128 / "annotations" / "instances_train2017.json"
    taught = tmp_path / "taught.safetensors"
    images = coco128 / "images" / "train2017"

    def add(refs_file, output, seed):
        args = ["bank", "add", str(bank_path), str(refs_file), "-o", str(output), "--shots", "1", "--seed", str(seed)]
        return main(args + ["--negative", "--classes", "car", "--images", str(images)] + SMOKE)

    assert add(refs, taught, 2) == 0  # seed 2 draws a car the bank does not have
    assert "1 negative shots added" in capsys.readouterr().out
    assert main(["bank", "info", str(taught)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["negatives_per_class"] == {"car": 1} and info["shots_per_class"] == {"person": 2, "car": 2, "dog": 2}
    flipped = tmp_path / "flipped.safetensors"
    assert add(refs, flipped, 5) == 0  # seed 5 draws one of the bank's own cars
    out = capsys.readouterr().out
    assert "was a positive of 'car' and is now a negative: the newer verdict replaces the older" in out
    assert "1 negative shots added, 3 classes, 6 shots (1 negative)" in out
    assert MemoryBank.load(flipped).shots_per_class() == {"person": 2, "car": 1, "dog": 2}
    cup = ["bank", "add", str(bank_path), str(refs), "-o", str(taught), "--shots", "1", "--negative"]
    assert main(cup + ["--classes", "cup"] + SMOKE) == 2
    err = capsys.readouterr().err
    assert "negative shots only" in err and "'cup'" in err

    # Random features are unlike each other: only a negative that looks like a positive surely reaches the cars. The
    # same car from a copy of the file (another source: another label) is one, beside the bank's positive.
    copy = tmp_path / "copy.json"
    copy.write_text(json.dumps(json.loads(refs.read_text()), indent=1))  # other bytes: another file
    alike = tmp_path / "alike.safetensors"
    assert add(copy, alike, 5) == 0 and "1 negative shots added, 3 classes, 7 shots" in capsys.readouterr().out
    gt = coco128 / "annotations" / "instances_val2017.json"
    preds = tmp_path / "preds.json"
    segment = ["segment", "--bank", str(alike), "--images", str(gt), "-o", str(preds), "--max-images", "2"]
    assert main(segment + SMOKE) == 0
    results = json.loads(preds.read_text())
    cars = [r for r in results if r["category_id"] == 3]
    assert cars and all(r["negative_cosine"] > 0 for r in cars)
    assert all(r["negative_cosine"] == 0 for r in results if r["category_id"] != 3)


def test_bank_grade_grades_the_references_and_calibrates(coco128, bank_path, tmp_path, capsys):
    """`ntt bank grade` runs leave-one-out on the bank's own reference images (random weights: the numbers
    are meaningless, the table and the stored thresholds are the point); `segment --thresholds calibrated`
    uses them, and a bank never calibrated is refused by name."""
    refs = coco128 / "annotations" / "instances_train2017.json"
    calibrated = tmp_path / "calibrated.safetensors"
    report = tmp_path / "report.json"
    args = ["bank", "grade", str(bank_path), str(refs), "--calibrate", "-o", str(calibrated), "--json", str(report)]
    assert main(args + SMOKE) == 0
    out = capsys.readouterr().out
    assert "most harmful first" in out and "calibrated thresholds for" in out and "hand-picked" in out
    assert "keeps the global threshold (" in out, "each class left out says why"
    data = json.loads(report.read_text())
    bank = MemoryBank.load(calibrated)
    assert len(data["shots"]) == len(bank.shots) == 6 and {c["name"] for c in data["classes"]} == set(bank.class_names)
    assert bank.info["calibration"] == data["calibration"] and data["calibration"]["method"] == "f1"
    assert MemoryBank.load(bank_path).fingerprint == bank.fingerprint, "calibrating changes no prediction input"

    # random weights rarely overlap a labelled instance, so the threshold to use is set here: the median score
    gt = coco128 / "annotations" / "instances_val2017.json"
    plain = [
        "segment",
        "--images",
        str(gt),
        "--max-images",
        "3",
        "--bank",
        str(bank_path),
        "-o",
        str(tmp_path / "a.json"),
    ]
    assert main(plain + SMOKE) == 0
    people = sorted(r["score"] for r in json.loads((tmp_path / "a.json").read_text()) if r["category_id"] == 1)
    median = people[len(people) // 2]
    bank.info["calibration"] = {**bank.info["calibration"], "classes": {"person": {"threshold": median}}}  # stamped
    bank.save(calibrated)
    seg = [
        "segment",
        "--images",
        str(gt),
        "--max-images",
        "3",
        "--thresholds",
        "calibrated",
        "-o",
        str(tmp_path / "p.json"),
    ]
    assert main(seg + ["--bank", str(calibrated)] + SMOKE) == 0
    kept = [r["score"] for r in json.loads((tmp_path / "p.json").read_text()) if r["category_id"] == 1]
    assert kept and min(kept) >= median - 1e-5 and len(kept) < len(people)
    # --class-thresholds: the same threshold given by hand keeps the same people; over the calibrated ones, it wins
    given = ["--class-thresholds", json.dumps({"person": median})]
    assert main(plain[:-1] + [str(tmp_path / "g.json")] + given + SMOKE) == 0
    by_hand = [r["score"] for r in json.loads((tmp_path / "g.json").read_text()) if r["category_id"] == 1]
    assert by_hand == kept
    assert main(seg + ["--bank", str(calibrated), "--class-thresholds", '{"person": 0}'] + SMOKE) == 0
    assert sorted(r["score"] for r in json.loads((tmp_path / "p.json").read_text()) if r["category_id"] == 1) == people
    capsys.readouterr()
    assert main(seg + ["--bank", str(bank_path)] + SMOKE) == 2
    assert "no calibrated thresholds" in capsys.readouterr().err


def _export(data: dict, image_ids: list[int], category_ids: dict[str, int]) -> dict:
    """A references file as annotation tools export one (CVAT, Label Studio): only these images and classes, the
    images and annotations numbered from 1, the categories numbered as ``category_ids`` (name -> id) says."""
    names = {c["id"]: c["name"] for c in data["categories"]}
    chosen = [img for img in data["images"] if img["id"] in image_ids]
    new_id = {img["id"]: k for k, img in enumerate(chosen, 1)}
    anns = [
        a
        for a in data["annotations"]
        if a["image_id"] in new_id and names[a["category_id"]] in category_ids and not a.get("iscrowd")
    ]
    return {
        "images": [{**img, "id": new_id[img["id"]]} for img in chosen],
        "annotations": [
            {**a, "id": k, "image_id": new_id[a["image_id"]], "category_id": category_ids[names[a["category_id"]]]}
            for k, a in enumerate(anns, 1)
        ],
        "categories": [{"id": i, "name": name} for name, i in category_ids.items()],
    }


@pytest.fixture
def two_exports(coco128, tmp_path) -> tuple[Path, Path]:
    """Two references files of other images, both numbered from 1: a person and a dog each; the second numbers
    person 18 and dog 1 (the first: 1 and 18)."""
    data = json.loads((coco128 / "annotations" / "instances_train2017.json").read_text())
    first, second = tmp_path / "refs1.json", tmp_path / "refs2.json"
    first.write_text(json.dumps(_export(data, [36, 42], {"person": 1, "dog": 18})))
    second.write_text(json.dumps(_export(data, [322, 394], {"person": 18, "dog": 1})))
    return first, second


def test_bank_add_of_a_second_file_numbered_from_1_adds_all_its_shots(coco128, two_exports, tmp_path, capsys):
    """Shots are (file, image id, annotation id): a second export numbered from 1 is all new, its classes join the
    bank's of the same name (said), and adding either file again adds nothing."""
    from ntt.io.atomic import file_sha256

    first, second = two_exports
    images = ["--images", str(coco128 / "images" / "train2017")]
    bank = tmp_path / "bank.safetensors"
    assert main(["bank", "build", str(first), "-o", str(bank)] + images + SMOKE) == 0
    capsys.readouterr()
    assert main(["bank", "add", str(bank), str(second)] + images + SMOKE) == 0
    out = capsys.readouterr().out
    assert f"class 'person' is id 18 in {second} and id 1 in the bank: added to the bank's 'person'" in out
    assert f"class 'dog' is id 1 in {second} and id 18 in the bank: added to the bank's 'dog'" in out
    assert "2 shots added, 2 classes, 4 shots (0 negative)" in out
    merged = MemoryBank.load(bank)
    assert merged.classes == [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]
    assert merged.shots_per_class() == {"person": 2, "dog": 2}
    by_file = {
        file_sha256(first): "000000000036.jpg 000000000042.jpg",
        file_sha256(second): "000000000322.jpg 000000000394.jpg",
    }
    for shot in merged.shots:
        assert Path(shot["image_path"]).name in by_file[shot["source"]].split()
        assert shot["class_id"] == (
            1 if Path(shot["image_path"]).name in ("000000000036.jpg", "000000000322.jpg") else 18
        )
    for again in (first, second):
        assert main(["bank", "add", str(bank), str(again)] + images + SMOKE) == 0
        assert "0 shots added, 2 classes, 4 shots" in capsys.readouterr().out
    # its own two images, not four; `bank report`: the old name of `bank grade`, kept one release
    assert main(["bank", "report", str(bank), str(second)] + images + SMOKE) == 0
    out, err = capsys.readouterr()
    assert "graded 2 reference image(s)" in out
    assert err.splitlines()[0] == "`ntt bank report` is deprecated: use `ntt bank grade`", err
    assert err.count("deprecated") == 1


def test_labelled_references_take_only_the_images_of_that_file(two_exports, tmp_path):
    """`bank grade refs2.json` grades the images whose shots came from refs2.json (not refs1.json's images of the
    same ids), with refs2's categories as the bank's classes of the same name; a shot without a source (an older
    bank) names its image by id alone."""
    from ntt.cli.pipeline import labelled_references
    from ntt.io.atomic import file_sha256

    first, second = two_exports
    one, two = file_sha256(first), file_sha256(second)
    shots = [
        {"image_id": 1, "annotation_id": 1, "class_id": 1, "source": one},
        {"image_id": 2, "annotation_id": 2, "class_id": 18, "source": one},
        {"image_id": 2, "annotation_id": 2, "class_id": 18, "source": two},
    ]
    encoder = {"name": "dinov2_vits14", "image_size": 224, "weights": "random:seed=0", "fingerprint": "f", "dim": 3}
    classes = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]
    bank = MemoryBank(classes, np.eye(3, dtype=np.float32), np.array([1, 18, 18]), shots, encoder)
    images = labelled_references(bank, second, tmp_path)
    assert [(img.image_id, Path(img.source).name, img.origin) for img in images] == [(2, "000000000394.jpg", two)]
    assert images[0].class_ids == [18], "refs2's dog (id 1 there) is the bank's dog"
    assert [img.image_id for img in labelled_references(bank, first, tmp_path)] == [1, 2]
    legacy = MemoryBank(
        classes, np.eye(3, dtype=np.float32)[:1], np.array([1]), [{"image_id": 1, "annotation_id": 1}], encoder
    )
    assert [img.image_id for img in labelled_references(legacy, second, tmp_path)] == [1]
    other = MemoryBank(
        classes, np.eye(3, dtype=np.float32)[:1], np.array([1]), [{**shots[0], "source": "0" * 64}], encoder
    )
    with pytest.raises(ValueError, match="none of the bank's reference images came from this file"):
        labelled_references(other, second, tmp_path)
