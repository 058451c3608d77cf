"""Long runs as generators: they ``yield`` a ``Step(fraction, label)`` as they go and ``return`` their result.

A caller drives a run at its own pace: ``drive`` runs it to the end with an optional ``progress(fraction,
label)`` callback (what the plain functions do: ``f(*args, progress=None, **kwargs)`` over ``f_steps``, with
``f_steps``'s signature through ``signature_of``), ``relay`` turns its steps into other messages (what the
FiftyOne operators do). Stopping a run is closing its generator: it stops at the step it is at, keeping
the work finished so far.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Generator
from contextlib import closing
from typing import Any, NamedTuple, TypeVar

from ntt.types import Progress

T = TypeVar("T")


class Step(NamedTuple):
    """One progress report of a run: ``fraction`` done in [0, 1] and the stage's ``label``."""

    fraction: float
    label: str


Steps = Generator[Step, None, T]
"""A run: yields ``Step``\\ s, returns its result (``StopIteration.value``)."""


def relay(steps: Steps[T], emit: Callable[[Step], Any]) -> Generator[Any, None, T]:
    """Yield ``emit(step)`` for each step of ``steps`` and return its result; closing this generator, or an
    error in ``emit``, closes ``steps``."""
    with closing(steps):
        while True:
            try:
                step = next(steps)
            except StopIteration as stop:
                return stop.value
            yield emit(step)


def drive(steps: Steps[T], progress: Progress | None = None) -> T:
    """Run ``steps`` to the end, calling ``progress(fraction, label)`` for each step; return its result."""
    relayed = relay(steps, (lambda step: progress(*step)) if progress else (lambda step: None))
    try:
        while True:
            next(relayed)
    except StopIteration as stop:
        return stop.value


def signature_of(steps_fn: Callable[..., Steps[Any]]) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorator: the plain twin of ``steps_fn`` (taking its arguments through ``*args, **kwargs``) shows
    ``steps_fn``'s signature plus the keyword ``progress`` in ``help`` and editors."""

    def decorate(plain: Callable[..., T]) -> Callable[..., T]:
        sig = inspect.signature(steps_fn)
        progress = inspect.Parameter("progress", inspect.Parameter.KEYWORD_ONLY, default=None)
        returns = inspect.signature(plain).return_annotation
        plain.__signature__ = sig.replace(parameters=[*sig.parameters.values(), progress], return_annotation=returns)
        return plain

    return decorate
