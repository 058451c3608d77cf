"""COCO edges: categories, mask decoding, results export, evaluation (shot sampling: test_sampling.py)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from ntt.bank.encoder import InvalidReferenceError
from ntt.io.coco import (
    annotation_mask,
    instances_to_results,
    load_json,
    select_categories,
    targets_from_dir,
)
from ntt.io.evaluation import METRICS, evaluate_results, format_metrics
from ntt.types import Instances

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
        # one odd file name must not renumber the others: it gets the next id after the largest
        (["10.jpg", "a.jpg", "4.jpg"], [(10, "10.jpg"), (4, "4.jpg"), (11, "a.jpg")]),
        (["1.jpg", "01.png"], [(1, "01.png"), (2, "1.jpg")]),  # a number taken twice: the second one gets a new id
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
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}]}))
    data = load_json(path, kind="targets")
    assert data["images"] == [{"id": 1, "file_name": "a.jpg"}]
    assert data["annotations"] == [] and data["categories"] == []


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
    from ntt.cli.pipeline import JsonListWriter

    path = tmp_path / "out.json"
    with JsonListWriter(path) as writer:
        for item in items:
            writer.write(item)
    assert json.loads(path.read_text()) == items
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_json_list_writer_leaves_nothing_when_interrupted(tmp_path):
    from ntt.cli.pipeline import JsonListWriter

    path = tmp_path / "out.json"
    path.write_text("[1]")
    with pytest.raises(RuntimeError):
        with JsonListWriter(path) as writer:
            writer.write(2)
            raise RuntimeError("killed")
    assert json.loads(path.read_text()) == [1], "the previous complete file is kept"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_evaluate_without_ground_truth_of_the_classes_warns_instead_of_zero(caplog):
    gt, masks = _gt()
    with caplog.at_level(logging.WARNING):
        metrics = evaluate_results(gt, _perfect(gt, masks), cat_ids=[99])
    assert metrics == {t: dict.fromkeys(METRICS) for t in ("bbox", "segm")}
    assert "no ground truth" in caplog.text
    assert "n/a" in format_metrics(metrics)


def test_evaluate_leaves_out_images_the_ground_truth_lacks(caplog):
    gt, masks = _gt()
    with caplog.at_level(logging.WARNING):
        metrics = evaluate_results(gt, _perfect(gt, masks), img_ids=[1, 2, 777])
    assert metrics["segm"]["AP"] == pytest.approx(1.0)
    assert "1 segmented image(s) are not in the ground truth" in caplog.text


def test_evaluate_loads_the_results_once(monkeypatch):
    # Loading results is the costly part at COCO scale: one loadRes for both IoU types.
    from pycocotools.coco import COCO

    calls = []
    original = COCO.loadRes
    monkeypatch.setattr(COCO, "loadRes", lambda self, res: calls.append(1) or original(self, res))
    gt, masks = _gt()
    evaluate_results(gt, _perfect(gt, masks))
    assert len(calls) == 1


def test_repeated_annotation_ids_in_ground_truth_are_renumbered(tmp_path, caplog):
    # COCO128's val file repeats some annotation ids across images; pycocotools indexes annotations by id,
    # so without renumbering one image's cat is silently replaced by another's and perfect results lose AP.
    gt, masks = _gt()
    gt["annotations"][2]["id"] = gt["annotations"][0]["id"]  # image 2's cat reuses image 1's id
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    with caplog.at_level(logging.WARNING):
        loaded = load_json(path, kind="ground truth")
    assert "gt.json: 1 annotation id repeats an earlier one, given new ids" in caplog.text
    assert "annotations[2] id 1 -> 5" in caplog.text
    assert len({a["id"] for a in loaded["annotations"]}) == 4
    assert evaluate_results(loaded, _perfect(gt, masks))["segm"]["AP"] == pytest.approx(1.0)
    # references are treated the same way (their shots keep the written id: test_coco_hostile.py)
    assert [a["id"] for a in load_json(path, kind="references")["annotations"]] == [1, 2, 5, 4]
