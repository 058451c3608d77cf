"""Correcting predictions with FiftyOne's own In-App Annotation (the sample modal's "Annotate" tab), in a real browser,
and what those edits leave in the stored labels (what ``nfo.promote_predictions`` reads).

Debian's ``chromium`` (headless) driven by Playwright, the App in a subprocess on 127.0.0.1 (``app_driver.py``). A
Detections field ``pred`` of three instance masks, with the attributes and the Detections-level ``ntt_predicted``
record that ``nfo.segment`` writes, gets three edits through the UI: (a) a brush stroke on one prediction's mask,
(b) another prediction deleted, (c) a new box drawn, classed ``dog`` and given a painted mask. The stored sample is
checked after each. Screenshots go to ``$NTT_TEST_ARTIFACTS/annotate/`` (default ``<repo>/test-artifacts``).

What FiftyOne 1.22.1's Annotate tab does (found with this test and an exploration of the same UI):

- A field is annotatable only once it has an active *label schema*: "Add schema" -> the field's "Setup" -> "Scan"
  (classes and attributes read from the data) -> "+ Add class" for a class not in the data yet -> Save. That stores
  ``dataset.label_schemas[field]`` and ``dataset.active_label_schemas``. Attributes not declared on the field's
  schema (dynamic ones such as ``predicted_label``, ``shot_cosine``) are not listed for editing, but are kept.
  With file-backed masks, Scan lists the ``mask_path`` values as a radio choice.
- Every gesture is saved at once, by itself (no save button): a JSON-patch PATCH of the sample
  (``/dataset/<id>/sample/<id>``, ``If-Match`` on its ``last_modified_at``, which each save advances; a sample
  changed meanwhile from Python makes the App's next save fail). Ops address detections by index
  (``/pred/detections/<i>/...``); nothing else of the field is rewritten.
- Painting (Brush, Add or Remove) keeps the label's id and every other attribute (``confidence``,
  ``predicted_label``, ``shot_cosine`` ...); ``ntt_predicted`` on the Detections is untouched. The mask is stored
  inline (``mask``, uint8 0/1), **at the modal's display resolution**: its shape is the box's pixel size times the
  screen pixels per image pixel at the time (1.875 here: a 640x480 image in a 1600x1000 window), not the image's.
  A file-backed mask (``mask_path``) that is painted becomes inline: ``mask_path`` is set to None and the PNG
  is left on disk as it was. The box is re-fitted to the mask's extent after every stroke: it grows when
  painting goes past it, shrinks when rubbing out an edge, and moves by a fraction of a pixel (display-pixel
  grid) even for a stroke inside it. Neither is clipped to the image: a stroke at the image's edge leaves a box
  reaching past it (x + width = 1.0025 here) and mask pixels outside the image.
- A label with a mask always opens in the mask tools (Select, Brush, Pen, AI, Merge): its box cannot be dragged
  and its x/y/width/height fields are disabled. A box-only label shows handles and editable box fields.
- "Delete label" (label menu) removes the detection (``remove /pred/detections/<i>``).
- Create > Detection, drag: a new ``fo.Detection`` with a new id, the drawn box (exact, relative), the last class
  used (``label`` then picked from the schema's classes), no mask, no ``confidence`` and none of the custom
  attributes. Its label menu's "Add mask" opens the mask tools; painting gives it an inline mask and **replaces
  its box by the mask's extent** (the drawn box is lost). Create > Segmentation Mask, painting off every label,
  makes a new Detection with mask and fitted box the same way.
- ``last_modified_at`` of the sample changes with every save.

Without chromium or Playwright the test skips, unless ``NTT_REQUIRE_BROWSER=1`` (CI), where it fails.
"""

from __future__ import annotations

import os
import urllib.parse
import uuid
from pathlib import Path

import numpy as np
import pytest
from app_driver import CHROMIUM_ARGS, EXTERNAL, AppDriver, AppServer, database_port, find_chromium, fresh_artifacts

pytestmark = [pytest.mark.browser, pytest.mark.slow]

FIELD, NEW_CLASS, BANK = "pred", "dog", "people"
IMAGE = "000000001000.jpg"  # COCO val, 640x480: people standing apart
BRUSH_PX = 16  # the brush's default diameter, in screen pixels


def _unavailable(reason: str):
    if os.environ.get("NTT_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (NTT_REQUIRE_BROWSER=1: the browser test must run)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None and os.environ.get("NTT_CHROMIUM"):
        _unavailable(f"NTT_CHROMIUM={os.environ['NTT_CHROMIUM']} is not an executable")
    if path is None:
        _unavailable("no chromium on PATH: `apt-get install -y chromium` (scripts/setup.sh does it as root)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _unavailable("Playwright for Python is not installed: run `bash scripts/setup.sh`")
    return path


@pytest.fixture
def artifacts() -> Path:
    return fresh_artifacts("annotate")


@pytest.fixture
def annotate_dataset(coco_source, random_config):
    """A persistent one-sample dataset (the App's process must see it) whose Detections field ``FIELD`` holds
    predictions as ``nfo.segment`` writes them: instance masks (bool crops), ``confidence``, ``predicted_label``,
    ``shot_cosine``, and the ``ntt_predicted`` record on the Detections. Here three COCO instances with boxes
    apart; a dataset segmented with ``nfo.segment(..., label_field=FIELD)`` may stand in for it (the edits are
    planned from whatever the field holds)."""
    import fiftyone as fo

    import ntt.fo as nfo
    from ntt.fo.review.corrections import with_record

    view = coco_source.match(fo.ViewField("filepath").ends_with(IMAGE))
    ds = view.clone(name=f"ntt-annotate-{uuid.uuid4().hex[:8]}", persistent=True)
    sample = ds.first()
    # a reference sample of people, after the target (the App opens the first sample): bank BANK's only class
    people = coco_source.match(fo.ViewField("gt.detections.label").contains("person"))
    ds.add_samples([s.copy() for s in people.match(~fo.ViewField("filepath").ends_with(IMAGE)).limit(1)])
    ds.compute_metadata()
    nfo.mark_references(ds.skip(1))
    nfo.build_bank(ds, BANK, label_field="gt", config=random_config, classes=["person"])
    apart = []
    for det in sorted(sample["gt"].detections, key=lambda d: -np.count_nonzero(d.mask)):
        if 4000 <= np.count_nonzero(det.mask) <= 40000 and not any(_boxes_meet(det, o, 4 / 640) for o in apart):
            apart.append(det)
    apart = sorted(apart[:3], key=lambda d: d.bounding_box[0])
    assert len(apart) == 3, "the test image no longer has three instances apart"
    preds = [
        fo.Detection(
            label=d.label,
            bounding_box=list(d.bounding_box),
            mask=np.asarray(d.mask, bool),
            confidence=0.9 - 0.1 * k,
            predicted_label=d.label,
            shot_cosine=0.5 + 0.1 * k,
        )
        for k, d in enumerate(apart)
    ]
    sample[FIELD] = with_record(fo.Detections(detections=preds))
    sample.save()
    yield ds
    ds.delete()


def _boxes_meet(a, b, margin: float = 0.0) -> bool:
    ax, ay, aw, ah = a.bounding_box
    bx, by, bw, bh = b.bounding_box
    return not (ax + aw + margin < bx or bx + bw + margin < ax or ay + ah + margin < by or by + bh + margin < ay)


def test_annotate_tab_edits_teach_the_bank_through_promote(chromium, artifacts, annotate_dataset, monkeypatch):
    from playwright.sync_api import sync_playwright

    import ntt.fo as nfo
    import ntt.fo.review.feedback as feedback
    from ntt.fo.references import full_image_mask

    ds = annotate_dataset
    env = {**os.environ, "FIFTYONE_PRIVATE_DATABASE_PORT": database_port()}
    with AppServer(ds.name, env, artifacts / "app.log") as app, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1600, "height": 1000})
            context.route(EXTERNAL, lambda route: route.abort())
            page = context.new_page()
            page.set_default_timeout(30_000)
            ui = AppDriver(page, artifacts)
            (artifacts / "steps.log").write_text(f"App up in {app.startup_s:.1f} s on {app.url}\n")
            try:
                edits = _edits(ui, f"{app.url}/datasets/{urllib.parse.quote(ds.name)}", ds)
            except BaseException:
                try:
                    ui.shot("failure")
                    (artifacts / "failure.html").write_text(page.content())
                except Exception:  # noqa: BLE001 - the original error matters more
                    pass
                print(f"App log tail:\n{app.log_tail()}")
                raise
        finally:
            browser.close()
    # promote reads the App's edits: the corrected mask, the deleted prediction, the drawn object
    lessons = []
    real = feedback.lesson_steps

    def spy(bank, positives, negatives, cfg, **kwargs):
        lessons.append((list(positives), list(negatives)))
        return (yield from real(bank, positives, negatives, cfg, **kwargs))

    monkeypatch.setattr(feedback, "lesson_steps", spy)
    before = len(nfo.load_bank(ds, BANK).shots)
    assert nfo.forms.review_counts(ds, FIELD) == {
        "correct": 0,
        "wrong": 0,
        "relabelled": 0,
        "edited": 1,
        "deleted": 1,
        "drawn": 1,
    }
    bank = nfo.promote_predictions(ds, BANK, FIELD)
    sample = _stored(ds)
    width, height = sample.metadata.width, sample.metadata.height
    now = {d.id: d for d in sample[FIELD].detections}
    [(positives, negatives)] = lessons
    shots = {r.annotation_id: r for r in positives}
    assert set(shots) == {edits["painted"], edits["drawn"]}
    assert np.array_equal(shots[edits["painted"]].mask, full_image_mask(now[edits["painted"]], width, height)), (
        "the shot is not the corrected mask"
    )
    assert shots[edits["drawn"]].class_name == NEW_CLASS
    [negative] = negatives
    x, y, w, h = edits["deleted"]["box"]
    assert (negative.annotation_id, negative.class_name) == (edits["deleted"]["id"], edits["deleted"]["label"])
    assert negative.box == pytest.approx([x * width, y * height, w * width, h * height])
    new = bank.shots[before:]
    assert sorted((s["promoted"], bool(s.get("negative"))) for s in new) == [
        ("deleted", True),
        ("drawn", False),
        ("edited", False),
    ]
    assert bank.negatives_per_class() == {"person": 1} and NEW_CLASS in bank.class_names


def _stored(ds):
    """The sample as stored now (the App's process wrote it)."""
    ds.reload()
    sample = ds.first()
    sample.reload(hard=True)
    return sample


def _edits(ui: AppDriver, url: str, ds, field: str = FIELD) -> dict:
    """The three edits through the Annotate tab on the first sample's ``field``, each checked on the stored
    sample. Returns what was done: ``painted`` (label id), ``deleted`` (its ``ntt_predicted`` entry), ``drawn``
    (label id), ``sample_id``: what ``nfo.promote_predictions`` should find."""
    from ntt.fo.references import full_image_mask
    from ntt.fo.review.corrections import RECORD, mask_digest

    before = _stored(ds)
    width, height = before.metadata.width, before.metadata.height
    record = before[field][RECORD]
    original = {d.id: d for d in before[field].detections}
    masked = sorted((d for d in original.values() if d.has_mask), key=lambda d: _center(d, width, height)[0])
    assert len(masked) >= 2, "the field needs two predictions with masks"
    painted, deleted = masked[-1], masked[0]  # the tool bar floats over the image's left part: paint on the right
    stamps = [before.last_modified_at]

    ui.open_dataset(url)
    ui.open_annotate(0)
    ui.setup_annotation_schema(field, [NEW_CLASS])
    ds.reload()
    assert ds.active_label_schemas == [field] and NEW_CLASS in ds.label_schemas[field]["classes"], ds.label_schemas
    assert {i for i, _ in ui.annotate_labels()} == set(original), ui.annotate_labels()
    scale = ui.display_scale()

    # (a) A brush stroke from the middle of a prediction to past its box's right edge.
    cx, cy = _center(painted, width, height)
    right = painted.bounding_box[0] + painted.bounding_box[2]
    x_end = min(width - 3, right * width + 12)
    stroke = [(cx + (x_end - cx) * k / 8, cy) for k in range(9)]
    ui.select_label_in_annotate(painted.id)
    ui.paint_mask([stroke], name="painted_past_the_box")
    sample = _stored(ds)
    now = {d.id: d for d in sample[field].detections}
    assert set(now) == set(original), "painting added or removed a label"
    det = now[painted.id]  # same id
    assert mask_digest(det) != mask_digest(painted), "the painted mask is stored unchanged"
    assert det.mask_path is None and det.mask is not None and det.mask.dtype == np.uint8, (det.mask_path, det.mask)
    box_px = (det.bounding_box[3] * height, det.bounding_box[2] * width)
    assert all(abs(m - b * scale) <= 2 for m, b in zip(det.mask.shape, box_px)), (det.mask.shape, box_px, scale)
    radius = BRUSH_PX / 2 / scale
    new_right = (det.bounding_box[0] + det.bounding_box[2]) * width
    assert x_end <= new_right <= x_end + radius + 2, f"the box was not fitted to the stroke: {new_right} vs {x_end}"
    for name in ("label", "confidence", "predicted_label", "shot_cosine"):
        assert det[name] == painted[name], name
    full_now, full_before = full_image_mask(det, width, height), full_image_mask(painted, width, height)
    assert (full_now & full_before).sum() >= 0.97 * full_before.sum(), "painting lost the original mask"
    line = full_now[int(round(cy)), int(round(cx)) : int(x_end)]
    assert line.mean() > 0.95, f"the stroke is not in the stored mask ({line.mean():.2f})"
    assert sample[field][RECORD] == record, "ntt_predicted changed"
    for other in set(original) - {painted.id}:
        assert mask_digest(now[other]) == mask_digest(original[other]), "another label's mask changed"
    stamps.append(sample.last_modified_at)

    # (b) Delete another prediction.
    ui.select_label_in_annotate(deleted.id)
    ui.delete_selected_label()
    sample = _stored(ds)
    now = {d.id: d for d in sample[field].detections}
    assert set(now) == set(original) - {deleted.id}, "the deleted label is still stored (or others went)"
    assert mask_digest(now[painted.id]) == mask_digest(det), "the painted mask changed with the deletion"
    assert sample[field][RECORD] == record, "ntt_predicted changed"
    stamps.append(sample.last_modified_at)

    # (c) Draw a box off every label, class it NEW_CLASS, then paint it a mask.
    kept = list(now.values())
    x0, y0, x1, y1 = _free_box(kept, width, height)
    drawn_id = ui.draw_box(NEW_CLASS, x0, y0, x1, y1)
    sample = _stored(ds)
    now = {d.id: d for d in sample[field].detections}
    assert set(now) == set(original) - {deleted.id} | {drawn_id}, (set(now), drawn_id)
    drawn = now[drawn_id]
    assert drawn.label == NEW_CLASS and not drawn.has_mask and drawn.confidence is None, drawn
    assert not drawn.has_field("predicted_label") and not drawn.has_field("shot_cosine"), drawn
    drawn_px = [drawn.bounding_box[0] * width, drawn.bounding_box[1] * height]
    drawn_px += [drawn_px[0] + drawn.bounding_box[2] * width, drawn_px[1] + drawn.bounding_box[3] * height]
    assert np.allclose(drawn_px, [x0, y0, x1, y1], atol=1), (drawn_px, (x0, y0, x1, y1))
    stamps.append(sample.last_modified_at)

    ui.add_mask_to_selected()
    # Two horizontal strokes, at 30 % and 60 % of the drawn box's height, from 20 % to 80 % of its width.
    rows = [y0 + (y1 - y0) * g for g in (0.3, 0.6)]
    strokes = [[(x0 + (x1 - x0) * (0.2 + 0.1 * k), y) for k in range(7)] for y in rows]
    ui.paint_mask(strokes, name="drawn_box_masked")
    ui.leave_label()
    ui.shot("all_edits")
    assert not ui.errors_shown(), ui.errors_shown()
    sample = _stored(ds)
    now = {d.id: d for d in sample[field].detections}
    drawn = now[drawn_id]
    assert drawn.label == NEW_CLASS and drawn.mask is not None and drawn.mask_path is None, drawn
    full = full_image_mask(drawn, width, height)
    assert all(full[int(round(y)), int(round(x))] for x, y in strokes[0] + strokes[1]), (
        "the strokes are not in the mask"
    )
    box = drawn.bounding_box
    fitted = [box[0] * width, box[1] * height, (box[0] + box[2]) * width, (box[1] + box[3]) * height]
    margin = BRUSH_PX / 2 / scale + 2
    painted_extent = [strokes[0][0][0], rows[0], strokes[0][-1][0], rows[1]]
    assert np.allclose(fitted, painted_extent, atol=margin), f"the box is not the mask's extent: {fitted}"
    assert sample[field][RECORD] == record, "ntt_predicted changed"
    assert set(now) == set(original) - {deleted.id} | {drawn_id}
    stamps.append(sample.last_modified_at)
    assert all(a < b for a, b in zip(stamps, stamps[1:])), f"last_modified_at did not advance with each edit: {stamps}"

    print(
        f"display scale {scale:.3f}; painted: box {det.bounding_box} mask {det.mask.shape}; "
        f"drawn: box {drawn.bounding_box} mask {drawn.mask.shape}"
    )
    ui.close_annotate()
    ui.shot("closed")
    return {
        "sample_id": sample.id,
        "painted": painted.id,
        "deleted": next(r for r in record if r["id"] == deleted.id),
        "drawn": drawn_id,
    }


def _center(det, width: int, height: int) -> tuple[float, float]:
    """A pixel of ``det``'s mask on its box's middle row, the one closest to the box's centre."""
    from ntt.fo.references import full_image_mask

    x, y, w, h = det.bounding_box
    row = int(round((y + h / 2) * height))
    cols = np.flatnonzero(full_image_mask(det, width, height)[row])
    centre = (x + w / 2) * width
    col = cols[np.argmin(np.abs(cols - centre))] if cols.size else centre
    return float(col), float(row)


def _free_box(dets, width: int, height: int) -> tuple[float, float, float, float]:
    """A box (x0, y0, x1, y1 in image pixels) a sixth of the image wide and a quarter high, clear of every box in
    ``dets`` by 4 px, as far right as possible (the tool bar floats over the image's left part)."""
    bw, bh = width / 6, height / 4
    boxes = [
        (d.bounding_box[0] * width, d.bounding_box[1] * height, d.bounding_box[2] * width, d.bounding_box[3] * height)
        for d in dets
    ]
    for x0 in np.arange(width - bw - 8, 8, -8):
        for y0 in np.arange(8, height - bh - 8, 8):
            if all(
                x0 + bw + 4 < bx or bx + bw_ + 4 < x0 or y0 + bh + 4 < by or by + bh_ + 4 < y0
                for bx, by, bw_, bh_ in boxes
            ):
                return float(x0), float(y0), float(x0 + bw), float(y0 + bh)
    raise AssertionError("no room on the image to draw a box clear of the labels")
