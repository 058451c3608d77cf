"""Build a named memory bank from the tagged references, or add newly tagged ones to it (SDK:
``ntt.fo.build_bank``, ``ntt.fo.add_references``)."""

from __future__ import annotations

import fiftyone.operators.types as types

from .. import runner, settings
from .. import widgets as ui
from ..settings import param, sdk
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

    def __call__(
        self,
        sample_collection,
        bank: str,
        label_field: str,
        tag: str | None = None,
        preset: str = "paper",
        config: dict | None = None,
        device: str | None = None,
        overwrite: bool = False,
        classes: list[str] | None = None,
        delegate: bool = False,
        delegation_target: str | None = None,
    ):
        """Build the bank ``bank`` from the references of a dataset or view, as ``ntt.fo.build_bank`` does, through
        this operator: ``delegate=True`` queues it for ``fiftyone delegated launch`` (see ``run_on``)."""
        return self.run_on(locals())

    def form(self, inputs, ctx):
        nfo = sdk()
        if ctx.dataset.media_type != "image":
            return ui.invalid(inputs, f"NTT works on images; this dataset's media type is {ctx.dataset.media_type}.")
        view = ui.target_input(inputs, ctx, "Take references from")
        field = ui.field_input(
            inputs, ctx, "label_field", "Reference field", "Detections with masks (or boxes)", "ground_truth"
        )
        if field is None:
            return ui.invalid(inputs, "This dataset has no Detections field to take references from.")
        nfo.forms.check_detections_field(ctx.dataset, field)
        tag = ui.tag_input(inputs, ctx)
        refs = nfo.forms.reference_ids(view, tag, field)
        if not refs:
            elsewhere = len(nfo.forms.reference_ids(ctx.dataset, tag, field))
            if elsewhere:
                message = f"No references among the chosen samples; the whole dataset has {elsewhere}: choose it above."
            else:
                message = f"No references: nothing here is tagged '{tag}'. Tag good examples ('NTT: mark references')."
            return ui.invalid(inputs, message)
        inputs.view("found", types.Notice(label=f"{len(refs)} reference sample(s) found"))
        ui.classes_input(inputs, nfo.references.reference_classes(view, field, tag))
        inputs.str("bank", label="Bank name", default="bank", required=True, description="Letters, digits and _")
        name = param(ctx, "bank", "bank")
        try:
            nfo.forms.check_bank_name(name)
        except nfo.NTTFiftyOneError as err:
            return ui.invalid(inputs, str(err))
        exists = name in nfo.list_banks(ctx.dataset)
        inputs.bool("overwrite", label="Replace the existing bank" if exists else "Replace if it exists", default=False)
        if exists and not param(ctx, "overwrite", False):
            return ui.invalid(inputs, f"A bank named '{name}' exists: tick 'Replace' or choose another name.")
        problem = ui.model_inputs(inputs, ctx, kinds=("dinov2",))
        if problem:
            return ui.invalid(inputs, problem)
        ui.delegation_notice(inputs, len(refs), "reference samples")
        return ui.form(inputs, "Build NTT memory bank")

    def run_size(self, ctx) -> int:
        return settings.reference_count(ctx, param(ctx, "label_field"))

    def execute(self, ctx):
        nfo = sdk()
        name = param(ctx, "bank", "bank")
        kwargs = dict(
            label_field=ctx.params["label_field"],
            tag=settings.reference_tag(ctx),
            preset=param(ctx, "preset", settings.default_preset()),
            config=settings.config_overrides(ctx),
            device=settings.device(ctx),
            overwrite=bool(param(ctx, "overwrite", False)),
            classes=param(ctx, "classes") or None,
        )
        view = ctx.target_view()

        def steps():
            bank = yield from nfo.steps.build_bank_steps(view, name, **kwargs)
            return {
                "bank": name,
                "classes": len(bank.classes),
                "shots": len(bank.shots),
                "shots_per_class": bank.shots_per_class(),
                "encoder": bank.encoder.get("name"),
            }

        return runner.run(ctx, steps(), self.resolve_output(ctx))

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

    def __call__(
        self,
        sample_collection,
        bank: str,
        label_field: str | None = None,
        tag: str | None = None,
        device: str | None = None,
        delegate: bool = False,
        delegation_target: str | None = None,
    ):
        """Add the new references of a dataset or view to ``bank``, as ``ntt.fo.add_references`` does, through this
        operator: ``delegate=True`` queues it for ``fiftyone delegated launch`` (see ``run_on``)."""
        return self.run_on(locals())

    def form(self, inputs, ctx):
        nfo = sdk()
        bank = ui.bank_input(inputs, ctx)
        if bank is None:
            return ui.invalid(inputs, ui.NO_BANK)
        info = nfo.get_bank_info(ctx.dataset, bank)
        nfo.load_bank(ctx.dataset, bank)  # a missing or corrupted file is the form's message
        view = ui.target_input(inputs, ctx, "Take references from")
        ui.field_input(
            inputs,
            ctx,
            "label_field",
            "Reference field",
            "Detections holding the new references",
            info.get("label_field"),
            required=False,  # the SDK defaults to the bank's field
        )
        tag = ui.tag_input(inputs, ctx)
        field = param(ctx, "label_field", info.get("label_field"))
        nfo.forms.check_detections_field(ctx.dataset, field)
        refs = nfo.forms.reference_ids(view, tag, field)
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
        problem = ui.device_input(inputs, ctx)
        if problem:
            return ui.invalid(inputs, problem)
        ui.delegation_notice(inputs, len(refs), "reference samples")
        return ui.form(inputs, "Add references to an NTT bank")

    def run_size(self, ctx) -> int:
        nfo = sdk()
        bank = ctx.params.get("bank")
        if bank not in nfo.list_banks(ctx.dataset):
            return 0
        field = param(ctx, "label_field") or nfo.get_bank_info(ctx.dataset, bank).get("label_field")
        return settings.reference_count(ctx, field)

    def execute(self, ctx):
        nfo = sdk()
        name = ctx.params.get("bank")
        kwargs = dict(
            label_field=param(ctx, "label_field"),
            tag=settings.reference_tag(ctx),
            device=settings.device(ctx),
        )
        view = ctx.target_view()

        def steps():
            before = nfo.get_bank_info(view, name)["num_shots"]
            yield from nfo.steps.add_references_steps(view, name, **kwargs)
            info = nfo.get_bank_info(view, name)
            added = info["num_shots"] - before
            note = f"{added} new shot(s) encoded" if added else "Nothing new: every reference is in the bank already"
            return {"bank": name, "added": added, "message": note, **brief(info)}

        return runner.run(ctx, steps(), self.resolve_output(ctx))

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("message", label="Result")
        outputs.int("added", label="Shots added")
        return types.Property(brief_outputs(outputs, "Updated"))
