"""Running SDK calls from operators: clear messages for SDK errors, execution options, and stage-labelled
progress in both execution modes.

Progress: the SDK takes a ``progress(fraction, label)`` callback. Delegated runs forward it to
``ctx.set_progress`` (stored with the operation). Immediate runs are generators: the SDK call runs in a
worker thread whose callback feeds a queue, and the operator yields one ``set_progress`` trigger per event
as it arrives, so the App's bar moves while the work runs. If the App stops reading (closed prompt), the
worker stops at its next progress call; labels already written stay (segmenting resumes with
``skip_existing``).
"""

from __future__ import annotations

import contextlib
import queue
import threading

import fiftyone.operators as foo

from .settings import DELEGATE_ABOVE

_HINTS = {
    "WeightsNotFoundError": "Model weights not found",
    "BankError": "Memory bank problem",
    "InvalidReferenceError": "Invalid reference",
    "ConfigError": "Invalid settings",
    "ImageLoadError": "Unreadable image",
    "NTTFiftyOneError": "Cannot run",
}


class OperatorFailure(RuntimeError):
    """An SDK error as the one-line message the App shows."""


class _Stopped(Exception):
    """Raised inside the worker when the App stopped listening to an immediate run."""


def sdk_errors() -> tuple[type[Exception], ...]:
    """The SDK's own error types: their messages say what is wrong and what to do."""
    from ntt.bank import BankError
    from ntt.bank_encoder import InvalidReferenceError
    from ntt.config import ConfigError
    from ntt.fo import NTTFiftyOneError
    from ntt.images import ImageLoadError
    from ntt.weights import WeightsNotFoundError

    return (NTTFiftyOneError, InvalidReferenceError, BankError, WeightsNotFoundError, ConfigError, ImageLoadError)


def explain(err: BaseException) -> str:
    """``"<what went wrong>: <the SDK's message>"`` for an SDK error."""
    hint = next((_HINTS[k.__name__] for k in type(err).__mro__ if k.__name__ in _HINTS), "Failed")
    return f"{hint}: {err}"


@contextlib.contextmanager
def clear_errors():
    """Re-raise SDK errors as ``OperatorFailure`` with a clear message (the cause stays chained)."""
    try:
        yield
    except sdk_errors() as err:
        raise OperatorFailure(explain(err)) from err


def execution_options(ctx, count: int) -> foo.ExecutionOptions:
    """Both modes allowed; delegated by default above ``DELEGATE_ABOVE``; only delegated when forced."""
    if ctx.params.get("delegate"):
        return foo.ExecutionOptions(allow_immediate_execution=False, allow_delegated_execution=True)
    return foo.ExecutionOptions(
        allow_immediate_execution=True,
        allow_delegated_execution=True,
        default_choice_to_delegated=count > DELEGATE_ABOVE,
    )


def reload(ctx) -> None:
    """Ask the App to reload the dataset after a non-generator run (nothing to do without an App)."""
    if ctx.executor is not None and not ctx.delegated:
        ctx.trigger("reload_dataset")


def forced_delegation(ctx) -> bool | None:
    """``delegate=True`` forces a delegated run; otherwise the user's (or caller's) choice stands."""
    return True if ctx.params.get("delegate") else None


def run(ctx, work, outputs):
    """Run ``work(progress) -> summary`` for ``execute``.

    Delegated: runs now, reports to ``ctx.set_progress`` and returns the summary (stored with the
    operation and shown by ``resolve_output``). Immediate: returns a generator of App messages
    (progress, then reload, a notification and the summary in ``outputs``).
    """
    if ctx.delegated:
        with clear_errors():
            return work(lambda fraction, label: ctx.set_progress(progress=fraction, label=label))
    return _stream(ctx, work, outputs)


def _stream(ctx, work, outputs):
    events: queue.Queue = queue.Queue()
    stop = threading.Event()
    outcome: dict = {}

    def progress(fraction, label):
        if stop.is_set():
            raise _Stopped("the App stopped listening")
        events.put((float(fraction), label))

    def target():
        try:
            outcome["result"] = work(progress)
        except BaseException as err:  # noqa: BLE001 - handed to the operator's thread below
            outcome["error"] = err
        finally:
            events.put(None)

    worker = threading.Thread(target=target, name="ntt-operator", daemon=True)
    worker.start()
    try:
        while (event := events.get()) is not None:
            yield ctx.trigger("set_progress", dict(progress=event[0], label=event[1]))
    finally:
        stop.set()  # a closed generator (App gone) stops the worker at its next progress call
    worker.join()
    err = outcome.get("error")
    if err is not None:
        known = isinstance(err, sdk_errors())
        message = explain(err) if known else f"{type(err).__name__}: {err}"
        yield ctx.trigger("notify", dict(message=message, variant="error"))
        if known:
            raise OperatorFailure(message) from err
        raise err
    result = outcome["result"]
    yield ctx.trigger("reload_dataset")
    yield ctx.trigger("notify", dict(message=summary_line(result), variant="success"))
    yield ctx.trigger("show_output", dict(outputs=outputs.to_json(), results=result))


def summary_line(result) -> str:
    parts = [f"{k}: {v}" for k, v in (result or {}).items() if isinstance(v, (int, float, str))]
    return "Done. " + ", ".join(parts)
