"""List, inspect, rename or delete banks (SDK: ``list_banks``, ``get_bank_info``, ``rename_bank``,
``delete_bank``). Adding references is its own background operator (``add_references``)."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from .. import inputs as ui
from .. import runner
from .base import NTTOperator

ACTIONS = {
    "list": "List the dataset's banks",
    "info": "Show a bank's classes and shots",
    "rename": "Rename a bank",
    "delete": "Delete a bank and its file",
}


class ManageBanks(NTTOperator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="manage_banks",
            label="NTT: manage banks",
            description="List, inspect, rename or delete the dataset's NTT memory banks",
            dynamic=True,
        )

    def form(self, inputs, ctx):
        actions = types.RadioGroup()
        for key, label in ACTIONS.items():
            actions.add_choice(key, label=label)
        inputs.enum("action", actions.values(), label="Action", default="info", view=actions)
        action = ui.param(ctx, "action", "info")
        if action == "list":
            banks = ui.sdk().list_banks(ctx.dataset)
            if not banks:
                return ui.invalid(inputs, ui.NO_BANK)
            return ui.form(inputs, "Manage NTT banks")
        bank = ui.bank_input(inputs, ctx)
        if bank is None:
            return ui.invalid(inputs, ui.NO_BANK)
        check = {"rename": self._rename_inputs, "delete": self._delete_inputs}.get(action)
        problem = check(inputs, ctx, bank) if check else None
        if problem:
            return ui.invalid(inputs, problem)
        return ui.form(inputs, "Manage NTT banks")

    @staticmethod
    def _rename_inputs(inputs, ctx, bank) -> str | None:
        nfo = ui.sdk()
        inputs.str("new_name", label="New name", required=True)
        new = ui.param(ctx, "new_name")
        if not new:
            return None  # "required" keeps Execute disabled until a name is typed
        try:
            nfo.check_bank_name(new)
        except nfo.NTTFiftyOneError as err:
            return str(err)
        if new in ctx.dataset.list_runs():
            return f"A bank or run named '{new}' exists already."
        return None

    @staticmethod
    def _delete_inputs(inputs, ctx, bank) -> str | None:
        inputs.view("sure", types.Warning(label=f"Bank '{bank}' and its file will be deleted"))
        return None

    def execute(self, ctx):
        nfo = ui.sdk()
        action = ui.param(ctx, "action", "info")
        name = ctx.params.get("bank")
        with runner.clear_errors():
            if action == "rename":
                nfo.rename_bank(ctx.dataset, name, ctx.params["new_name"])
                name = ctx.params["new_name"]
            elif action == "delete":
                nfo.delete_bank(ctx.dataset, name)
            banks = nfo.list_banks(ctx.dataset)
            out = {"action": action, "banks": banks}
            if action == "list":
                out["details"] = {b: brief(nfo.get_bank_info(ctx.dataset, b)) for b in banks}
            elif name in banks:
                out.update(bank=name, **brief(nfo.get_bank_info(ctx.dataset, name)))
        return out

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.list("banks", types.String(), label="Banks")
        outputs.obj("details", label="Banks", view=types.JSONView())
        return types.Property(brief_outputs(outputs, "Built"))


def brief_outputs(outputs, when: str):
    """The output fields of ``brief`` (plus the bank's name), on ``outputs``; ``when`` labels the timestamp."""
    outputs.str("bank", label="Bank")
    outputs.int("num_shots", label="Shots")
    outputs.obj("shots_per_class", label="Shots per class", view=types.JSONView())
    outputs.str("label_field", label="Reference field")
    outputs.str("encoder", label="Encoder")
    outputs.str("timestamp", label=when)
    return outputs


def brief(info: dict) -> dict:
    """The JSON-friendly essentials of ``get_bank_info``."""
    return {
        "num_shots": info["num_shots"],
        "shots_per_class": info["shots_per_class"],
        "label_field": info["label_field"],
        "encoder": info["encoder"]["name"],
        "timestamp": info["timestamp"],
    }
