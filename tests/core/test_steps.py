"""Runs as generators of steps: ``drive`` (the plain functions' callback form) and ``relay`` (the operators')."""

from __future__ import annotations

import pytest

from ntt.steps import Step, drive, relay


def _run(log):
    try:
        yield Step(0.0, "start")
        log.append("first half")
        yield Step(0.5, "half")
        log.append("second half")
        yield Step(1.0, "end")
        return "result"
    finally:
        log.append("closed")


def test_drive_reports_each_step_and_returns_the_result():
    log, seen = [], []
    assert drive(_run(log), lambda fraction, label: seen.append((fraction, label))) == "result"
    assert seen == [(0.0, "start"), (0.5, "half"), (1.0, "end")]
    assert drive(_run([])) == "result"  # no callback


def test_an_error_in_the_callback_closes_the_run_at_its_step():
    log = []

    def stop(fraction, label):
        if label == "half":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        drive(_run(log), stop)
    assert log == ["first half", "closed"]


def test_relay_maps_steps_and_closing_it_closes_the_run():
    def outer(run):
        return (yield from relay(run, lambda step: step.label.upper()))

    messages, log = outer(_run([])), []
    assert [next(messages) for _ in range(3)] == ["START", "HALF", "END"]
    with pytest.raises(StopIteration) as end:
        next(messages)
    assert end.value.value == "result"
    relayed = relay(_run(log), lambda step: step)
    assert next(relayed) == Step(0.0, "start")
    relayed.close()
    assert log == ["closed"]
