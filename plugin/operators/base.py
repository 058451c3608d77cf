"""What the operators share: the config (dynamic, with the plugin's icon), the dependency check that opens every
form, the samples-grid button, and for the model-running operators the execution choice (immediate or
delegated) and the ``__call__`` that runs them from Python like FiftyOne's own operators."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from .. import runner, settings
from .. import widgets as ui

ICON = "/assets/icon.svg"
BUTTON_ICON = "/assets/icon-button.svg"  # white: the samples grid draws its buttons on the App's orange


def operator_config(name: str, label: str, description: str, **kwargs) -> foo.OperatorConfig:
    """The config every ntt operator has: dynamic (forms re-check every change), with the plugin's icon."""
    return foo.OperatorConfig(name=name, label=label, description=description, dynamic=True, icon=ICON, **kwargs)


def grid_button(ctx, label: str):
    """A button in the App's samples grid actions that opens the operator's form (image datasets only)."""
    if ctx.dataset is None or ctx.dataset.media_type != "image":
        return None
    button = types.Button(label=label, icon=BUTTON_ICON, prompt=True)
    return types.Placement(types.Places.SAMPLES_GRID_ACTIONS, button)


class NTTOperator(foo.Operator):
    """An operator whose form first checks that the ntt library imports; subclasses build the rest in
    ``form``. An SDK error raised while building the form (a bank whose file is gone, a bad value) becomes
    the form's one message instead of a traceback."""

    def resolve_input(self, ctx):
        inputs = types.Object()
        problem = settings.dependency_problem()
        try:
            form = ui.invalid(inputs, problem) if problem else self.form(inputs, ctx)
        except runner.sdk_errors() as err:
            form = ui.invalid(inputs, runner.explain(err))
        if form.invalid:  # the App shows the reason in red above the form: the title stays the operator's
            form.view = types.View(label=f"{self.config.label}: cannot run")
        return form

    def form(self, inputs, ctx):
        """The operator's form on ``inputs`` (called only when ntt is usable)."""
        raise NotImplementedError


class BackgroundOperator(NTTOperator):
    """A model-running operator: immediate or delegated, delegated by default for large runs and whenever the
    ``delegate`` param is true. Subclasses say how many samples a run covers (``run_size``)."""

    distributed = False  # whether FiftyOne Enterprise may fan a run out over several tasks

    @staticmethod
    def background_config(name: str, label: str, description: str) -> foo.OperatorConfig:
        """The config every model-running operator shares: a dynamic generator, immediate or delegated."""
        return operator_config(
            name,
            label,
            description,
            execute_as_generator=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def run_on(self, call: dict):
        """What ``__call__`` does, as in FiftyOne's own operators: run on ``call["sample_collection"]`` (a dataset
        or view) with the other arguments of ``__call__`` (its ``locals()``) as params (None values left out, so
        the form's defaults apply), now or queued for ``fiftyone delegated launch`` (``delegate=True``,
        optionally on the orchestrator ``delegation_target``).

        Returns:
            FiftyOne's ``ExecutionResult`` (an ``asyncio.Task`` in a notebook). An immediate run streams its
            progress and summary to the App, so its ``result`` is None: call ``ntt.fo`` for the summary.
        """
        params = {key: value for key, value in call.items() if key != "self" and value is not None}
        ctx = dict(view=params.pop("sample_collection").view())
        delegate, target = params.pop("delegate", False), params.pop("delegation_target", None)
        return foo.execute_operator(self.uri, ctx, params=params, request_delegation=delegate, delegation_target=target)

    def run_size(self, ctx) -> int:
        raise NotImplementedError

    def resolve_delegation(self, ctx):
        return runner.forced_delegation(ctx)

    def resolve_execution_options(self, ctx):
        try:
            size = self.run_size(ctx)
        except Exception:  # noqa: BLE001 - an incomplete form must not break the execution choice
            size = 0
        return runner.execution_options(ctx, size, self.distributed)
