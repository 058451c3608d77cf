"""Build a named memory bank from the tagged references (SDK: ``ntt.fo.build_bank``)."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from .. import inputs as ui


class BuildBank(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="build_bank",
            label="NTT: build memory bank",
            description="Encode the tagged reference instances into a named memory bank",
            dynamic=True,
            execute_as_generator=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            default_choice_to_delegated=False,
            icon="/assets/icon.svg",
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        problem = ui.dependency_problem()
        if problem:
            return ui.invalid(inputs, problem)
        nfo = ui.sdk()
        tag = ctx.params.get("tag") or nfo.DEFAULT_TAG
        inputs.view_target(ctx, action_description="Take references from")
        view = ui.target_view(ctx)
        if not ui.field_input(inputs, ctx, "label_field", "Reference field", "Detections with masks or boxes"):
            return ui.invalid(inputs, "This dataset has no Detections field to take references from.")
        refs = nfo.reference_ids(view, tag, ctx.params.get("label_field"))
        if not refs:
            return ui.invalid(
                inputs,
                f"No references: tag samples or labels with '{tag}' first ('NTT: mark references').",
            )
        inputs.view("found", types.Notice(label=f"{len(refs)} reference sample(s) found"))
        inputs.str("name", label="Bank name", default="bank", required=True, description="Letters, digits, _")
        name = ctx.params.get("name", "bank")
        try:
            nfo.check_bank_name(name)
        except nfo.NTTFiftyOneError as err:
            return ui.invalid(inputs, str(err))
        exists = name in nfo.list_banks(ctx.dataset)
        inputs.bool("overwrite", label="Replace the existing bank" if exists else "Overwrite", default=False)
        if exists and not ctx.params.get("overwrite"):
            return ui.invalid(inputs, f"A bank named '{name}' exists: tick 'Replace' or choose another name.")
        inputs.str("tag", label="Reference tag", default=nfo.DEFAULT_TAG)
        ui.model_inputs(inputs)
        ui.delegation_input(inputs, ctx, view.select(refs))
        return types.Property(inputs, view=types.View(label="Build NTT memory bank"))

    def resolve_delegation(self, ctx):
        return ctx.params.get("delegate") if "delegate" in ctx.params else None

    def resolve_execution_options(self, ctx):
        return ui.execution_options(ctx)

    def execute(self, ctx):
        nfo = ui.sdk()
        p = ctx.params
        name = p.get("name", "bank")

        def work(progress):
            bank = nfo.build_bank(
                ui.target_view(ctx),
                name,
                label_field=p["label_field"],
                tag=p.get("tag") or nfo.DEFAULT_TAG,
                preset=p.get("preset", "paper"),
                config=p.get("config"),
                device=None if p.get("device", "auto") == "auto" else p["device"],
                overwrite=bool(p.get("overwrite")),
                progress=progress,
            )
            return {"bank": name, "classes": len(bank.classes), "shots": len(bank.shots)}

        yield from ui.run_with_progress(ctx, work)
