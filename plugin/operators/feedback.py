"""Teach a bank with the review's verdicts: selected labels become negative shots (SDK: ``ntt.fo.add_negatives``)."""

from __future__ import annotations

from collections import Counter

import fiftyone.operators.types as types

from .. import runner, settings
from .. import widgets as ui
from ..settings import param, sdk
from .base import BackgroundOperator
from .manage import brief, brief_outputs
from .references import _selected_fields


class MarkNegatives(BackgroundOperator):
    @property
    def config(self):
        return self.background_config(
            "mark_negatives",
            "NTT: mark as negatives",
            "Make the selected labels (usually false positives) negative shots of their classes in a bank: the next "
            "run pushes down whatever looks more like them than like the class",
        )

    def __call__(
        self,
        sample_collection,
        bank: str,
        label_field: str,
        label_ids: list[str],
        device: str | None = None,
        delegate: bool = False,
        delegation_target: str | None = None,
    ):
        """Make labels of ``label_field`` negatives in ``bank``, as ``ntt.fo.add_negatives`` does, through this
        operator: ``delegate=True`` queues it for ``fiftyone delegated launch`` (see ``run_on``)."""
        return self.run_on(locals())

    def form(self, inputs, ctx):
        bank = ui.bank_input(inputs, ctx)
        if bank is None:
            return ui.invalid(inputs, ui.NO_BANK)
        classes = sdk().load_bank(ctx.dataset, bank).class_names  # a missing or corrupted file is the message
        selected = _selected_fields(ctx)
        if not selected and not ctx.params.get("label_ids"):
            return ui.invalid(inputs, "No labels selected: click the false positives in the App's sample view first.")
        fields = sorted(set(selected)) or [param(ctx, "label_field")]
        field = ui.field_input(
            inputs, ctx, "label_field", "Label field", "Field of the selected labels", fields=fields, required=False
        )
        labels = _labels(ctx, field)
        if not labels:
            return ui.invalid(inputs, f"None of the selected labels is in '{field}'.")
        strangers = sorted(set(labels.values()) - set(classes))
        if strangers:
            return ui.invalid(inputs, f"Bank '{bank}' has no class {', '.join(strangers)}: a negative needs its class.")
        counts = ", ".join(f"{n} {label}" for label, n in Counter(labels.values()).most_common())
        inputs.view("count", types.Notice(label=f"{len(labels)} label(s) become negatives: {counts}"))
        problem = ui.device_input(inputs, ctx)
        if problem:
            return ui.invalid(inputs, problem)
        return ui.form(inputs, "Mark labels as negatives of an NTT bank")

    def run_size(self, ctx) -> int:
        return len(ctx.params.get("label_ids") or ctx.selected_labels or [])

    def execute(self, ctx):
        nfo = sdk()
        name = ctx.params["bank"]
        field = param(ctx, "label_field") or _selected_fields(ctx)[0]
        ids = list(_labels(ctx, field))
        view = ctx.dataset.select_labels(ids=ids, fields=field)

        def steps():
            before = nfo.load_bank(view, name).negatives_per_class()
            bank = yield from nfo.add_negatives_steps(view, name, field, label_ids=ids, device=settings.device(ctx))
            added = sum(bank.negatives_per_class().values()) - sum(before.values())
            info = nfo.get_bank_info(view, name)
            return {"bank": name, "added": added, **brief(info)}

        return runner.run(ctx, steps(), self.resolve_output(ctx))

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("added", label="Negatives added")
        return types.Property(brief_outputs(outputs, "Updated"))


def _labels(ctx, field: str) -> dict[str, str]:
    """The chosen labels of ``field``: label id -> class name (from ``label_ids`` or the App's selection)."""
    ids = ctx.params.get("label_ids") or [s["label_id"] for s in ctx.selected_labels if s.get("field") == field]
    if not ids:
        return {}
    view = ctx.dataset.select_labels(ids=ids, fields=field)
    found = view.values(f"{field}.detections.id", unwind=True), view.values(f"{field}.detections.label", unwind=True)
    return dict(zip(*found))
