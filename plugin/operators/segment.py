"""Segment a view with a bank into a Detections field (SDK: ``ntt.fo.segment``)."""

from __future__ import annotations

import re

import fiftyone.operators.types as types

from .. import inputs as ui
from .. import runner
from .base import BackgroundOperator

_FIELD = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)*")
SEGMENT_ARGS = ("score_thresh", "class_thresholds", "max_instances", "batch_size")


class SegmentWithBank(BackgroundOperator):
    @property
    def config(self):
        return self.background_config(
            "segment_with_bank",
            "NTT: segment with bank",
            "Find every instance of a bank's classes in a view and write them to a Detections field",
        )

    def form(self, inputs, ctx):
        if ctx.dataset.media_type != "image":
            return ui.invalid(inputs, f"NTT segments images; this dataset's media type is {ctx.dataset.media_type}.")
        bank = ui.bank_input(inputs, ctx)
        if bank is None:
            return ui.invalid(inputs, ui.NO_BANK)
        view = ui.target_input(inputs, ctx, "Segment")
        ui.new_field_input(inputs, ctx, "label_field", "Output field", "ntt")
        inputs.float(
            "score_thresh",
            label="Score threshold",
            min=0.0,
            max=1.0,
            description="Drop instances scoring below this (empty: the preset's, 0)",
        )
        inputs.int("max_instances", label="Max instances per image", min=1, description="Empty: the preset's (100)")
        inputs.int(
            "batch_size",
            label="Batch size",
            min=0,
            description="Images per forward pass (empty: the preset's; 0: fit to the GPU's memory)",
        )
        inputs.bool("skip_existing", label="Skip samples already labelled (resume a stopped run)", default=False)
        inputs.bool("overwrite", label="Overwrite existing labels", default=False)
        inputs.bool("exclude_references", label="Leave out the reference samples", default=True)
        problem = (
            self._args_problem(ctx, bank)
            or self._target_problem(ctx, view, bank)
            or ui.model_inputs(inputs, ctx, default_preset=ui.SAME_AS_BANK, same_as_bank=True)
        )
        if problem:
            return ui.invalid(inputs, problem)
        count = self._targets(ctx, view, bank).count()
        inputs.view("count", types.Notice(label=f"{count} sample(s) will be segmented"))
        ui.delegation_notice(inputs, count)
        return ui.form(inputs, "Segment with an NTT bank")

    @staticmethod
    def _targets(ctx, view, bank):
        """The samples the SDK will segment: the view, minus references, minus labelled ones when skipping."""
        return ui.sdk().segment_targets(
            view,
            bank,
            label_field=ui.param(ctx, "label_field", "ntt"),
            skip_existing=bool(ui.param(ctx, "skip_existing", False)),
            exclude_references=bool(ui.param(ctx, "exclude_references", True)),
            tag=ui.param(ctx, "tag"),
            overwrite=True,  # existing labels are the form's own message (_target_problem)
        )

    @staticmethod
    def _args_problem(ctx, bank) -> str | None:
        """Bad thresholds or sizes, or a bank whose file is missing, corrupted or empty: the SDK's message."""
        nfo = ui.sdk()
        try:
            loaded = nfo.load_bank(ctx.dataset, bank)
            if not loaded.shots:
                return f"Bank '{bank}' has no reference shots left: add references to it first."
            nfo.check_segment_args(*[ui.param(ctx, k) for k in SEGMENT_ARGS], class_names=loaded.class_names)
        except nfo.NTTFiftyOneError as err:
            return str(err)
        return None

    def _target_problem(self, ctx, view, bank) -> str | None:
        field = ui.param(ctx, "label_field", "ntt")
        if not _FIELD.fullmatch(field):
            return f"'{field}' is not a valid field name: letters, digits and _, starting with a letter."
        ref_field = ui.sdk().get_bank_info(ctx.dataset, bank).get("label_field")
        if field == ref_field:
            return f"'{field}' holds the bank's reference labels: write the predictions to another field."
        if field in view.get_field_schema(flat=True):
            problem = ui.field_problem(view, field)
            if problem:
                return problem
            existing = view.exists(field).count()
            if existing and not (ui.param(ctx, "skip_existing", False) or ui.param(ctx, "overwrite", False)):
                return (
                    f"'{field}' already has labels on {existing} sample(s): tick 'Skip samples already "
                    "labelled' to resume, or 'Overwrite'."
                )
        if not self._targets(ctx, view, bank).count():
            return "Nothing to segment: the chosen samples are all references or already labelled."
        return None

    def run_size(self, ctx) -> int:
        bank = ui.param(ctx, "bank")
        if bank not in ui.sdk().list_banks(ctx.dataset):
            return ctx.target_view().count()
        return self._targets(ctx, ctx.target_view(), bank).count()

    def execute(self, ctx):
        nfo = ui.sdk()
        bank = ctx.params["bank"]
        preset, config = self._settings(ctx)
        kwargs = dict(
            label_field=ui.param(ctx, "label_field", "ntt"),
            **{k: ui.param(ctx, k) for k in SEGMENT_ARGS},
            device=ui.device(ctx),
            preset=preset,
            config=config,
            skip_existing=bool(ui.param(ctx, "skip_existing", False)),
            overwrite=bool(ui.param(ctx, "overwrite", False)),
            exclude_references=bool(ui.param(ctx, "exclude_references", True)),
            tag=ui.param(ctx, "tag"),
        )
        view = ctx.target_view()  # resolved here: the worker thread of an immediate run has no App context

        def work(progress):
            summary = nfo.segment(view, bank, progress=progress, **kwargs)
            skipped = summary["skipped"]
            return {
                "bank": bank,
                "label_field": kwargs["label_field"],
                **{k: summary[k] for k in ("samples", "labelled", "instances", "per_class")},
                "skipped": len(skipped),
                "skipped_samples": [f"{s['filepath']}: {s['reason']}" for s in skipped[:20]],
            }

        return runner.run(ctx, work, self.resolve_output(ctx))

    @staticmethod
    def _settings(ctx):
        """(preset, config overrides) for the SDK; "same as the bank" is preset None: the SDK layers the
        overrides on the bank's stored settings."""
        preset = ui.param(ctx, "preset", ui.SAME_AS_BANK)
        return (None if preset == ui.SAME_AS_BANK else preset), ui.config_overrides(ctx)

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("label_field", label="Output field")
        outputs.int("samples", label="Samples in the run")
        outputs.int("labelled", label="Samples labelled")
        outputs.int("instances", label="Instances found")
        outputs.obj("per_class", label="Instances per class", view=types.JSONView())
        outputs.int("skipped", label="Samples skipped (unreadable media)")
        outputs.list("skipped_samples", types.String(), label="Skipped samples (first 20)")
        return types.Property(outputs)
