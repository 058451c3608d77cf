"""Bank management, one operator per action as FiftyOne manages its brain and evaluation runs: show a bank's
info, rename it, delete it (SDK: ``get_bank_info``, ``rename_bank``, ``delete_bank``; ``list_banks`` fills
their bank dropdowns). Adding references is its own background operator (``add_references``)."""

from __future__ import annotations

from pathlib import Path

import fiftyone.operators.types as types

from .. import runner
from .. import widgets as ui
from ..settings import param, sdk
from .base import NTTOperator, operator_config


class BankInfo(NTTOperator):
    @property
    def config(self):
        return operator_config("bank_info", "NTT: bank info", "Show a bank's classes, shots, reference field, models")

    def form(self, inputs, ctx):
        if ui.bank_input(inputs, ctx, description="The bank to show") is None:
            return ui.invalid(inputs, ui.NO_BANK)
        return ui.form(inputs, "NTT bank info")

    def execute(self, ctx):
        nfo = sdk()
        name = ctx.params["bank"]
        with runner.clear_errors():
            return {"bank": name, "banks": nfo.list_banks(ctx.dataset), **brief(nfo.get_bank_info(ctx.dataset, name))}

    def resolve_output(self, ctx):
        outputs = brief_outputs(types.Object(), "Built")
        outputs.list("banks", types.String(), label="All banks of this dataset")
        return types.Property(outputs)


class RenameBank(NTTOperator):
    @property
    def config(self):
        return operator_config("rename_bank", "NTT: rename bank", "Give a bank a new name (its file stays as it is)")

    def form(self, inputs, ctx):
        if ui.bank_input(inputs, ctx, description="The bank to rename") is None:
            return ui.invalid(inputs, ui.NO_BANK)
        inputs.str("new_name", label="New name", required=True, description="Letters, digits and _")
        problem = self._new_name_problem(ctx, param(ctx, "new_name"))
        if problem:
            return ui.invalid(inputs, problem)
        return ui.form(inputs, "Rename an NTT bank")

    @staticmethod
    def _new_name_problem(ctx, new: str | None) -> str | None:
        if not new:
            return None  # "required" keeps Execute disabled until a name is typed
        nfo = sdk()
        try:
            nfo.forms.check_bank_name(new)
        except nfo.NTTFiftyOneError as err:
            return str(err)
        if new in ctx.dataset.list_runs():
            return f"A bank or run named '{new}' exists already."
        return None

    def execute(self, ctx):
        nfo = sdk()
        old, new = ctx.params["bank"], ctx.params["new_name"]
        with runner.clear_errors():
            nfo.rename_bank(ctx.dataset, old, new)
        return {"renamed_from": old, "bank": new, "banks": nfo.list_banks(ctx.dataset)}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("renamed_from", label="Old name")
        outputs.str("bank", label="New name")
        outputs.list("banks", types.String(), label="Banks")
        return types.Property(outputs, view=types.View(label="Bank renamed"))


class DeleteBank(NTTOperator):
    @property
    def config(self):
        return operator_config("delete_bank", "NTT: delete bank", "Delete a bank and its file")

    def form(self, inputs, ctx):
        bank = ui.bank_input(inputs, ctx, description="The bank to delete")
        if bank is None:
            return ui.invalid(inputs, ui.NO_BANK)
        info = sdk().get_bank_info(ctx.dataset, bank)
        inputs.view(
            "warning",
            types.Warning(
                label=f"You are about to delete bank '{bank}': {info['num_shots']} shot(s) of "
                f"{len(info['classes'])} class(es) from '{info['label_field']}'",
                description=f"Its record and its file {info['bank_path']} are deleted (the file stays while a cloned "
                "dataset's bank still uses it). This cannot be undone; predictions it made stay, and so does their "
                "evaluation.",
            ),
        )
        return ui.form(inputs, "Delete an NTT bank")

    def execute(self, ctx):
        nfo = sdk()
        name = ctx.params["bank"]
        with runner.clear_errors():
            info = nfo.get_bank_info(ctx.dataset, name)
            nfo.delete_bank(ctx.dataset, name)
        path, deleted = info["bank_path"], f"Deleted bank '{name}' ({info['num_shots']} shots)"
        if Path(path).exists():
            message = f"{deleted}; its file {path} is kept: another dataset's bank still uses it"
        else:
            message = f"{deleted} and its file {path}"
        return {"message": message, "deleted": name, "banks": nfo.list_banks(ctx.dataset)}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("message", label="Result")
        outputs.list("banks", types.String(), label="Banks left")
        return types.Property(outputs, view=types.View(label="Bank deleted"))


def brief_outputs(outputs, when: str):
    """The output fields of ``brief`` (plus the bank's name), on ``outputs``; ``when`` labels the timestamp."""
    outputs.str("bank", label="Bank")
    outputs.int("num_shots", label="Shots")
    outputs.obj("shots_per_class", label="Shots per class", view=types.JSONView())
    outputs.obj("negatives_per_class", label="Negative shots per class", view=types.JSONView())
    outputs.str("label_field", label="Reference field")
    outputs.str("settings", label="Preset (and what differs from it)")
    outputs.str("models", label="Models")
    outputs.str("weights", label="DINOv2 weights (content fingerprint)")
    outputs.str("size", label="File size")
    outputs.str("timestamp", label=when)
    return outputs


def brief(info: dict) -> dict:
    """The JSON-friendly essentials of ``get_bank_info``."""
    from ntt.config import describe_settings

    encoder, path = info["encoder"], Path(info["bank_path"])
    sam2 = info.get("config", {}).get("model", {}).get("sam2", "?")
    return {
        "num_shots": info["num_shots"],
        "shots_per_class": info["shots_per_class"],
        "negatives_per_class": info.get("negatives_per_class") or {},
        "label_field": info["label_field"],
        "settings": describe_settings(info.get("config", {})),
        "models": f"SAM2 {sam2}, DINOv2 {encoder['name']} at {encoder['image_size']} px",
        "weights": f"{encoder.get('weights', '?')} ({str(encoder.get('fingerprint', '?'))[:12]})",
        "size": f"{path.stat().st_size / 1e6:.2f} MB" if path.is_file() else f"file missing: {path}",
        "timestamp": info["timestamp"],
    }
