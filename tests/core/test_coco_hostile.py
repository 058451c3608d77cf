"""Hostile COCO files (``ntt.io.coco_check``): every value that would overflow int64, make pycocotools read past an
RLE or crash on a polygon, or stop the evaluation with a traceback is one ``CocoFormatError`` naming the entry;
repeated annotation ids are renumbered inside ntt while shots keep the id as written."""

from __future__ import annotations

import copy
import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from ntt.bank.encoder import InvalidReferenceError
from ntt.io.coco import annotation_mask, load_json, load_results, references_from_coco
from ntt.io.coco_check import MAX_ID, CocoFormatError, read_json
from ntt.io.rle import compressed_rle_totals

H, W = 6, 8
MASK = np.zeros((H, W), np.uint8)
MASK[1:4, 2:6] = 1  # 12 pixels


def _compressed(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _runs(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts (column-major, starting with a run of zeros)."""
    flat = mask.ravel(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate(([0], change, [flat.size]))).tolist()
    return [0, *runs] if flat[0] else runs


def _coco() -> dict:
    """Two 6x8 images, two categories, one annotation of each kind of segmentation."""
    box = [2, 1, 4, 3]
    anns = [
        {"id": 7, "image_id": 1, "category_id": 1, "bbox": box, "segmentation": [[2, 1, 6, 1, 6, 4, 2, 4]]},
        {
            "id": 8,
            "image_id": 1,
            "category_id": 2,
            "bbox": box,
            "segmentation": {"size": [H, W], "counts": _runs(MASK)},
        },
        {"id": 9, "image_id": 2, "category_id": 1, "bbox": box, "segmentation": _compressed(MASK)},
    ]
    for ann in anns:
        ann.update(area=12, iscrowd=0)
    return {
        "images": [{"id": i, "file_name": f"{i}.jpg", "height": H, "width": W} for i in (1, 2)],
        "annotations": anns,
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }


def _write(tmp_path: Path, data, name: str = "refs.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def _refused(tmp_path, data, *needles, kind="references"):
    path = _write(tmp_path, data)
    with pytest.raises(CocoFormatError) as err:
        load_json(path, kind=kind)
    message = str(err.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message, message
    return message


def _edited(fn) -> dict:
    data = _coco()
    fn(data)
    return data


def test_the_base_file_is_valid(tmp_path):
    for kind in ("references", "ground truth", "targets"):
        load_json(_write(tmp_path, _coco()), kind=kind)


# ---- ids must fit int64 ----------------------------------------------------------------------------

ID_FIELDS = {
    "image id": (lambda d, v: d["images"][1].update(id=v), "images[1]", "id must be"),
    "annotation id": (lambda d, v: d["annotations"][1].update(id=v), "annotations[1]", "id must be"),
    "image_id": (lambda d, v: d["annotations"][1].update(image_id=v), "annotations[1]", "image_id must be"),
    "category_id": (lambda d, v: d["annotations"][1].update(category_id=v), "annotations[1]", "category_id must be"),
    "category id": (lambda d, v: d["categories"][1].update(id=v), "categories[1]", "id must be"),
}


@pytest.mark.parametrize("value", [10**30, 2**63, -1])
@pytest.mark.parametrize("field", sorted(ID_FIELDS))
def test_ids_outside_int64_are_refused_naming_the_field(field, value, tmp_path):
    edit, entry, needle = ID_FIELDS[field]
    message = _refused(tmp_path, _edited(lambda d: edit(d, value)), entry, needle, "2**63 - 1", str(value))
    assert "\n" not in message


def test_ids_at_the_int64_limits_are_accepted(tmp_path):
    def edit(data):
        data["images"][1]["id"] = MAX_ID
        data["annotations"][2].update(id=MAX_ID, image_id=MAX_ID, category_id=0)
        data["categories"][0]["id"] = 0
        data["annotations"][0]["category_id"] = 0

    loaded = load_json(_write(tmp_path, _edited(edit)), kind="ground truth")
    assert loaded["annotations"][2]["id"] == MAX_ID


@pytest.mark.parametrize("field", ["image_id", "category_id"])
def test_result_ids_outside_int64_are_refused(field, tmp_path):
    result = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5, field: 10**30}
    with pytest.raises(CocoFormatError, match=rf"results\[0\]: {field} must be between 0 and 2\*\*63 - 1"):
        load_results(_write(tmp_path, [result], "preds.json"))


# ---- RLEs must add up to their size ----------------------------------------------------------------


@pytest.mark.parametrize(
    "counts, needle",
    [
        ([2, 3, 7], "add up to 12 pixels, not 6 x 8 = 48"),
        ([2, 3, 7 + 36 + 1000], "add up to 1048 pixels, not 6 x 8 = 48"),
        ([2, -3, 49], "counts must be >= 0, got -3"),
        ([2, 10**30], "add up to 1000000000000000000000000000002 pixels"),
        ([2, True, 45], "counts must be integers, got True"),
        ([2, 3.0, 43], "counts must be integers, got 3.0"),
        ([], "add up to 0 pixels"),
    ],
)
def test_uncompressed_rle_must_add_up_to_its_size(counts, needle, tmp_path):
    data = _edited(lambda d: d["annotations"][1]["segmentation"].update(counts=counts))
    for kind in ("references", "ground truth"):
        _refused(tmp_path, data, "annotations[1] (id 8)", needle, kind=kind)


@pytest.mark.parametrize("shape", [(3, 4), (7, 8), (60, 80)])
def test_compressed_rle_must_add_up_to_its_size(shape, tmp_path):
    # A real pycocotools string of another mask size: it decodes, to the wrong number of pixels.
    counts = _compressed(np.ones(shape, np.uint8))["counts"]
    data = _edited(lambda d: d["annotations"][2]["segmentation"].update(counts=counts))
    _refused(tmp_path, data, "annotations[2] (id 9)", f"add up to {shape[0] * shape[1]} pixels, not 6 x 8 = 48")


@pytest.mark.parametrize(
    "counts, needle",
    [
        ("", "it is empty"),
        ("0\\", "it ends in the middle of a number"),  # 0x2C: "more characters follow", then nothing
        ("0 4", "a character outside '0'..'o'"),
        ("0p", "a character outside '0'..'o'"),
        ("0\u00e9", "a character outside '0'..'o'"),
        ("0\x00", "a character outside '0'..'o'"),
        ("PPPPPP0", "a number of more than 6 characters"),
    ],
)
def test_compressed_rle_that_is_not_the_coco_encoding_is_refused(counts, needle, tmp_path):
    data = _edited(lambda d: d["annotations"][2]["segmentation"].update(counts=counts))
    _refused(tmp_path, data, "annotations[2] (id 9)", "not a COCO compressed RLE", needle)


def test_rle_size_must_be_its_image_size(tmp_path):
    seg = _compressed(np.ones((W, H), np.uint8))  # transposed: the same number of pixels
    data = _edited(lambda d: d["annotations"][2].update(segmentation=seg))
    _refused(
        tmp_path, data, "annotations[2] (id 9)", "segmentation size [8, 6] is not its image's [height, width] [6, 8]"
    )


@pytest.mark.parametrize("size", [[0, 8], [10**30, 1], [1_000_000, 1_000_000], [6, "8"]])
def test_rle_size_that_is_no_image_size_is_refused(size, tmp_path):
    data = _edited(lambda d: d["annotations"][2]["segmentation"].update(size=size))
    _refused(tmp_path, data, "annotations[2] (id 9)", "segmentation")


def test_results_rles_are_checked_too(tmp_path):
    good = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5, "segmentation": _compressed(MASK)}
    short = {**good, "segmentation": {"size": [H, W], "counts": _compressed(np.ones((3, 4), np.uint8))["counts"]}}
    assert len(load_results(_write(tmp_path, [good] * 3, "preds.json"))) == 3
    with pytest.raises(CocoFormatError, match=r"results\[2\]: segmentation RLE counts add up to 12 pixels, not 6 x 8"):
        load_results(_write(tmp_path, [good, good, short, good], "preds.json"))


def test_rle_totals_of_real_masks_in_one_batch():
    # Many strings decoded together: a run never leaks into the next string, every total is height x width.
    rng = np.random.default_rng(0)
    strings, pixels = [], []
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(1, 70, size=2))
        mask = rng.random((h, w)) < rng.random()
        if rng.random() < 0.3:  # long runs: numbers of several characters
            mask = np.zeros((h, w), bool)
            mask[: rng.integers(0, h + 1), : rng.integers(0, w + 1)] = True
        strings.append(_compressed(mask)["counts"])
        pixels.append(h * w)
    strings += [_compressed(np.zeros((4000, 5000), np.uint8))["counts"]]  # one run of 20 M: 5 characters
    pixels += [20_000_000]
    totals, problems = compressed_rle_totals(strings)
    assert list(problems) == [""] * len(strings)
    assert totals.tolist() == pixels


def _reference_runs(counts: str) -> list[int]:
    """maskApi.c rleFrString, one character at a time."""
    runs: list[int] = []
    p = 0
    while p < len(counts):
        x, k, more = 0, 0, True
        while more:
            c = ord(counts[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x -= 1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x % 2**32)
    return runs


def test_rle_totals_match_pycocotools_on_random_strings():
    # Random well-formed strings (signed numbers, differences to two runs before, uint32 wrapping): the batch
    # decoder agrees with a one-character-at-a-time decoder, which agrees with pycocotools' own area (odd runs).
    rnd = random.Random(1)

    def number(length):
        bits = [rnd.randint(0, 31) | 0x20 for _ in range(length - 1)] + [rnd.randint(0, 31)]
        return "".join(chr(48 + b) for b in bits)

    strings = ["".join(number(rnd.randint(1, 6)) for _ in range(rnd.randint(1, 9))) for _ in range(2000)]
    totals, _ = compressed_rle_totals(strings)
    for counts, total in zip(strings, totals):
        runs = _reference_runs(counts)
        assert sum(runs) == total, counts
        area = mask_utils.area({"size": [1, 1], "counts": counts.encode()})
        assert int(area) == sum(runs[1::2]) % 2**32, counts


# ---- polygons and other values ---------------------------------------------------------------------


@pytest.mark.parametrize("far", [1e30, 1e7, -100.0, 17.0])
def test_polygon_far_outside_its_image_is_refused(far, tmp_path):
    # 1e30 crashed the process in pycocotools (rounded to a C int); 1e7 drew millions of edge pixels.
    data = _edited(lambda d: d["annotations"][0].update(segmentation=[[2, 1, far, 1, 6, 4]]))
    _refused(tmp_path, data, "annotations[0] (id 7)", "far outside the image", "x must be in [-8, 16]")


def test_polygon_a_little_outside_its_image_is_accepted(tmp_path):
    data = _edited(lambda d: d["annotations"][0].update(segmentation=[[-0.5, -0.5, 8.5, -0.5, 8.5, 6.5]]))
    load_json(_write(tmp_path, data), kind="ground truth")


HOSTILE = {
    "polygon-nan": (lambda d: d["annotations"][0].update(segmentation=[[2, 1, float("nan"), 1, 6, 4]]), "polygons"),
    "polygon-infinity": (lambda d: d["annotations"][0].update(segmentation=[[2, 1, 1e400, 1, 6, 4]]), "polygons"),
    "polygon-giant-int": (lambda d: d["annotations"][0].update(segmentation=[[2, 1, 10**400, 1, 6, 4]]), "polygons"),
    "polygon-nested": (lambda d: d["annotations"][0].update(segmentation=[[[2, 1], [6, 1], [6, 4]]]), "polygons"),
    "polygon-strings": (
        lambda d: d["annotations"][0].update(segmentation=[["2", "1", "6", "1", "6", "4"]]),
        "polygons",
    ),
    "polygon-bools": (lambda d: d["annotations"][0].update(segmentation=[[True, 1, 6, 1, 6, 4]]), "polygons"),
    "segmentation-number": (lambda d: d["annotations"][0].update(segmentation=3), "segmentation must be"),
    "iscrowd-string": (lambda d: d["annotations"][0].update(iscrowd="1"), "iscrowd must be 0 or 1, got '1'"),
    "bbox-strings": (lambda d: d["annotations"][0].update(bbox=["2", "1", "4", "3"]), "bbox must be"),
    "bbox-giant-int": (lambda d: d["annotations"][0].update(bbox=[10**400, 1, 4, 3]), "bbox must be"),
    "bool-category": (lambda d: d["annotations"][0].update(category_id=True), "category_id must be an integer"),
    "bool-width": (lambda d: d["images"][0].update(width=True), "width must be an integer"),
    "file-name-nul": (lambda d: d["images"][0].update(file_name="a\x00.jpg"), "contains a NUL character"),
    "too-many-pixels": (lambda d: d["images"][0].update(width=900_000, height=900_000), "more than 500,000,000"),
    "id-megabyte-string": (lambda d: d["annotations"][0].update(id="x" * 1_000_000), "id must be an integer"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_values_are_one_short_error(case, tmp_path):
    edit, needle = HOSTILE[case]
    message = _refused(tmp_path, _edited(edit), needle)
    assert len(message) < 500 and "\n" not in message


@pytest.mark.parametrize("name", ["/etc/hostname", "../../elsewhere/1.jpg", "sub/dir/1.jpg"])
def test_file_names_outside_the_image_folder_are_allowed(name, tmp_path):
    # The user's own file: it may point anywhere; a missing image is reported when it is read.
    data = _edited(lambda d: d["images"][0].update(file_name=name))
    assert load_json(_write(tmp_path, data))["images"][0]["file_name"] == name


@pytest.mark.parametrize("score", ["0.9", None, float("nan"), 10**400, True])
def test_result_score_must_be_a_finite_number(score, tmp_path):
    result = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": score}
    with pytest.raises(CocoFormatError, match=r"results\[0\]: score must be a finite number"):
        load_results(_write(tmp_path, [result], "preds.json"))


def test_integer_beyond_python_limit_is_one_clear_error(tmp_path):
    path = tmp_path / "refs.json"
    path.write_text('{"images": [{"id": ' + "9" * 5000 + "}]}")
    with pytest.raises(CocoFormatError, match="not valid JSON"):
        read_json(path)


# ---- ground truth pycocotools can evaluate ---------------------------------------------------------


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda a: a.pop("segmentation"), "ground truth needs a segmentation"),
        (lambda a: a.update(segmentation=[]), "ground truth needs a segmentation"),
        (lambda a: a.update(segmentation=[[2, 1, 6, 1]]), "polygon 0 has 4 numbers"),
        (lambda a: a.update(segmentation=[[], [2, 1, 6, 1, 6, 4]]), "polygon 0 has 0 numbers"),
    ],
)
def test_ground_truth_needs_a_segmentation_pycocotools_can_evaluate(edit, needle, tmp_path):
    data = _edited(lambda d: edit(d["annotations"][0]))
    _refused(tmp_path, data, "annotations[0] (id 7)", needle, kind="ground truth")
    load_json(_write(tmp_path, data), kind="references")  # a box-only reference is fine


def test_missing_area_in_ground_truth_is_the_segmentation_area(tmp_path, caplog):
    data = _coco()
    for ann in data["annotations"]:
        ann.pop("area")
    with caplog.at_level(logging.WARNING):
        loaded = load_json(_write(tmp_path, data), kind="ground truth")
    assert [a["area"] for a in loaded["annotations"]] == [12, 12, 12]
    assert "3 annotation(s) have no 'area'" in caplog.text


@pytest.mark.parametrize("area", ["12", -1, float("nan"), None])
def test_bad_area_in_ground_truth_is_refused(area, tmp_path):
    data = _edited(lambda d: d["annotations"][1].update(area=area))
    _refused(tmp_path, data, "annotations[1] (id 8)", "area must be a number >= 0", kind="ground truth")


def test_annotation_mask_refuses_what_pycocotools_would_misread():
    image = {"id": 1, "height": H, "width": W}
    with pytest.raises(InvalidReferenceError, match="segmentation size"):
        annotation_mask({"id": 5, "segmentation": _compressed(np.ones((3, 4), np.uint8))}, image)
    with pytest.raises(InvalidReferenceError, match="annotation 6: bad segmentation"):
        annotation_mask({"id": 6, "segmentation": {"size": [H, W], "counts": [2, -3, 49]}}, image)


# ---- repeated annotation ids -----------------------------------------------------------------------


def _repeating(data: dict, *indices: int) -> dict:
    """The annotations at ``indices`` take annotation 0's id."""
    for i in indices:
        data["annotations"][i]["id"] = data["annotations"][0]["id"]
    return data


def test_repeated_ids_in_references_keep_their_written_id_in_shots(tmp_path, caplog):
    data = _repeating(_coco(), 2)
    with caplog.at_level(logging.WARNING):
        loaded = load_json(_write(tmp_path, data), kind="references")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].endswith(
        "refs.json: 1 annotation id repeats an earlier one, given new ids (shots keep the "
        "written id): annotations[2] id 7 -> 9"
    )
    assert [a["id"] for a in loaded["annotations"]] == [7, 8, 9]  # unique inside ntt: pycocotools indexes by id
    refs = references_from_coco(loaded, tmp_path, loaded["annotations"], box_only=True)
    assert [r.annotation_id for r in refs] == [7, 8, 7]  # as the file wrote them
    assert [r.image_id for r in refs] == [1, 1, 2]


def test_repeated_ids_give_the_same_warning_for_ground_truth_and_references(tmp_path, caplog):
    texts = {}
    for kind in ("references", "ground truth"):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            load_json(_write(tmp_path, _repeating(_coco(), 1, 2)), kind=kind)
        texts[kind] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert texts["references"] == [texts["ground truth"][0].replace("new ids:", "new ids (shots keep the written id):")]
    assert len(texts["ground truth"]) == 1
    assert "2 annotation ids repeat an earlier one" in texts["references"][0]
    assert "annotations[1] id 7 -> 8, annotations[2] id 7 -> 9" in texts["references"][0]


def test_many_repeated_ids_are_summed_up(tmp_path, caplog):
    data = _coco()
    data["annotations"] += [{**copy.deepcopy(data["annotations"][0]), "id": 7} for _ in range(8)]
    with caplog.at_level(logging.WARNING):
        loaded = load_json(_write(tmp_path, data))
    assert "8 annotation ids repeat" in caplog.text and "(... and 3 more)" in caplog.text
    assert len({a["id"] for a in loaded["annotations"]}) == 11


def test_renumbering_never_leaves_int64(tmp_path):
    data = _coco()
    data["annotations"][0]["id"] = data["annotations"][1]["id"] = MAX_ID
    loaded = load_json(_write(tmp_path, data))
    ids = [a["id"] for a in loaded["annotations"]]
    assert len(set(ids)) == 3 and max(ids) == MAX_ID and min(ids) >= 0


def test_written_id_key_in_a_file_is_not_trusted(tmp_path):
    data = _coco()
    data["annotations"][0]["ntt_written_id"] = {"not": "an id"}
    loaded = load_json(_write(tmp_path, data))
    refs = references_from_coco(loaded, tmp_path, loaded["annotations"], box_only=True)
    assert [r.annotation_id for r in refs] == [7, 8, 9]
