"""The SDK's long runs as generators (``*_steps``): increasing stage-labelled steps, the result as the generator's
return value, and closing as stopping (segment keeps complete labels per batch; ``skip_existing`` finishes the rest
exactly once). The plain functions are the same runs with a ``progress`` callback."""

from __future__ import annotations

import inspect

import pytest

import ntt.fo as nfo


def _exhaust(run):
    """The steps of a run and its return value."""
    steps = []
    while True:
        try:
            steps.append(next(run))
        except StopIteration as stop:
            return steps, stop.value


def _check_steps(steps):
    assert steps and all(isinstance(step, nfo.steps.Step) for step in steps)
    fractions = [step.fraction for step in steps]
    assert fractions == sorted(fractions) and 0.0 <= fractions[0] and fractions[-1] == 1.0
    assert all(isinstance(step.label, str) and step.label for step in steps)


def test_plain_functions_take_the_generators_arguments_plus_progress():
    for plain, steps in [
        (nfo.build_bank, nfo.steps.build_bank_steps),
        (nfo.add_references, nfo.steps.add_references_steps),
        (nfo.segment, nfo.steps.segment_steps),
    ]:
        params = list(inspect.signature(plain).parameters.values())
        assert params[:-1] == list(inspect.signature(steps).parameters.values()), plain.__name__
        assert params[-1].name == "progress" and params[-1].default is None


def test_bank_runs_step_and_return_the_bank(dataset, random_config):
    nfo.mark_references(dataset.limit(2))
    with pytest.raises(nfo.NTTFiftyOneError, match="invalid bank name"):
        next(nfo.steps.build_bank_steps(dataset, "../x", label_field="gt", config=random_config))  # checked at step one

    stopped = nfo.steps.build_bank_steps(dataset, "pets", label_field="gt", config=random_config)
    assert next(stopped).label == "Encoding references"
    stopped.close()
    assert nfo.list_banks(dataset) == []  # closed before its end: nothing stored

    steps, bank = _exhaust(nfo.steps.build_bank_steps(dataset, "pets", label_field="gt", config=random_config))
    _check_steps(steps)
    assert {step.label for step in steps} == {"Encoding references"} and len(steps) == 2  # one per image
    assert bank.fingerprint == nfo.load_bank(dataset, "pets").fingerprint

    extra = dataset.skip(5).first()
    nfo.mark_references(dataset, "gt", label_ids=[extra.gt.detections[0].id])
    steps, added = _exhaust(nfo.steps.add_references_steps(dataset, "pets"))
    _check_steps(steps)
    assert len(added.shots) == len(bank.shots) + 1 == nfo.get_bank_info(dataset, "pets")["num_shots"]
    steps, same = _exhaust(nfo.steps.add_references_steps(dataset, "pets"))
    assert steps == [nfo.steps.Step(1.0, "Nothing new to encode: every reference is in the bank already")]
    assert same.fingerprint == added.fingerprint


def test_segment_steps_close_mid_run_then_resume_labels_each_sample_once(dataset, random_config):
    nfo.mark_references(dataset.limit(3))
    nfo.build_bank(dataset, "pets", label_field="gt", config=random_config)
    steps, full = _exhaust(nfo.steps.segment_steps(dataset, "pets", label_field="full", batch_size=2))
    _check_steps(steps)
    assert steps[0] == nfo.steps.Step(0.0, "Loading models")
    assert [s.label for s in steps[1:]] == [f"Segmenting {n}/9 samples" for n in (2, 4, 6, 8, 9)]
    assert full["samples"] == full["labelled"] == dataset.exists("full").count() == 9
    assert full["instances"] == sum(len(s.full.detections) for s in dataset.exists("full"))

    run = nfo.steps.segment_steps(dataset, "pets", label_field="part", batch_size=2)
    assert [next(run).label for _ in range(3)] == ["Loading models", "Segmenting 2/9 samples", "Segmenting 4/9 samples"]
    run.close()
    done = dataset.exists("part")
    assert done.count() == 4  # the two batches written; nothing of the next one
    assert dataset.get_field("part").info["ntt_bank"] == "pets"
    for sample in done:  # complete labels: as the uninterrupted run's
        assert [d.label for d in sample.part.detections] == [d.label for d in sample.full.detections]
    kept = {s.id: [d.id for d in s.part.detections] for s in done}

    steps, resumed = _exhaust(
        nfo.steps.segment_steps(dataset, "pets", label_field="part", batch_size=2, skip_existing=True)
    )
    _check_steps(steps)
    assert resumed["samples"] == resumed["labelled"] == 5
    assert dataset.exists("part").count() == 9
    assert {s.id: [d.id for d in s.part.detections] for s in dataset.select(list(kept))} == kept  # not redone
    for sample in dataset.exists("full"):
        assert [d.label for d in sample.part.detections] == [d.label for d in sample.full.detections]
