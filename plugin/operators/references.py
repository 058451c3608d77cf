"""Mark / unmark reference instances (SDK: ``ntt.fo.mark_references`` / ``ntt.fo.unmark_references``)."""

from __future__ import annotations

import fiftyone.operators.types as types

from .. import runner, settings
from .. import widgets as ui
from ..settings import param, sdk
from .base import NTTOperator, grid_button, operator_config

MODES = {
    "samples": ("Samples", "Every instance of the chosen samples is a reference (sample tag)"),
    "labels": ("Selected labels", "Only the labels selected in the App are references (label tag)"),
}


class MarkReferences(NTTOperator):
    @property
    def config(self):
        return operator_config(
            "mark_references",
            "NTT: mark references",
            "Tag samples (all their instances) or the selected labels as NTT references",
        )

    def resolve_placement(self, ctx):
        return grid_button(ctx, "NTT: mark references")

    def form(self, inputs, ctx):
        if ctx.dataset is not None and ctx.dataset.media_type != "image":
            return ui.invalid(inputs, f"NTT works on images; this dataset's media type is {ctx.dataset.media_type}.")
        modes = types.RadioGroup()
        for key, (label, description) in MODES.items():
            modes.add_choice(key, label=label, description=description)
        mode = param(ctx, "mode", "labels" if ctx.selected_labels else "samples")
        inputs.enum("mode", modes.values(), label="Reference", default=mode, view=modes)
        if mode == "labels":
            if not ctx.selected_labels:
                return ui.invalid(inputs, "No labels selected: click reference labels in the App's sample view first.")
            selected = _selected_fields(ctx)
            if not selected:
                return ui.invalid(inputs, "None of the selected labels is in a Detections field.")
            ui.field_input(
                inputs,
                ctx,
                "label_field",
                "Label field",
                "Field of the selected labels",
                selected[0],
                fields=sorted(set(selected)),
                required=False,
            )
            field = param(ctx, "label_field", selected[0])
            count = sum(s.get("field") == field for s in ctx.selected_labels)
            inputs.view("count", types.Notice(label=f"{count} selected label(s) of '{field}' will be tagged"))
        else:
            view = ui.target_input(inputs, ctx, "Mark as references")
            inputs.view("count", types.Notice(label=f"{view.count()} sample(s) will be tagged"))
        ui.tag_input(inputs, ctx)
        return ui.form(inputs, "Mark NTT references")

    def execute(self, ctx):
        nfo = sdk()
        tag = settings.reference_tag(ctx)
        with runner.clear_errors():
            if param(ctx, "mode", "samples") == "labels":
                field = param(ctx, "label_field") or _selected_fields(ctx)[0]
                ids = [s["label_id"] for s in ctx.selected_labels if s.get("field") == field]
                count = nfo.mark_references(ctx.dataset, field, label_ids=ids, tag=tag)
            else:
                count = nfo.mark_references(ctx.target_view(), tag=tag)
        runner.reload(ctx)
        return {"tagged": count, "tag": tag}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("tagged", label="Tagged (samples or labels)")
        outputs.str("tag", label="Tag")
        return types.Property(outputs)


def _selected_fields(ctx) -> list[str]:
    """The fields of the selected labels that are Detections fields, in selection order."""
    fields = sdk().forms.detections_fields(ctx.dataset)
    return [s["field"] for s in ctx.selected_labels if s.get("field") in fields]


class UnmarkReferences(NTTOperator):
    @property
    def config(self):
        return operator_config(
            "unmark_references", "NTT: unmark references", "Remove the NTT reference tag from samples and their labels"
        )

    def form(self, inputs, ctx):
        view = ui.target_input(inputs, ctx, "Unmark")
        tag = ui.tag_input(inputs, ctx)
        count = len(sdk().forms.reference_ids(view, tag))
        if not count:
            return ui.invalid(inputs, f"No sample or label tagged '{tag}' here: nothing to unmark.")
        inputs.view("count", types.Notice(label=f"{count} reference sample(s) will be unmarked"))
        return ui.form(inputs, "Unmark NTT references")

    def execute(self, ctx):
        nfo = sdk()
        tag = settings.reference_tag(ctx)
        view = ctx.target_view()
        count = len(nfo.forms.reference_ids(view, tag))
        with runner.clear_errors():
            nfo.unmark_references(view, tag=tag)
        runner.reload(ctx)
        return {"unmarked_samples": count, "tag": tag}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("unmarked_samples", label="Samples no longer references")
        outputs.str("tag", label="Tag")
        return types.Property(outputs)
