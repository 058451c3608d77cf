"""List, inspect, rename, delete banks and add references to one (SDK: ``ntt.fo`` bank functions)."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from .. import inputs as ui
from .base import NTTOperator

ACTIONS = {
    "info": "Show a bank's classes and shots",
    "add_references": "Add the tagged references to a bank",
    "rename": "Rename a bank",
    "delete": "Delete a bank",
}


class ManageBanks(NTTOperator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="manage_banks",
            label="NTT: manage banks",
            description="Inspect, extend, rename or delete the dataset's memory banks",
            dynamic=True,
        )

    def resolve_input(self, ctx):
        inputs, unusable = self.start_form()
        if unusable:
            return unusable
        actions = types.RadioGroup()
        for key, label in ACTIONS.items():
            actions.add_choice(key, label=label)
        inputs.enum("action", actions.values(), label="Action", default="info", view=actions)
        if not ui.bank_input(inputs, ctx):
            return ui.invalid(inputs, "This dataset has no NTT bank yet.")
        action = ctx.params.get("action", "info")
        if action == "rename":
            inputs.str("new_name", label="New name", required=True)
            new = ctx.params.get("new_name")
            if new:
                try:
                    ui.sdk().check_bank_name(new)
                except ui.sdk().NTTFiftyOneError as err:
                    return ui.invalid(inputs, str(err))
        elif action == "add_references":
            inputs.str("tag", label="Reference tag", default=ui.sdk().DEFAULT_TAG)
        elif action == "delete":
            inputs.view("sure", types.Warning(label="The bank and its file are deleted"))
        return types.Property(inputs, view=types.View(label="Manage NTT banks"))

    def execute(self, ctx):
        nfo = ui.sdk()
        p = ctx.params
        action, name = p.get("action", "info"), p["bank"]
        if action == "rename":
            nfo.rename_bank(ctx.dataset, name, p["new_name"])
        elif action == "delete":
            nfo.delete_bank(ctx.dataset, name)
        elif action == "add_references":
            nfo.add_references(ctx.dataset, name, tag=p.get("tag") or nfo.DEFAULT_TAG)
        banks = nfo.list_banks(ctx.dataset)
        out = {"action": action, "banks": banks}
        shown = p.get("new_name") if action == "rename" else name
        if shown in banks:
            info = nfo.get_bank_info(ctx.dataset, shown)
            out.update(bank=shown, shots_per_class=info["shots_per_class"], encoder=info["encoder"]["name"])
        return out

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.list("banks", types.String(), label="Banks")
        outputs.str("bank", label="Bank")
        outputs.obj("shots_per_class", label="Shots per class", view=types.JSONView())
        outputs.str("encoder", label="Encoder")
        return types.Property(outputs)
