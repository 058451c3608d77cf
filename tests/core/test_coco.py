"""COCO edges: shot sampling, categories, mask decoding, results export, evaluation."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from ntt.coco import (
    annotation_mask,
    instances_to_results,
    is_valid_shot,
    load_json,
    sample_shots,
    select_categories,
    targets_from_dir,
)
from ntt.evaluation import METRICS, evaluate_results
from ntt.references import InvalidReferenceError
from ntt.types import Instances

# ---- is_valid_shot ---------------------------------------------------------------------------------

IMAGE = {"id": 1, "width": 200, "height": 100}


@pytest.mark.parametrize(
    "bbox, iscrowd, valid",
    [
        pytest.param([10, 10, 32, 32], 0, True, id="smallest-valid-at-top-left-limits"),
        pytest.param([50, 30, 60, 40], 0, True, id="valid"),
        pytest.param([158, 58, 32, 32], 0, True, id="right-bottom-limits"),  # 190 = 200 - 10, 90 = 100 - 10
        pytest.param([50, 30, 60, 40], 1, False, id="crowd"),
        pytest.param([50, 30, 31.9, 40], 0, False, id="narrow"),
        pytest.param([50, 30, 60, 31], 0, False, id="short"),
        pytest.param([9.9, 30, 60, 40], 0, False, id="left-border"),
        pytest.param([50, 9, 60, 40], 0, False, id="top-border"),
        pytest.param([158.1, 30, 32, 40], 0, False, id="right-border"),  # x + w = 190.1
        pytest.param([50, 58.5, 60, 32], 0, False, id="bottom-border"),  # y + h = 90.5
        pytest.param([0, 0, 200, 100], 0, False, id="whole-image"),
    ],
)
def test_is_valid_shot(bbox, iscrowd, valid):
    assert bool(is_valid_shot({"bbox": bbox, "iscrowd": iscrowd}, IMAGE)) is valid


def test_is_valid_shot_without_iscrowd_key():
    assert is_valid_shot({"bbox": [50, 30, 60, 40]}, IMAGE)


# ---- sample_shots ----------------------------------------------------------------------------------

GOOD, BAD = [100, 100, 64, 64], [[100, 100, 20, 64], [2, 100, 64, 64], [100, 100, 64, 64]]


def _coco():
    """40 images of 640x480. cat (1): one valid annotation per image, two in images 0-9, plus invalid ones;
    dog (2): 2 valid instances in 2 images; bird (3): only invalid instances; horse (4): no annotations."""
    images = [{"id": i, "width": 640, "height": 480, "file_name": f"{i:06d}.jpg"} for i in range(40)]
    anns = []

    def add(image_id, cat, bbox, crowd=0):
        anns.append(
            {
                "id": len(anns) + 1,
                "image_id": image_id,
                "category_id": cat,
                "bbox": bbox,
                "iscrowd": crowd,
                "area": bbox[2] * bbox[3],
            }
        )

    for i in range(40):
        add(i, 1, GOOD)
        if i < 10:
            add(i, 1, [300, 200, 50, 50])  # a second valid cat in the same image
        add(i, 1, BAD[i % 2])  # too narrow / at the border
        add(i, 3, BAD[i % 2])
    add(5, 1, GOOD, crowd=1)
    add(7, 3, GOOD, crowd=1)
    add(3, 2, GOOD)
    add(4, 2, GOOD)
    add(4, 2, [300, 200, 50, 50])  # same image as the previous dog
    add(6, 2, BAD[0])
    cats = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "bird"}, {"id": 4, "name": "horse"}]
    return {"images": images, "annotations": anns, "categories": cats}


def _valid(data, ann):
    return is_valid_shot(ann, {im["id"]: im for im in data["images"]}[ann["image_id"]])


def test_sample_shots_deterministic_and_seed_dependent():
    data = _coco()
    a = [x["id"] for x in sample_shots(data, [1], 5, seed=33, explicit=True)]
    b = [x["id"] for x in sample_shots(data, [1], 5, seed=33, explicit=True)]
    c = [x["id"] for x in sample_shots(data, [1], 5, seed=34, explicit=True)]
    assert a == b
    assert a != c  # 50 valid cats: two seeds giving the same 5 in the same order is ~1e-8


@pytest.mark.parametrize("seed", range(12))
def test_sample_shots_valid_one_per_image_stops_at_n(seed):
    data = _coco()
    picked = sample_shots(data, [1], 8, seed=seed, explicit=True)
    assert len(picked) == 8
    assert all(a["category_id"] == 1 for a in picked)
    assert all(_valid(data, a) for a in picked)
    assert len({a["image_id"] for a in picked}) == 8


def test_sample_shots_one_per_image_even_when_asking_for_everything():
    data = _coco()
    picked = sample_shots(data, [1], 1000, seed=0, explicit=True)
    # 50 valid cats in 40 images: at most one per image
    assert len(picked) == 40
    assert sorted(a["image_id"] for a in picked) == list(range(40))


def test_sample_shots_several_classes_in_order():
    data = _coco()
    picked = sample_shots(data, [2, 1], 2, seed=1, explicit=True)
    assert [a["category_id"] for a in picked] == [2, 2, 1, 1]
    dogs = picked[:2]
    assert {a["image_id"] for a in dogs} == {3, 4}


def test_sample_shots_warns_when_short(caplog):
    data = _coco()
    with caplog.at_level(logging.WARNING):
        picked = sample_shots(data, [2], 5, seed=0, explicit=True)
    # dog: 3 valid annotations but two share image 4
    assert len(picked) == 2
    assert "dog (2)" in caplog.text and "fewer than 5" in caplog.text


@pytest.mark.parametrize("cat, name", [(3, "bird"), (4, "horse")])
def test_sample_shots_explicit_class_without_valid_instance_raises(cat, name):
    with pytest.raises(InvalidReferenceError, match=name):
        sample_shots(_coco(), [1, cat], 3, seed=0, explicit=True)


def test_sample_shots_implicit_class_without_valid_instance_is_dropped(caplog):
    with caplog.at_level(logging.WARNING):
        picked = sample_shots(_coco(), [1, 3], 3, seed=0, explicit=False)
    assert [a["category_id"] for a in picked] == [1, 1, 1]
    assert "bird" in caplog.text


# ---- select_categories -----------------------------------------------------------------------------

CATS = {
    "images": [],
    "categories": [{"id": 1, "name": "cat"}, {"id": 3, "name": "potted plant"}, {"id": 7, "name": "Dog"}],
    "annotations": [{"category_id": 7}, {"category_id": 1}, {"category_id": 7}],
}


@pytest.mark.parametrize(
    "classes, expected",
    [
        (None, [1, 7]),  # every category that has annotations
        ([], [1, 7]),
        (["cat"], [1]),
        (["CAT"], [1]),
        ([" Potted Plant "], [3]),
        (["dog"], [7]),
        (["3"], [3]),
        ([7], [7]),
        (["dog", "cat", "1"], [1, 7]),
    ],
)
def test_select_categories(classes, expected):
    assert select_categories(CATS, classes) == expected


@pytest.mark.parametrize("classes, bad", [(["horse"], "horse"), (["cat", "99"], "99"), (["plant"], "plant")])
def test_select_categories_unknown(classes, bad):
    with pytest.raises(InvalidReferenceError, match=bad):
        select_categories(CATS, classes)


# ---- annotation_mask -------------------------------------------------------------------------------

TINY = {"id": 1, "width": 8, "height": 6}
# Uncompressed RLE is column-major: 2 zeros, 3 ones, 7 zeros on a 3x4 image -> flat indices 2, 3, 4 =
# (row 2, col 0), (row 0, col 1), (row 1, col 1).
RLE_IMAGE = {"id": 2, "width": 4, "height": 3}
RLE_MASK = np.zeros((3, 4), bool)
RLE_MASK[2, 0] = RLE_MASK[0, 1] = RLE_MASK[1, 1] = True


def _rect_rows_cols(h, w, rows, cols):
    m = np.zeros((h, w), bool)
    m[rows, cols] = True
    return m


def test_annotation_mask_polygon():
    # The rectangle (1, 1)-(5, 4) covers rows 1..3 and columns 1..4: 4 x 3 = 12 pixels.
    m = annotation_mask({"id": 1, "segmentation": [[1, 1, 5, 1, 5, 4, 1, 4]]}, TINY)
    assert m.dtype == bool and m.shape == (6, 8)
    np.testing.assert_array_equal(m, _rect_rows_cols(6, 8, slice(1, 4), slice(1, 5)))


def test_annotation_mask_several_polygons_are_merged_and_short_ones_skipped():
    seg = [[1, 1, 3, 1, 3, 3, 1, 3], [5, 2, 7, 2], [5, 2, 8, 2, 8, 6, 5, 6]]
    m = annotation_mask({"id": 2, "segmentation": seg}, TINY)
    assert m.sum() == 2 * 2 + 3 * 4
    np.testing.assert_array_equal(m[2:6, 5:8], np.ones((4, 3), bool))
    np.testing.assert_array_equal(m[1:3, 1:3], np.ones((2, 2), bool))


def test_annotation_mask_uncompressed_rle():
    seg = {"size": [3, 4], "counts": [2, 3, 7]}
    np.testing.assert_array_equal(annotation_mask({"id": 3, "segmentation": seg}, RLE_IMAGE), RLE_MASK)


@pytest.mark.parametrize("as_str", [False, True])
def test_annotation_mask_compressed_rle(as_str):
    rle = mask_utils.encode(np.asfortranarray(RLE_MASK.astype(np.uint8)))
    if as_str:  # as read from a JSON file
        rle = json.loads(json.dumps({"size": rle["size"], "counts": rle["counts"].decode("ascii")}))
    m = annotation_mask({"id": 4, "segmentation": rle}, RLE_IMAGE)
    assert m.dtype == bool
    np.testing.assert_array_equal(m, RLE_MASK)


@pytest.mark.parametrize("seg", [[[1, 1, 5, 1]], [[1, 1, 5, 1], [2, 2]], []])
def test_annotation_mask_degenerate_polygon(seg):
    with pytest.raises(InvalidReferenceError, match="4242"):
        annotation_mask({"id": 4242, "segmentation": seg}, TINY)


# ---- instances_to_results --------------------------------------------------------------------------


def _instances():
    h, w = 10, 12
    masks = np.zeros((3, h, w), bool)
    masks[0, 2:6, 3:9] = True  # rows 2..5, cols 3..8 -> xyxy (3, 2, 9, 6)
    masks[1, 0, 0] = True  # single pixel -> (0, 0, 1, 1)
    masks[2, :, 11] = True  # last column -> (11, 0, 12, 10)
    masks[2, 9, 5] = True  # -> (5, 0, 12, 10)
    inst = Instances.from_masks(
        masks, scores=np.array([0.9, 0.123456789, 0.05], np.float32), class_ids=np.array([18, 1, 64], np.int64)
    )
    np.testing.assert_array_equal(inst.boxes, [[3, 2, 9, 6], [0, 0, 1, 1], [5, 0, 12, 10]])
    return inst


@pytest.mark.parametrize(
    "box_inclusive, bboxes",
    [
        (False, [[3, 2, 6, 4], [0, 0, 1, 1], [5, 0, 7, 10]]),
        (True, [[3, 2, 5, 3], [0, 0, 0, 0], [5, 0, 6, 9]]),
    ],
)
def test_instances_to_results(box_inclusive, bboxes):
    inst = _instances()
    res = instances_to_results(42, inst, box_inclusive=box_inclusive)
    assert len(res) == 3
    json.dumps(res)  # serialisable as is
    assert [r["bbox"] for r in res] == bboxes
    assert [r["category_id"] for r in res] == [18, 1, 64]
    assert [r["image_id"] for r in res] == [42] * 3
    assert [r["score"] for r in res] == pytest.approx([0.9, 0.12346, 0.05], abs=1e-6)
    for r, mask in zip(res, inst.masks):
        assert r["segmentation"]["size"] == [10, 12]
        assert isinstance(r["segmentation"]["counts"], str)
        decoded = mask_utils.decode(r["segmentation"])
        np.testing.assert_array_equal(decoded.astype(bool), mask)


def test_instances_to_results_empty():
    assert instances_to_results(1, Instances.empty((5, 6))) == []


# ---- targets_from_dir / load_json ------------------------------------------------------------------


@pytest.mark.parametrize(
    "names, expected",
    [
        (["12.jpg", "3.png", "007.jpg", "notes.txt"], [(7, "007.jpg"), (12, "12.jpg"), (3, "3.png")]),
        (["10.jpg", "a.jpg"], [(1, "10.jpg"), (2, "a.jpg")]),  # not all numeric: 1..N in name order
        (["1.jpg", "01.png"], [(1, "01.png"), (2, "1.jpg")]),  # duplicate numeric ids: 1..N
        (["b.JPG", "a.webp"], [(1, "a.webp"), (2, "b.JPG")]),
        ([], []),
    ],
)
def test_targets_from_dir(tmp_path, names, expected):
    for name in names:
        (tmp_path / name).write_bytes(b"")
    out = targets_from_dir(tmp_path)
    assert [(i, p.name) for i, p in out] == expected
    assert all(p.parent == tmp_path for _, p in out)


def test_load_json_ok(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"images": [{"id": 1}]}))
    data = load_json(path)
    assert data["images"] == [{"id": 1}] and data["annotations"] == [] and data["categories"] == []


@pytest.mark.parametrize(
    "content, error",
    [
        (None, FileNotFoundError),
        ("{not json", ValueError),
        ("[1, 2, 3]", ValueError),
        ('{"annotations": []}', ValueError),
        ("", ValueError),
    ],
)
def test_load_json_errors(tmp_path, content, error):
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(error, match="bad.json"):
        load_json(path)


# ---- evaluate_results ------------------------------------------------------------------------------


def _gt():
    """Two 40x50 images; cat (1): 3 instances, dog (2): 1 instance, person (5): none."""
    h, w = 40, 50
    # (image id, category id, (y1, y2, x1, x2))
    specs = [(1, 1, (2, 12, 3, 20)), (1, 1, (20, 35, 25, 45)), (2, 1, (5, 30, 5, 40)), (2, 2, (10, 30, 0, 20))]
    anns, masks = [], []
    for k, (image_id, cat, (y1, y2, x1, x2)) in enumerate(specs):
        m = np.zeros((h, w), bool)
        m[y1:y2, x1:x2] = True
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        anns.append(
            {
                "id": k + 1,
                "image_id": image_id,
                "category_id": cat,
                "segmentation": rle,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": int(m.sum()),
                "iscrowd": 0,
            }
        )
        masks.append(m)
    gt = {
        "images": [{"id": i, "width": w, "height": h, "file_name": f"{i}.jpg"} for i in (1, 2)],
        "annotations": anns,
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 5, "name": "person"}],
    }
    return gt, masks


def _perfect(gt, masks, cat_map=None):
    out = []
    for ann, m in zip(gt["annotations"], masks):
        inst = Instances.from_masks(
            m[None], scores=np.ones(1), class_ids=[(cat_map or {}).get(ann["category_id"], ann["category_id"])]
        )
        out += instances_to_results(ann["image_id"], inst)
    return out


def test_evaluate_perfect_predictions():
    gt, masks = _gt()
    metrics = evaluate_results(gt, _perfect(gt, masks))
    assert set(metrics) == {"bbox", "segm"}
    for iou_type in ("bbox", "segm"):
        assert set(metrics[iou_type]) == set(METRICS)
        for name in ("AP", "AP50", "AP75", "APs"):
            assert metrics[iou_type][name] == pytest.approx(1.0), (iou_type, name)


def test_evaluate_wrong_category_gives_zero():
    gt, masks = _gt()
    metrics = evaluate_results(gt, _perfect(gt, masks, cat_map={1: 2, 2: 1}))
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type]["AP"] == 0.0
        assert metrics[iou_type]["AP50"] == 0.0


def test_evaluate_empty_results():
    gt, _ = _gt()
    assert evaluate_results(gt, []) == {t: {m: 0.0 for m in METRICS} for t in ("bbox", "segm")}


def test_evaluate_restricted_categories_and_images():
    gt, masks = _gt()
    cats_only = [r for r in _perfect(gt, masks) if r["category_id"] == 1]
    # dog has ground truth but no predictions: the mean over {cat, dog} is (1 + 0) / 2
    assert evaluate_results(gt, cats_only)["segm"]["AP"] == pytest.approx(0.5)
    # restricted to the cat class, the dogs are ignored
    metrics = evaluate_results(gt, cats_only, cat_ids=[1])
    assert metrics["bbox"]["AP"] == pytest.approx(1.0) and metrics["segm"]["AP"] == pytest.approx(1.0)
    # predictions of classes outside cat_ids are ignored, even wrong ones
    persons = [r for r in _perfect(gt, masks, cat_map={2: 5}) if r["category_id"] == 5]
    noisy = cats_only + persons
    assert evaluate_results(gt, noisy, cat_ids=[1])["segm"]["AP"] == pytest.approx(1.0)
    # image 1 holds only cats; restricted to it, the dog on image 2 does not count
    assert evaluate_results(gt, cats_only, img_ids=[1])["bbox"]["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize("items", [[], [{"a": 1}], [{"a": 1}, {"b": [2, 3]}, 4]])
def test_json_list_writer_streams_a_valid_list(tmp_path, items):
    from ntt.pipeline import JsonListWriter

    path = tmp_path / "out.json"
    with JsonListWriter(path) as writer:
        for item in items:
            writer.write(item)
    assert json.loads(path.read_text()) == items
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_json_list_writer_leaves_nothing_when_interrupted(tmp_path):
    from ntt.pipeline import JsonListWriter

    path = tmp_path / "out.json"
    path.write_text("[1]")
    with pytest.raises(RuntimeError):
        with JsonListWriter(path) as writer:
            writer.write(2)
            raise RuntimeError("killed")
    assert json.loads(path.read_text()) == [1], "the previous complete file is kept"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
