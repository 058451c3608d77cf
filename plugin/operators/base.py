"""What the operators share: the dependency check that opens every form, and the execution choice of the
model-running operators (immediate or delegated)."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from .. import inputs as ui
from .. import runner


class NTTOperator(foo.Operator):
    """An operator whose form first checks that the ntt library imports; subclasses build the rest in
    ``form``. An SDK error raised while building the form (a bank whose file is gone, a bad value) becomes
    the form's one message instead of a traceback."""

    def resolve_input(self, ctx):
        inputs = types.Object()
        problem = ui.dependency_problem()
        if problem:
            return ui.invalid(inputs, problem)
        try:
            return self.form(inputs, ctx)
        except runner.sdk_errors() as err:
            return ui.invalid(inputs, runner.explain(err))

    def form(self, inputs, ctx):
        """The operator's form on ``inputs`` (called only when ntt is usable)."""
        raise NotImplementedError


class BackgroundOperator(NTTOperator):
    """A model-running operator: immediate or delegated, delegated by default for large runs and whenever the
    ``delegate`` param is true. Subclasses say how many samples a run covers (``run_size``)."""

    @staticmethod
    def background_config(name: str, label: str, description: str) -> foo.OperatorConfig:
        """The config every model-running operator shares: a dynamic generator, immediate or delegated."""
        return foo.OperatorConfig(
            name=name,
            label=label,
            description=description,
            dynamic=True,
            execute_as_generator=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            icon="/assets/icon.svg",
        )

    def run_size(self, ctx) -> int:
        raise NotImplementedError

    def resolve_delegation(self, ctx):
        return runner.forced_delegation(ctx)

    def resolve_execution_options(self, ctx):
        try:
            size = self.run_size(ctx)
        except Exception:  # noqa: BLE001 - an incomplete form must not break the execution choice
            size = 0
        return runner.execution_options(ctx, size)
