"""Error analysis in the FiftyOne App, through the UI, in a real browser: the predictions as a map, a lasso, negatives.

The predictions are planted (the ground truth of the bank's classes, copied: true positives, plus two boxes per
image in a corner: false positives) with planted embeddings (each class near its own direction, the false
positives near one "toy" direction), then evaluated, so the map has a known shape: random weights would give only
false positives, in no order. Steps: 'NTT: map predictions' from the operator browser, which opens the Embeddings
panel; the map coloured by the evaluation outcome; a lasso around the false positives (found on the canvas from
the map's coordinates); 'NTT: mark as negatives' with no other step; the bank then holds exactly those labels as
negatives. Then 'NTT: suggest references' with the bank opens its most unsure targets. Screenshots go to
``$NTT_TEST_ARTIFACTS/browser-map/`` (the README's error-analysis pictures come from them).
"""

from __future__ import annotations

import os
import urllib.parse
import uuid
from pathlib import Path

import numpy as np
import pytest
from app_driver import CHROMIUM_ARGS, EXTERNAL, AppDriver, AppServer, database_port, fresh_artifacts
from test_app_browser import chromium  # noqa: F401 - the module's chromium fixture

pytestmark = [pytest.mark.browser, pytest.mark.slow]

BANK, FIELD, EVAL_KEY, DIM = "map_bank", "ntt", "ev", 384
MAP, NEGATIVES, SUGGEST = "NTT: map predictions", "NTT: mark as negatives", "NTT: suggest references"


@pytest.fixture
def artifacts() -> Path:
    return fresh_artifacts("browser-map")


@pytest.fixture
def planted(coco_source, random_config):
    """10 COCO images (2 references, a random-weights bank) with planted predictions, embeddings and an
    evaluation; returns the dataset and the false positives' label ids."""
    import fiftyone as fo

    import ntt.fo as nfo
    from ntt.fo.embeddings import save_embeddings

    ds = coco_source.limit(10).clone(name=f"ntt-map-{uuid.uuid4().hex[:8]}", persistent=True)
    nfo.mark_references(ds.limit(2))
    nfo.build_bank(ds, BANK, label_field="gt", config=random_config)
    classes = nfo.load_bank(ds, BANK).class_names
    rng = np.random.default_rng(0)
    looks = {name: rng.normal(size=DIM) for name in classes}
    toy = 1.5 * rng.normal(size=DIM)
    rows, false_positives = [], []
    for sample in ds.skip(2):
        dets = []
        for gt in sample.gt.detections if sample.gt else []:
            if gt.label in classes:
                dets.append(gt.copy())
                dets[-1].confidence = 0.9
                rows.append((sample.id, dets[-1].id, _unit(looks[gt.label] + 0.3 * rng.normal(size=DIM))))
        for k in range(2):
            box = [0.9 - 0.05 * k, 0.9, 0.04, 0.04]
            dets.append(fo.Detection(label=classes[0], bounding_box=box, mask=np.ones((8, 8), bool), confidence=0.5))
            false_positives.append(dets[-1].id)
            rows.append((sample.id, dets[-1].id, _unit(toy + 0.3 * rng.normal(size=DIM))))
        sample[FIELD] = fo.Detections(detections=dets)
        sample.save()
    save_embeddings(ds, rows)
    nfo.evaluate(ds, FIELD, gt_field="gt", eval_key=EVAL_KEY)
    assert set(ds.distinct(f"{FIELD}.detections.{EVAL_KEY}")) == {"tp", "fp"}
    yield ds, false_positives
    ds.delete()


def _unit(v):
    return (v / np.linalg.norm(v)).astype(np.float32)


def test_a_lassoed_cluster_of_false_positives_becomes_negatives(chromium, artifacts, planted):  # noqa: F811
    from playwright.sync_api import sync_playwright

    ds, false_positives = planted
    env = {**os.environ, "FIFTYONE_PRIVATE_DATABASE_PORT": database_port()}
    with AppServer(ds.name, env, artifacts / "app.log") as app, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1600, "height": 1000})
            context.route(EXTERNAL, lambda route: route.abort())
            page = context.new_page()
            page.set_default_timeout(30_000)
            ui = AppDriver(page, artifacts)
            try:
                _flow(ui, f"{app.url}/datasets/{urllib.parse.quote(ds.name)}", ds, false_positives)
            except BaseException:
                ui.shot("failure")
                (artifacts / "failure.html").write_text(page.content())
                print(f"App log tail:\n{app.log_tail()}")
                raise
        finally:
            browser.close()


def _flow(ui: AppDriver, url: str, ds, false_positives: list[str]) -> None:
    import ntt.fo as nfo

    ui.open_dataset(url)
    form = ui.open_operator(MAP)
    ui.choose(form, "pca")
    ui.shot("map_form")
    ui.execute(form, expect=f"{FIELD}_map", timeout=120)
    ui.shot("map_done")
    ui.close_output()
    ds.reload()
    assert {f"{FIELD}_map", f"{FIELD}_map_shots", f"{FIELD}_sim"} <= set(ds.list_brain_runs())

    # The Embeddings panel is open (the operator opened it); the map coloured by the evaluation outcome.
    panel = ui.embeddings_plot(f"{FIELD}_map")
    ui.colour_plot_by(panel, f"{FIELD}.detections.{EVAL_KEY}")
    legend = ui.settle(panel.get_by_role("group", name="Color legend"))
    assert "tp" in legend and "fp" in legend, legend
    ui.move_legend(panel)
    ui.shot("map_coloured_by_evaluation")

    # Lasso the false positives: where they are drawn follows from the map's coordinates and the canvas.
    ui.colour_plot_by(panel, "None")  # the legend's swatches would count as points
    polygon = _around(ui.plotted_points(panel), ds, false_positives)
    ui.lasso(panel, polygon)
    assert f"{len(false_positives)} selected" in ui.settle(panel), ui.text_of(panel)
    ui.colour_plot_by(panel, f"{FIELD}.detections.{EVAL_KEY}")
    ui.move_legend(panel)
    ui.shot("false_positives_lassoed")

    form = ui.open_operator(NEGATIVES)
    notice = ui.settle(form)
    assert f"{len(false_positives)} label(s) become negatives" in notice, notice
    ui.shot("mark_negatives_form")
    ui.execute(form, expect=BANK, timeout=240)
    ui.shot("mark_negatives_done")
    ui.close_output()
    ds.reload()
    negatives = [s["annotation_id"] for s in nfo.load_bank(ds, BANK).shots if s.get("negative")]
    assert sorted(negatives) == sorted(false_positives), "the bank's negatives are exactly the lassoed labels"

    # Which samples next: the bank's most unsure targets, opened as a view.
    form = ui.open_operator(SUGGEST)
    ui.pick(form, "Bank", BANK)
    ui.type_text(form, "How many samples", "3")
    ui.shot("suggest_form")
    ui.execute(form, expect="unsure", timeout=240)
    ui.close_output()
    ui.page.wait_for_timeout(1500)
    ui.shot("suggest_done")
    assert "3 samples" in ui.visible_text(), "the view of the 3 most unsure targets"


def _around(blobs: np.ndarray, ds, chosen: list[str], margin: float = 14.0) -> list[tuple[float, float]]:
    """A lasso (page points) around the map points of labels ``chosen``, placing the map's coordinates on the
    canvas by its drawn extent (``blobs``: the drawn points, page (x, y)); checks no other point falls inside."""
    ds.reload()
    results = ds.load_brain_results(f"{FIELD}_map")
    points, ids = np.asarray(results.current_points), list(results.current_label_ids)
    low, high = points.min(0), points.max(0)
    left, top = blobs.min(0)
    right, bottom = blobs.max(0)
    x = left + (points[:, 0] - low[0]) * (right - left) / (high[0] - low[0])
    y = bottom - (points[:, 1] - low[1]) * (bottom - top) / (high[1] - low[1])  # the map's y grows upwards
    screen = np.stack([x, y], axis=1)
    wanted = np.isin(ids, chosen)
    lo, hi = screen[wanted].min(0) - margin, screen[wanted].max(0) + margin
    inside = ((screen >= lo) & (screen <= hi)).all(axis=1)
    assert inside[wanted].all() and not inside[~wanted].any(), "the planted false positives are one cluster"
    return [(lo[0], lo[1]), (hi[0], lo[1]), (hi[0], hi[1]), (lo[0], hi[1])]
