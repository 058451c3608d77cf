"""Calibrated thresholds on a dataset: applied only to the bank version and settings they were fitted on; a stale
one is refused with why (SDK) and not pre-filled but named (the segment form)."""

from __future__ import annotations

import pytest

import ntt.fo as nfo
from ntt.fo.banks import _store
from ntt.fo.checks import settings_here
from ntt.grading.calibration import calibrate


@pytest.fixture
def calibrated(dataset, random_config):
    """Bank "pets" with a calibration stamped for its current version and settings (as a grading with
    calibrate=True stores it; random weights rarely match a label, so the thresholds are set here)."""
    nfo.mark_references(dataset.limit(3))
    bank = nfo.build_bank(dataset, "pets", label_field="gt", config=random_config)
    info = nfo.get_bank_info(dataset, "pets")
    cfg = settings_here(info["config"])
    thresholds = {name: 0.5 for name in bank.class_names}
    bank.info["calibration"] = {
        **calibrate(bank, {}, None, cfg),
        "classes": {k: {"threshold": v} for k, v in thresholds.items()},
    }
    _store(dataset, "pets", bank, info["label_field"], info["tag"], cfg)
    return dataset, thresholds


def _form(ds):
    from test_plugin import _form

    return _form("segment_with_bank", ds, {"bank": "pets", "label_field": "p"})


def test_a_calibration_made_before_teaching_is_not_applied_after_it(calibrated):
    ds, thresholds = calibrated
    assert nfo.get_bank_info(ds, "pets")["calibrated_thresholds"] == thresholds
    assert _form(ds).type.properties["per_class"].default is True, "a fresh calibration is pre-filled"
    target = ds.skip(3).limit(1)
    nfo.segment(target, "pets", label_field="pred", thresholds="calibrated", max_instances=5)

    label = target.first().pred.detections[0]
    nfo.add_negatives(ds, "pets", "pred", label_ids=[label.id])  # teaching: the bank's scores change
    assert "calibration" in nfo.load_bank(ds, "pets").info, "kept, to say what it was"
    with pytest.raises(nfo.NTTFiftyOneError, match="stale: they were fitted on another version of the bank"):
        nfo.segment(target, "pets", label_field="again", thresholds="calibrated")
    assert "again" not in ds.get_field_schema(), "refused before anything was written"
    info = nfo.get_bank_info(ds, "pets")
    assert info["calibrated_thresholds"] == {} and "grade its references again" in info["calibration_stale"]
    form = _form(ds).type.properties
    assert form["per_class"].default is False, "a stale calibration is not pre-filled"
    assert "stale" in form["calibration_stale"].view.description


def test_a_calibration_under_other_settings_is_refused(calibrated):
    ds, _ = calibrated
    with pytest.raises(nfo.NTTFiftyOneError, match=r"other settings \(prompt_mode 'grid' -> 'guided'\)"):
        nfo.segment(
            ds.skip(3).limit(1),
            "pets",
            label_field="p",
            thresholds="calibrated",
            config={"segment": {"prompt_mode": "guided"}},
        )
    # what does not change scores does not make it stale
    nfo.segment(ds.skip(3).limit(1), "pets", label_field="p", thresholds="calibrated", score_thresh=0.1, batch_size=2)
