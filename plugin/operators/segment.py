"""Segment a view with a bank into a Detections field (SDK: ``ntt.fo.segment``)."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from .. import inputs as ui

SAME_AS_BANK = {"bank": "Same models and settings as the bank"}


class SegmentWithBank(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="segment_with_bank",
            label="NTT: segment with bank",
            description="Find every instance of the bank's classes in a view",
            dynamic=True,
            execute_as_generator=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            icon="/assets/icon.svg",
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        problem = ui.dependency_problem()
        if problem:
            return ui.invalid(inputs, problem)
        if ctx.dataset is not None and ctx.dataset.media_type != "image":
            return ui.invalid(inputs, f"NTT segments images; this dataset's media type is {ctx.dataset.media_type}.")
        if not ui.bank_input(inputs, ctx):
            return ui.invalid(inputs, "This dataset has no NTT bank: build one first ('NTT: build memory bank').")
        inputs.view_target(ctx, action_description="Segment")
        view = ui.target_view(ctx)
        ui.new_field_input(inputs, ctx, "label_field", "Output field", "ntt")
        inputs.float("score_thresh", label="Score threshold", default=0.0, min=0.0, max=1.0)
        inputs.int("max_instances", label="Max instances per image", default=100, min=1)
        inputs.bool("skip_existing", label="Skip samples already labelled (resume)", default=False)
        inputs.bool("overwrite", label="Overwrite existing labels", default=False)
        inputs.bool("exclude_references", label="Leave out reference samples", default=True)
        problem = self._field_problem(ctx, view)
        if problem:
            return ui.invalid(inputs, problem)
        ui.model_inputs(inputs, default_preset="bank", extra=SAME_AS_BANK)
        ui.delegation_input(inputs, ctx, view)
        return types.Property(inputs, view=types.View(label="Segment with an NTT bank"))

    @staticmethod
    def _field_problem(ctx, view) -> str | None:
        field = ctx.params.get("label_field", "ntt")
        if view is None or field not in view.get_field_schema(flat=True):
            return None
        try:
            ui.sdk().references.check_detections_field(view, field)
        except ui.sdk().NTTFiftyOneError as err:
            return str(err)
        p = ctx.params
        existing = view.exists(field).count()
        if existing and not (p.get("skip_existing") or p.get("overwrite")):
            return f"'{field}' already has labels on {existing} samples: tick 'Skip' to resume or 'Overwrite'."
        return None

    def resolve_delegation(self, ctx):
        return ctx.params.get("delegate") if "delegate" in ctx.params else None

    def resolve_execution_options(self, ctx):
        return ui.execution_options(ctx)

    def execute(self, ctx):
        nfo = ui.sdk()
        p = ctx.params
        preset = p.get("preset", "bank")

        def work(progress):
            summary = nfo.segment(
                ui.target_view(ctx),
                p["bank"],
                label_field=p.get("label_field", "ntt"),
                score_thresh=p.get("score_thresh"),
                max_instances=p.get("max_instances"),
                batch_size=p.get("batch_size"),
                device=None if p.get("device", "auto") == "auto" else p["device"],
                preset=None if preset == "bank" else preset,
                config=p.get("config"),
                skip_existing=bool(p.get("skip_existing")),
                overwrite=bool(p.get("overwrite")),
                exclude_references=p.get("exclude_references", True),
                progress=progress,
            )
            return {k: summary[k] for k in ("samples", "labelled", "instances")} | {"skipped": len(summary["skipped"])}

        yield from ui.run_with_progress(ctx, work)
