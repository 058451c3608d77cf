"""Build a named memory bank from the tagged references, or add newly tagged ones to it (SDK:
``ntt.fo.build_bank``, ``ntt.fo.add_references``)."""

from __future__ import annotations

import fiftyone.operators.types as types

from .. import inputs as ui
from .. import runner
from .base import BackgroundOperator
from .manage import brief, brief_outputs


class BuildBank(BackgroundOperator):
    @property
    def config(self):
        return self.background_config(
            "build_bank",
            "NTT: build memory bank",
            "Encode the tagged reference instances of a Detections field into a named memory bank",
        )

    def form(self, inputs, ctx):
        nfo = ui.sdk()
        if ctx.dataset.media_type != "image":
            return ui.invalid(inputs, f"NTT works on images; this dataset's media type is {ctx.dataset.media_type}.")
        view = ui.target_input(inputs, ctx, "Take references from")
        field = ui.field_input(
            inputs, ctx, "label_field", "Reference field", "Detections with masks (or boxes)", "ground_truth"
        )
        if field is None:
            return ui.invalid(inputs, "This dataset has no Detections field to take references from.")
        if ui.field_problem(ctx.dataset, field):
            return ui.invalid(inputs, ui.field_problem(ctx.dataset, field))
        tag = ui.tag_input(inputs, ctx)
        refs = nfo.reference_ids(view, tag, field)
        if not refs:
            return ui.invalid(
                inputs,
                f"No references: no sample or label here is tagged '{tag}'. "
                "Tag a few good examples first ('NTT: mark references').",
            )
        inputs.view("found", types.Notice(label=f"{len(refs)} reference sample(s) found"))
        inputs.str("bank", label="Bank name", default="bank", required=True, description="Letters, digits and _")
        name = ui.param(ctx, "bank", "bank")
        try:
            nfo.check_bank_name(name)
        except nfo.NTTFiftyOneError as err:
            return ui.invalid(inputs, str(err))
        exists = name in nfo.list_banks(ctx.dataset)
        inputs.bool("overwrite", label="Replace the existing bank" if exists else "Replace if it exists", default=False)
        if exists and not ui.param(ctx, "overwrite", False):
            return ui.invalid(inputs, f"A bank named '{name}' exists: tick 'Replace' or choose another name.")
        problem = ui.model_inputs(inputs, ctx)
        if problem:
            return ui.invalid(inputs, problem)
        ui.delegation_notice(inputs, len(refs), "reference samples")
        return ui.form(inputs, "Build NTT memory bank")

    def run_size(self, ctx) -> int:
        return ui.reference_count(ctx, ui.param(ctx, "label_field"))

    def execute(self, ctx):
        nfo = ui.sdk()
        name = ui.param(ctx, "bank", "bank")
        kwargs = dict(
            label_field=ctx.params["label_field"],
            tag=ui.reference_tag(ctx),
            preset=ui.param(ctx, "preset", "paper"),
            config=ui.config_overrides(ctx),
            device=ui.device(ctx),
            overwrite=bool(ui.param(ctx, "overwrite", False)),
        )
        view = ctx.target_view()  # resolved here: the worker thread of an immediate run has no App context

        def work(progress):
            bank = nfo.build_bank(view, name, progress=progress, **kwargs)
            return {
                "bank": name,
                "classes": len(bank.classes),
                "shots": len(bank.shots),
                "shots_per_class": bank.shots_per_class(),
                "encoder": bank.encoder.get("name"),
            }

        return runner.run(ctx, work, self.resolve_output(ctx))

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("bank", label="Bank")
        outputs.int("classes", label="Classes")
        outputs.int("shots", label="Shots (reference instances)")
        outputs.obj("shots_per_class", label="Shots per class", view=types.JSONView())
        outputs.str("encoder", label="Encoder")
        return types.Property(outputs)


class AddReferences(BackgroundOperator):
    @property
    def config(self):
        return self.background_config(
            "add_references",
            "NTT: add references to a bank",
            "Encode newly tagged reference instances into an existing bank (its other shots are kept as they are)",
        )

    def form(self, inputs, ctx):
        nfo = ui.sdk()
        bank = ui.bank_input(inputs, ctx)
        if bank is None:
            return ui.invalid(inputs, ui.NO_BANK)
        info = nfo.get_bank_info(ctx.dataset, bank)
        nfo.load_bank(ctx.dataset, bank)  # a missing or corrupted file is the form's message
        view = ui.target_input(inputs, ctx, "Take references from")
        fields = ui.detections_fields(ctx.dataset)
        ui.field_input(
            inputs,
            ctx,
            "label_field",
            "Reference field",
            "Detections holding the new references",
            info.get("label_field"),
            fields=fields,
            required=False,  # the SDK defaults to the bank's field
        )
        tag = ui.tag_input(inputs, ctx)
        field = ui.param(ctx, "label_field", info.get("label_field"))
        if field not in fields:
            return ui.invalid(inputs, f"'{field}' is not a Detections field of this dataset.")
        refs = nfo.reference_ids(view, tag, field)
        if not refs:
            return ui.invalid(
                inputs,
                f"No references: nothing here is tagged '{tag}'. Tag the new examples first ('NTT: mark references').",
            )
        inputs.view(
            "models",
            types.Notice(
                label=f"{len(refs)} reference sample(s); shots already in the bank are skipped, new ones are "
                f"encoded with the bank's own models ({info['encoder']['name']})"
            ),
        )
        ui.device_input(inputs)
        problem = ui.device_problem(ctx, ui.param(ctx, "device", "auto"), inputs)
        if problem:
            return ui.invalid(inputs, problem)
        ui.delegation_notice(inputs, len(refs), "reference samples")
        return ui.form(inputs, "Add references to an NTT bank")

    def run_size(self, ctx) -> int:
        nfo = ui.sdk()
        bank = ctx.params.get("bank")
        if bank not in nfo.list_banks(ctx.dataset):
            return 0
        field = ui.param(ctx, "label_field") or nfo.get_bank_info(ctx.dataset, bank).get("label_field")
        return ui.reference_count(ctx, field)

    def execute(self, ctx):
        nfo = ui.sdk()
        name = ctx.params.get("bank")
        kwargs = dict(
            label_field=ui.param(ctx, "label_field"),
            tag=ui.reference_tag(ctx),
            device=ui.device(ctx),
        )
        view = ctx.target_view()  # resolved here: the worker thread of an immediate run has no App context

        def work(progress):
            before = nfo.get_bank_info(view, name)["num_shots"]
            nfo.add_references(view, name, progress=progress, **kwargs)
            info = nfo.get_bank_info(view, name)
            added = info["num_shots"] - before
            note = f"{added} new shot(s) encoded" if added else "Nothing new: every reference is in the bank already"
            return {"bank": name, "added": added, "message": note, **brief(info)}

        return runner.run(ctx, work, self.resolve_output(ctx))

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("message", label="Result")
        outputs.int("added", label="Shots added")
        return types.Property(brief_outputs(outputs, "Updated"))
