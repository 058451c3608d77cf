"""Running SDK calls from operators: clear messages for SDK errors, execution options, and stage-labelled
progress in both execution modes.

Progress: the SDK's long runs are generators of ``Step(fraction, label)`` (``ntt.fo.segment_steps`` ...).
Delegated runs drive them to the end, forwarding each step to ``ctx.set_progress`` (stored with the
operation). Immediate runs are generators themselves: one ``set_progress`` trigger per step, so the App's bar
moves while the work runs. If the App stops reading (closed prompt), closing the operator's generator closes
the SDK's at the step it is at; labels already written stay (segmenting resumes with ``skip_existing``).
"""

from __future__ import annotations

import contextlib

import fiftyone.operators as foo

from .settings import DELEGATE_ABOVE

_HINTS = {
    "WeightsNotFoundError": "Model weights not found",
    "CheckpointError": "Unusable checkpoint",
    "BankError": "Memory bank problem",
    "InvalidReferenceError": "Invalid reference",
    "ConfigError": "Invalid settings",
    "ImageLoadError": "Unreadable image",
    "JobStopped": "Stopped",
    "NTTFiftyOneError": "Cannot run",
}


class OperatorFailure(RuntimeError):
    """An SDK error as the one-line message the App shows."""


def sdk_errors() -> tuple[type[Exception], ...]:
    """The SDK's own error types: their messages say what is wrong and what to do."""
    from ntt.bank.encoder import InvalidReferenceError
    from ntt.bank.memory import BankError
    from ntt.config import ConfigError
    from ntt.fo import NTTFiftyOneError
    from ntt.io.images import ImageLoadError
    from ntt.models.weights import CheckpointError, WeightsNotFoundError

    known = (NTTFiftyOneError, InvalidReferenceError, BankError, WeightsNotFoundError, CheckpointError, ConfigError)
    return (*known, ImageLoadError)


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


def background_available() -> bool:
    """Whether this App can schedule runs for ``fiftyone delegated launch``: open-source FiftyOne offers "Schedule"
    only with ``FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS=true`` (otherwise it lists registered orchestrators, which
    only FiftyOne Enterprise has)."""
    import fiftyone as fo

    return bool(fo.config.allow_legacy_orchestrators)


def execution_options(ctx, count: int, distributed: bool = False) -> foo.ExecutionOptions:
    """Both modes allowed; "Schedule" preferred above ``DELEGATE_ABOVE`` when this App can schedule; only
    delegated when forced (``delegate=True``). ``distributed`` declares FiftyOne Enterprise's fan-out (open-source
    FiftyOne ignores it: ntt's own sharded runs spread a run over workers there)."""
    if ctx.params.get("delegate"):
        return foo.ExecutionOptions(
            allow_immediate_execution=False, allow_delegated_execution=True, allow_distributed_execution=distributed
        )
    return foo.ExecutionOptions(
        allow_immediate_execution=True,
        allow_delegated_execution=True,
        default_choice_to_delegated=count > DELEGATE_ABOVE and background_available(),
        allow_distributed_execution=distributed,
    )


def reload(ctx) -> None:
    """Ask the App to reload the dataset after a non-generator run (nothing to do without an App)."""
    if ctx.executor is not None and not ctx.delegated:
        ctx.trigger("reload_dataset")


def forced_delegation(ctx) -> bool | None:
    """``delegate=True`` forces a delegated run; otherwise the user's (or caller's) choice stands."""
    return True if ctx.params.get("delegate") else None


def run(ctx, steps, outputs, show_field: str | None = None, show_view=None, open_panel: str | None = None):
    """What ``execute`` returns for ``steps``, a generator of ``Step``\\ s that returns the run's summary.

    Delegated: runs it now, reports to ``ctx.set_progress`` and returns the summary (stored with the
    operation and shown by ``resolve_output``). Immediate: returns a generator of App messages (progress,
    then reload, ``show_field`` made visible, the view ``show_view(summary)`` and the panel ``open_panel`` opened
    when given, a notification
    and the summary in ``outputs``); closing it closes ``steps``, and so does 'NTT: jobs' (``ntt.fo.stop_job``)
    at the next step.
    """
    from ntt.steps import drive  # lazily, as every ntt import here: a missing dependency is the form's message

    if ctx.delegated:
        with clear_errors():
            return drive(steps, lambda fraction, label: ctx.set_progress(progress=fraction, label=label))
    return _stream(ctx, steps, outputs, show_field, show_view, open_panel)


def submitted(ctx, submit, outputs):
    """What ``execute`` returns for a sharded run: ``submit()`` queues it (an SDK error becomes the App's message);
    the summary (run id, shards) is returned when delegated, else notified and shown."""
    with clear_errors():
        result = submit()
    if ctx.delegated:
        return result
    return _announce(ctx, result, outputs)


def _announce(ctx, result, outputs):
    message = f"Queued {result['shards']} shard(s) of {result['samples']} samples for ntt workers: see 'NTT: jobs'"
    yield ctx.trigger("notify", dict(message=message, variant="success"))
    yield ctx.trigger("show_output", dict(outputs=outputs.to_json(), results=result))


def _stream(ctx, steps, outputs, show_field, show_view, open_panel=None):
    from ntt.fo.steps import tracked
    from ntt.steps import relay

    def show(step):
        return ctx.trigger("set_progress", dict(progress=step.fraction, label=step.label))

    operation = ctx.operator_uri.rsplit("/", 1)[-1]
    try:  # listed by 'NTT: jobs', which can stop it at its next step
        result = yield from relay(tracked(steps, ctx.dataset.name, operation), show)
    except Exception as err:  # noqa: BLE001 - shown in the App, then raised as the run's error
        known = isinstance(err, sdk_errors())
        message = explain(err) if known else f"{type(err).__name__}: {err}"
        yield ctx.trigger("notify", dict(message=message, variant="error"))
        if known:
            raise OperatorFailure(message) from err
        raise
    yield ctx.trigger("reload_dataset")
    if show_field:  # a new field starts unticked in the sidebar: show the labels just written
        yield ctx.trigger("set_active_fields", dict(fields=sorted({*ctx.active_fields, show_field})))
    if show_view is not None:
        yield ctx.ops.set_view(show_view(result))
    if open_panel is not None:
        yield ctx.ops.open_panel(open_panel, layout="horizontal")
    yield ctx.trigger("notify", dict(message=summary_line(result), variant="success"))
    yield ctx.trigger("show_output", dict(outputs=outputs.to_json(), results=result))


def summary_line(result) -> str:
    parts = [f"{k}: {v}" for k, v in (result or {}).items() if isinstance(v, (int, float, str))]
    return "Done. " + ", ".join(parts)
