"""What the operators share: the dependency check that opens every form, and background execution."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from .. import inputs as ui


class NTTOperator(foo.Operator):
    """An operator whose form first checks that the ntt library imports."""

    def start_form(self):
        """(inputs, None) when ntt is usable, else (inputs, an invalid form that says why)."""
        inputs = types.Object()
        problem = ui.dependency_problem()
        return inputs, (ui.invalid(inputs, problem) if problem else None)


class BackgroundOperator(NTTOperator):
    """An operator the user may run immediately or delegated (the form's ``delegate`` box decides)."""

    def resolve_delegation(self, ctx):
        return ctx.params.get("delegate") if "delegate" in ctx.params else None

    def resolve_execution_options(self, ctx):
        return foo.ExecutionOptions(allow_immediate_execution=True, allow_delegated_execution=True)
