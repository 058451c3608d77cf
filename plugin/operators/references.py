"""Mark / unmark reference instances (SDK: ``ntt.fo.mark_references`` / ``unmark_references``)."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from .. import inputs as ui


class MarkReferences(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="mark_references",
            label="NTT: mark references",
            description="Tag samples (all their instances) or selected labels as references",
            dynamic=True,
            icon="/assets/icon.svg",
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        problem = ui.dependency_problem()
        if problem:
            return ui.invalid(inputs, problem)
        has_labels = bool(ctx.selected_labels)
        modes = types.RadioGroup()
        modes.add_choice("samples", label="Samples", description="Every instance of the chosen samples")
        modes.add_choice("labels", label="Selected labels", description="Only the labels selected in the App")
        mode = ctx.params.get("mode", "labels" if has_labels else "samples")
        inputs.enum("mode", modes.values(), label="Reference", default=mode, view=modes)
        if mode == "labels":
            if not has_labels:
                return ui.invalid(inputs, "Select reference labels in the App first (click labels in the modal).")
            field = ctx.selected_labels[0]["field"]
            if not ui.field_input(inputs, ctx, "label_field", "Label field", "Field of the selected labels", field):
                return ui.invalid(inputs, "This dataset has no Detections field to take references from.")
        else:
            inputs.view_target(ctx, action_description="Mark as references")
        inputs.str("tag", label="Tag", default=ui.sdk().DEFAULT_TAG)
        return types.Property(inputs, view=types.View(label="Mark NTT references"))

    def execute(self, ctx):
        nfo = ui.sdk()
        tag = ctx.params.get("tag") or nfo.DEFAULT_TAG
        if ctx.params.get("mode", "samples") == "labels":
            field = ctx.params["label_field"]
            ids = [s["label_id"] for s in ctx.selected_labels if s.get("field") == field]
            count = nfo.mark_references(ctx.dataset, field, label_ids=ids, tag=tag)
        else:
            count = nfo.mark_references(ui.target_view(ctx), tag=tag)
        if ctx.executor is not None:
            ctx.trigger("reload_dataset")
        return {"tagged": count}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("tagged", label="Tagged")
        return types.Property(outputs)


class UnmarkReferences(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="unmark_references",
            label="NTT: unmark references",
            description="Remove the reference tag from samples and their labels",
            dynamic=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        problem = ui.dependency_problem()
        if problem:
            return ui.invalid(inputs, problem)
        inputs.view_target(ctx, action_description="Unmark")
        inputs.str("tag", label="Tag", default=ui.sdk().DEFAULT_TAG)
        return types.Property(inputs, view=types.View(label="Unmark NTT references"))

    def execute(self, ctx):
        nfo = ui.sdk()
        view = ui.target_view(ctx)
        before = len(nfo.reference_ids(view, ctx.params.get("tag") or nfo.DEFAULT_TAG))
        nfo.unmark_references(view, tag=ctx.params.get("tag") or nfo.DEFAULT_TAG)
        if ctx.executor is not None:
            ctx.trigger("reload_dataset")
        return {"unmarked_samples": before}
