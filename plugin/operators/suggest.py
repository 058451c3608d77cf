"""Which samples to label next (SDK: ``ntt.fo.suggest_references``): without a bank, the samples that cover the
view best from the references marked so far (tagged, then shown); with a bank, its targets it is least sure of
(shown, most unsure first)."""

from __future__ import annotations

import fiftyone.operators.types as types

from .. import runner, settings
from .. import widgets as ui
from ..settings import SAME_AS_BANK, param, sdk
from .base import BackgroundOperator
from .segment import SegmentWithBank

NONE = "(none)"  # the "no bank" / "no predictions" choice: never a bank or field name (those are identifiers)
SUGGEST_TAG = "ntt_to_label"


class SuggestReferences(BackgroundOperator):
    @property
    def config(self):
        return self.background_config(
            "suggest_references",
            "NTT: suggest references",
            "Which samples to label next: without a bank, the ones that cover the view best from the references "
            "marked so far (tagged); with a bank, the ones it is least sure of (most unsure first)",
        )

    def __call__(
        self,
        sample_collection,
        count: int = 10,
        bank: str | None = None,
        label_field: str | None = None,
        tag: str = SUGGEST_TAG,
        preset: str | None = None,
        config: dict | None = None,
        device: str | None = None,
        delegate: bool = False,
        delegation_target: str | None = None,
    ):
        """Suggest samples to label, as ``ntt.fo.suggest_references`` does (same arguments), through this
        operator: ``delegate=True`` queues it for ``fiftyone delegated launch`` (see ``run_on``)."""
        return self.run_on(locals())

    def form(self, inputs, ctx):
        if ctx.dataset.media_type != "image":
            return ui.invalid(inputs, f"NTT works on images; this dataset's media type is {ctx.dataset.media_type}.")
        view = ui.target_input(inputs, ctx, "Suggest from")
        inputs.int("count", label="How many samples", default=10, min=1, required=True)
        bank = _bank_input(inputs, ctx)
        if bank is None:
            inputs.str("tag", label="Tag of the suggestions", default=SUGGEST_TAG, description=_TAG_NOTE)
            problem = ui.model_inputs(inputs, ctx, kinds=("dinov2",))
            note = f"Picks from {view.count()} sample(s), starting from the references marked there; tags them"
        else:
            _predictions_input(inputs, ctx, bank)
            bank_settings = SegmentWithBank._bank_settings(ctx, bank)
            problem = ui.model_inputs(inputs, ctx, same_as_bank=True, settings=bank_settings, kinds=("dinov2",))
            note = f"Ranks the samples of {view.count()} that are not references of '{bank}'; tags nothing"
        if problem:
            return ui.invalid(inputs, problem)
        inputs.view("note", types.Notice(label=note))
        ui.delegation_notice(inputs, view.count())
        return ui.form(inputs, "Suggest which samples to label next")

    def run_size(self, ctx) -> int:
        return ctx.target_view().count()

    def execute(self, ctx):
        nfo = sdk()
        bank, tag = _chosen(ctx, "bank"), param(ctx, "tag", SUGGEST_TAG) or SUGGEST_TAG
        preset = param(ctx, "preset")
        kwargs = dict(
            count=param(ctx, "count", 10),
            bank=bank,
            label_field=_chosen(ctx, "label_field") if bank else None,
            tag=tag,
            preset=None if preset == SAME_AS_BANK else preset,
            config=settings.config_overrides(ctx),
            device=settings.device(ctx),
        )

        def steps():
            result = yield from nfo.steps.suggest_references_steps(ctx.target_view(), **kwargs)
            skipped = result["skipped"]
            return {
                "mode": result["mode"],
                "picked": len(result["picked"]),
                "picked_ids": result["picked"],
                "skipped": len(skipped),
                "skipped_samples": [f"{s['filepath']}: {s['reason']}" for s in skipped[:20]],
            }

        def picked_view(result):
            if result["mode"] == "cover":
                return ctx.dataset.match_tags(tag)
            return ctx.dataset.select(result["picked_ids"], ordered=True)

        return runner.run(ctx, steps(), self.resolve_output(ctx), show_view=picked_view)

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("mode", label="Mode (cover: from the references; unsure: where the bank is least sure)")
        outputs.int("picked", label="Samples suggested (the view shows them)")
        outputs.int("skipped", label="Samples skipped (unreadable media)")
        outputs.list("skipped_samples", types.String(), label="Skipped samples (first 20)")
        return types.Property(outputs)


_TAG_NOTE = "The suggestions get this sample tag; samples tagged so by an earlier run count as suggested already"


def _chosen(ctx, key: str) -> str | None:
    """A bank or field param; None when absent or the "none" choice."""
    value = param(ctx, key)
    return None if value in (None, "", NONE) else value


def _bank_input(inputs, ctx) -> str | None:
    """A dropdown of "no bank" (cover the view) and the dataset's banks; returns the chosen bank, or None."""
    banks = sdk().list_banks(ctx.dataset)
    dropdown = ui.choices(types.DropdownView(), [NONE, *banks])
    inputs.enum(
        "bank",
        dropdown.values(),
        label="Bank",
        description="None: the samples that cover the view best; a bank: the samples it is least sure of",
        default=NONE,
        view=dropdown,
    )
    chosen = _chosen(ctx, "bank")
    return chosen if chosen in banks else None


def _predictions_input(inputs, ctx, bank: str) -> None:
    """An optional predictions field to take margins from (default: a field this bank wrote, if any)."""
    fields = sdk().forms.detections_fields(ctx.dataset)
    written = [f for f in fields if (ctx.dataset.get_field(f).info or {}).get("ntt_bank") == bank]
    dropdown = ui.choices(types.DropdownView(), [NONE, *fields])
    inputs.enum(
        "label_field",
        dropdown.values(),
        label="Predictions (optional)",
        description="The bank's predictions: samples whose least clear detection nearly went to another class rank "
        "higher",
        default=(written or [NONE])[0],
        view=dropdown,
    )
