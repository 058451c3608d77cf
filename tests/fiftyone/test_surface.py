"""The SDK's public surface: the names a FiftyOne user calls, each documented; the old names still work, with a
warning that names the new one; every option of ``segment`` reaches every way of starting a segment."""

from __future__ import annotations

import ast
import inspect
import re
import warnings
from pathlib import Path

import pytest

import ntt.fo as nfo
from ntt.fo.labelling.segment import plan_segment, segment_steps

REPO = Path(__file__).resolve().parents[2]
PUBLIC = [
    "mark_references",
    "unmark_references",
    "load_references_view",
    "suggest_references",
    "build_bank",
    "add_references",
    "get_bank_info",
    "list_banks",
    "load_bank",
    "rename_bank",
    "delete_bank",
    "segment",
    "load_model",
    "register_zoo_source",
    "evaluate",
    "add_negatives",
    "promote_predictions",
    "grade_references",
    "map_predictions",
    "index_similarity",
    "submit_job",
    "get_job_status",
    "list_jobs",
    "stop_job",
    "NTTFiftyOneError",
]
# what segment_steps takes besides the collection and the bank: every way of starting a segment takes these
SEGMENT_OPTIONS = [name for name in inspect.signature(segment_steps).parameters if name not in ("coll", "bank")]


def test_the_public_names_are_the_ones_a_user_calls_each_documented():
    assert nfo.__all__ == PUBLIC and len(nfo.__all__) <= 25
    for name in nfo.__all__:
        doc = inspect.getdoc(getattr(nfo, name))
        assert doc and len(doc.split()) >= 5, f"ntt.fo.{name} has no docstring worth the name"
    for module in (nfo.steps, nfo.forms, nfo.jobs.workers):  # reached there, not re-exported
        assert module.__doc__ and not set(module.__all__) & set(nfo.__all__), module.__name__
        assert all(hasattr(module, name) for name in module.__all__), module.__name__


@pytest.mark.parametrize("old", sorted(nfo.DEPRECATED))
def test_every_old_name_warns_with_its_new_name_and_still_works(old):
    import importlib

    module, new = nfo.DEPRECATED[old]
    with pytest.warns(FutureWarning, match=rf"ntt\.fo\.{old} is deprecated .*: use {re.escape(module)}\.{new}$"):
        found = getattr(nfo, old)
    assert found is getattr(importlib.import_module(module), new)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new names do not warn
        for name in nfo.__all__:
            getattr(nfo, name)
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        nfo.no_such_name  # noqa: B018


def test_the_plugin_scripts_and_library_use_no_deprecated_name():
    """Old names are for users' code: ours calls the new ones (an old one would warn in every App session)."""
    found = []
    for path in [*REPO.glob("plugin/**/*.py"), *REPO.glob("ntt/**/*.py"), *REPO.glob("scripts/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in nfo.DEPRECATED:
                owner = ast.unparse(node.value)
                if owner in ("nfo", "sdk()", "ntt.fo"):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: {owner}.{node.attr}")
            if isinstance(node, ast.ImportFrom) and node.module == "ntt.fo":
                found += [
                    f"{path.relative_to(REPO)}:{node.lineno}: {a.name}" for a in node.names if a.name in nfo.DEPRECATED
                ]
    assert not found, found


def test_every_segment_option_is_a_parameter_of_the_operator_and_of_submit_job():
    from plugin.operators.segment import SegmentWithBank

    call = inspect.signature(SegmentWithBank.__call__).parameters
    sdk = inspect.signature(segment_steps).parameters
    missing = [name for name in SEGMENT_OPTIONS if name not in call]
    assert not missing, f"segment options the operator's __call__ does not take: {missing}"
    assert [name for name in call if name in sdk] == ["bank", *SEGMENT_OPTIONS], "same order as the SDK"
    for name in SEGMENT_OPTIONS:
        assert call[name].default == sdk[name].default, name
    # submit_job passes **segment_args to the same planner segment uses: it accepts exactly these
    planned = inspect.signature(plan_segment).parameters
    assert [name for name in SEGMENT_OPTIONS if name not in planned] == []


def test_the_operator_hands_every_segment_option_to_segment(dataset, monkeypatch, tmp_path):
    """``__call__`` with every option set to something other than its default: the queued operation, once run,
    calls ``segment_steps`` with each of them."""
    import fiftyone.operators as foo
    from fiftyone.operators.delegated import DelegatedOperationService
    from test_plugin import PLUGIN, RANDOM

    nfo.mark_references(dataset.skip(5).limit(1))
    nfo.build_bank(dataset, "pets", label_field="gt", preset="smoke", config=RANDOM)
    given = dict(
        label_field="given",
        score_thresh=0.25,
        class_thresholds={"person": 0.3},
        max_instances=7,
        batch_size=2,
        device="cpu",
        preset="smoke",
        config=RANDOM,
        skip_existing=True,
        overwrite=False,  # with skip_existing: the two exclude each other
        exclude_references=False,
        tag="my_refs",
        cache=False,
        thresholds="calibrated",
        mask_dir=str(tmp_path / "masks"),
        keep_embeddings=False,
    )
    assert sorted(given) == sorted(SEGMENT_OPTIONS)
    seen = {}

    def spy(view, bank, **kwargs):
        seen.update(kwargs, bank=bank)
        yield from ()
        return {"samples": 0, "labelled": 0, "instances": 0, "per_class": {}, "reused": 0, "skipped": []}

    monkeypatch.setattr(nfo.steps, "segment_steps", spy)
    operator = foo.get_operator(f"{PLUGIN}/segment_with_bank")
    operator(dataset.limit(2), "pets", **given, delegate=True)
    service = DelegatedOperationService()
    service.execute_queued_operations(dataset_name=dataset.name)
    [op] = service.list_operations(dataset_name=dataset.name, operator=operator.uri)
    assert op.run_state == "completed", op.result and op.result.error
    assert seen.pop("bank") == "pets"
    assert seen == given


def test_a_config_naming_another_dinov2_than_the_banks_is_refused_not_ignored(dataset, random_config):
    """Targets are always encoded with the bank's DINOv2: ``--dinov2`` on ``ntt jobs submit`` (a config key) used
    to be overridden without a word."""
    nfo.mark_references(dataset.skip(5).limit(1))
    bank = nfo.build_bank(dataset, "pets", label_field="gt", config=random_config)
    other = "dinov2_vitb14" if bank.encoder["name"] != "dinov2_vitb14" else "dinov2_vits14"
    for start in (nfo.segment, nfo.submit_job):
        with pytest.raises(nfo.NTTFiftyOneError, match=f"encoded with DINOv2 .*config names '{other}'"):
            start(dataset, "pets", label_field="x", config={"model": {"dinov2": other}})
    assert "x" not in dataset.get_field_schema()
    same = {"model": {"dinov2": bank.encoder["name"]}}
    assert nfo.forms.segment_settings(dataset, "pets", config=same).model.dinov2 == bank.encoder["name"]


def test_get_job_status_says_no_job_for_an_id_nothing_has(dataset):
    for job_id in ("nonsense", "0123456789abcdef01234567"):  # not an id; an id of nothing
        with pytest.raises(nfo.NTTFiftyOneError, match=f"no job '{job_id}'"):
            nfo.get_job_status(job_id)
