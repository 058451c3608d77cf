"""Following and stopping runs: a run of this process (the App's immediate runs) is listed with its progress and
stops at its next step keeping its finished batches; a background run is listed from FiftyOne's delegated
operations and stopped by marking it failed; the 'NTT: jobs' operator shows both and stops the one chosen."""

from __future__ import annotations

import asyncio

import pytest
from test_plugin import PLUGIN, RANDOM, SMOKE, _form, _request, _run

import ntt.fo as nfo


@pytest.fixture
def banked(dataset):
    nfo.mark_references(dataset.skip(5).limit(1))
    nfo.build_bank(dataset, "pets", label_field="gt", preset="smoke", config=RANDOM)
    return dataset


def _mine(dataset, where):
    return [run for run in nfo.list_jobs(dataset) if run["where"] == where]


def test_a_run_here_is_listed_and_stops_at_its_next_step_keeping_finished_batches(banked):
    ds = banked
    run = nfo.steps.tracked(
        nfo.steps.segment_steps(ds, "pets", label_field="part", batch_size=2), ds.name, "segment_with_bank"
    )
    assert next(run).label == "Loading models"
    assert next(run).label == "Segmenting 2/11 samples"
    [live] = _mine(ds, "this App")
    assert (live["state"], live["operation"], live["label"]) == (
        "running",
        "segment_with_bank",
        "Segmenting 2/11 samples",
    )
    assert "stops after its current step" in nfo.stop_job(ds, live["id"])
    with pytest.raises(nfo.steps.JobStopped, match="stopped at 'Segmenting 2/11 samples' on request"):
        next(run)
    [stopped] = _mine(ds, "this App")
    assert stopped["state"] == "stopped" and "on request" in stopped["error"]
    assert ds.exists("part").count() == 2  # the finished batch keeps its labels, nothing after it ran
    with pytest.raises(nfo.NTTFiftyOneError, match="only a queued or running job can be stopped"):
        nfo.stop_job(ds, live["id"])
    resumed = nfo.segment(ds, "pets", label_field="part", skip_existing=True)
    assert resumed["labelled"] == 9 and ds.exists("part").count() == 11


def test_a_background_run_is_listed_and_stopped_through_fiftyone(banked):
    import fiftyone.operators as foo
    from fiftyone.operators.delegated import DelegatedOperationService

    ds = banked
    foo.get_operator(f"{PLUGIN}/segment_with_bank")(ds, "pets", label_field="bg", **SMOKE, delegate=True)
    [queued] = _mine(ds, "background")
    assert (queued["state"], queued["operation"]) == ("queued", "segment_with_bank")
    assert "will not start" in nfo.stop_job(ds, queued["id"])
    [failed] = _mine(ds, "background")
    assert failed["state"] == "failed" and failed["error"] == "Stopped on request (NTT jobs)"
    DelegatedOperationService().execute_queued_operations(dataset_name=ds.name)
    assert "bg" not in ds.get_field_schema()  # a stopped queued run never starts


def test_the_jobs_operator_lists_jobs_and_stops_an_immediate_one_from_the_app(banked):
    from fiftyone.operators.executor import execute_or_delegate_operator

    ds = banked
    assert "No NTT job" in str(_form("jobs", ds).type.properties["none"].view.label)
    view = ds.exclude(nfo.forms.reference_ids(ds)).limit(3)
    params = {"bank": "pets", "label_field": "pred", "batch_size": 1, **SMOKE}
    result = asyncio.run(execute_or_delegate_operator(f"{PLUGIN}/segment_with_bank", _request(view, params)))
    messages = iter(result.result)
    while next(messages).body.params.get("label") != "Segmenting 1/3 samples":
        pass
    form = _form("jobs", ds)
    [live] = _mine(ds, "this App")
    assert "| segment_with_bank | this App | running |" in form.type.properties["jobs"].default
    assert live["id"] in form.type.properties["stop"].type.values
    done = _run("jobs", dataset=ds, params={"stop": live["id"]})
    assert "stops after its current step" in done.result["message"]
    rest = []
    with pytest.raises(Exception, match="Stopped: stopped at 'Segmenting 1/3 samples' on request"):
        for message in messages:
            rest.append((message.body.operator_uri, message.body.params))
    assert [uri.rsplit("/", 1)[-1] for uri, _ in rest] == ["notify"]  # the App is told, no other batch runs
    assert rest[0][1]["message"].startswith("Stopped: stopped at 'Segmenting 1/3 samples' on request")
    assert ds.exists("pred").count() == 1
