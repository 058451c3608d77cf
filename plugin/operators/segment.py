"""Segment a view with a bank into a Detections field (SDK: ``ntt.fo.segment``)."""

from __future__ import annotations

import re

import fiftyone.operators.types as types

from .. import runner, settings
from .. import widgets as ui
from ..settings import SAME_AS_BANK, param, sdk
from .base import BackgroundOperator, grid_button

_FIELD = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)*")
SEGMENT_ARGS = ("score_thresh", "class_thresholds", "max_instances", "batch_size")


CACHE_LABELS = {
    "settings": "As the settings say (on in fast and lite, off in the faithful paper preset)",
    "on": "Reuse and fill it",
    "off": "Off",
}
CACHE_CHOICES = {True: "on", False: "off"}


class SegmentWithBank(BackgroundOperator):
    distributed = True

    @property
    def config(self):
        return self.background_config(
            "segment_with_bank",
            "NTT: segment with bank",
            "Find every instance of a bank's classes in a view and write them to a Detections field",
        )

    def resolve_placement(self, ctx):
        return grid_button(ctx, "NTT: segment with bank")

    def __call__(
        self,
        sample_collection,
        bank: str,
        label_field: str = "ntt",
        score_thresh: float | None = None,
        class_thresholds: dict[str, float] | None = None,
        max_instances: int | None = None,
        batch_size: int | None = None,
        device: str | None = None,
        preset: str | None = None,
        config: dict | None = None,
        skip_existing: bool = False,
        overwrite: bool = False,
        exclude_references: bool = True,
        tag: str | None = None,
        cache: bool | None = None,
        thresholds: str | None = None,
        mask_dir: str | None = None,
        keep_embeddings: bool = True,
        delegate: bool = False,
        delegation_target: str | None = None,
    ):
        """Segment a dataset or view with ``bank``, as ``ntt.fo.segment`` does (same arguments; ``preset=None``:
        the bank's own settings), through this operator: ``delegate=True`` queues it for ``fiftyone delegated
        launch`` (see ``run_on``)."""
        cache = CACHE_CHOICES.get(cache)  # the form's choice: True "on", False "off", None the settings'
        return self.run_on(locals())

    def form(self, inputs, ctx):
        if ctx.params.get("ntt_shard"):  # a shard queued by a sharded run: checked when the run was submitted
            inputs.view("shard", types.Notice(label=f"One shard of a sharded run ({ctx.params['ntt_shard']})"))
            return ui.form(inputs, "Segment with an NTT bank (shard)")
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
        info = sdk().get_bank_info(ctx.dataset, bank)
        calibrated, stale = info.get("calibrated_thresholds"), info.get("calibration_stale")
        ui.class_thresholds_input(inputs, ctx, info["classes"], calibrated, stale)
        inputs.int("max_instances", label="Max instances per image", min=1, description="Empty: the preset's (100)")
        inputs.int(
            "batch_size",
            label="Batch size",
            min=0,
            description="Images per forward pass (empty: the preset's; 0: fit to the GPU's memory)",
        )
        cache_choices = types.RadioGroup()
        for key, label in CACHE_LABELS.items():
            cache_choices.add_choice(key, label=label)
        inputs.enum(
            "cache",
            cache_choices.values(),
            label="Candidate cache",
            description="Keep each image's bank-independent work (ntt cache info) so re-segmenting after the bank "
            "changes skips the encoders, and with grid prompts the decoder too",
            default="settings",
            view=cache_choices,
        )
        inputs.str(
            "mask_dir",
            label="Masks folder (optional)",
            description="Write the masks as PNG files under this folder instead of in the database (large datasets "
            "and images); every machine that opens the dataset must reach it",
        )
        inputs.bool(
            "keep_embeddings",
            label="Keep each prediction's embedding (for maps and 'more like this')",
            description="The feature each prediction was matched with, stored outside the samples (~0.5 KB each)",
            default=True,
        )
        _workers_input(inputs, ctx)
        inputs.bool("skip_existing", label="Skip samples already labelled (resume a stopped run)", default=False)
        inputs.bool("overwrite", label="Overwrite existing labels", default=False)
        inputs.bool("exclude_references", label="Leave out the reference samples", default=True)
        problem = (
            self._args_problem(ctx, bank)
            or self._target_problem(ctx, view, bank, info.get("label_field"))
            or ui.model_inputs(inputs, ctx, same_as_bank=True, settings=self._bank_settings(ctx, bank))
        )
        if problem:
            return ui.invalid(inputs, problem)
        count = self._targets(ctx, view, bank).count()
        inputs.view("count", types.Notice(label=f"{count} sample(s) will be segmented"))
        ui.delegation_notice(inputs, count)
        return ui.form(inputs, "Segment with an NTT bank")

    @staticmethod
    def _target_args(ctx) -> dict:
        """The arguments of ``segment`` that choose what it labels (``targets_view`` takes the same)."""
        return dict(
            label_field=param(ctx, "label_field", "ntt"),
            skip_existing=bool(param(ctx, "skip_existing", False)),
            overwrite=bool(param(ctx, "overwrite", False)),
            exclude_references=bool(param(ctx, "exclude_references", True)),
            tag=param(ctx, "tag"),
        )

    def _targets(self, ctx, view, bank):
        """The samples ``execute`` will segment (``ntt.fo.forms.targets_view``: the view, minus references, minus
        labelled ones when skipping); raises what ``segment`` would (existing labels without skip / overwrite, a
        field that is not Detections, resuming another bank's field)."""
        return sdk().forms.targets_view(view, bank, **self._target_args(ctx))

    @staticmethod
    def _args_problem(ctx, bank) -> str | None:
        """Bad thresholds or sizes, or a bank whose file is missing, corrupted or empty: the SDK's message."""
        nfo = sdk()
        try:
            loaded = nfo.load_bank(ctx.dataset, bank)
            if not loaded.shots:
                return f"Bank '{bank}' has no reference shots left: add references to it first."
            nfo.forms.check_segment_args(
                **SegmentWithBank._segment_args(ctx, loaded.class_names), class_names=loaded.class_names
            )
        except nfo.NTTFiftyOneError as err:
            return str(err)
        return None

    def _target_problem(self, ctx, view, bank, reference_field: str | None) -> str | None:
        """Why the output field or the chosen samples cannot be segmented: the checks of ``targets_view``,
        plus a bad field name, the bank's own reference field, or nothing left to segment."""
        nfo = sdk()
        field = param(ctx, "label_field", "ntt")
        if not _FIELD.fullmatch(field):
            return f"'{field}' is not a valid field name: letters, digits and _, starting with a letter."
        if field == reference_field:
            return f"'{field}' holds the bank's reference labels: write the predictions to another field."
        try:
            if not self._targets(ctx, view, bank).count():
                return "Nothing to segment: the chosen samples are all references or already labelled."
        except nfo.NTTFiftyOneError as err:
            return str(err)
        return None

    def run_size(self, ctx) -> int:
        bank = param(ctx, "bank")
        if bank not in sdk().list_banks(ctx.dataset):
            return ctx.target_view().count()
        return self._targets(ctx, ctx.target_view(), bank).count()

    def execute(self, ctx):
        nfo = sdk()
        if ctx.params.get("ntt_shard"):
            steps = nfo.jobs.workers.shard_steps(ctx.dataset, ctx.params["ntt_shard"], ctx.params.get("ntt_lease"))
            return runner.run(ctx, steps, self.resolve_output(ctx))
        bank = ctx.params["bank"]
        preset, config = self._settings(ctx)
        kwargs = dict(
            **self._target_args(ctx),
            **self._segment_args(ctx, nfo.get_bank_info(ctx.dataset, bank)["classes"]),
            device=settings.device(ctx),
            preset=preset,
            config=config,
            cache={"on": True, "off": False}.get(param(ctx, "cache", "settings")),
            mask_dir=param(ctx, "mask_dir") or None,
            keep_embeddings=bool(param(ctx, "keep_embeddings", True)),
            thresholds=param(ctx, "thresholds"),  # from code ("calibrated"); the form pre-fills class_thresholds
        )
        view = ctx.target_view()
        if param(ctx, "workers", False):
            size = param(ctx, "shard_size")
            outputs = self.resolve_output(ctx)
            return runner.submitted(ctx, lambda: nfo.submit_job(view, bank, shard_size=size, **kwargs), outputs)

        def steps():
            summary = yield from nfo.steps.segment_steps(view, bank, **kwargs)
            skipped = summary["skipped"]
            return {
                "bank": bank,
                "label_field": kwargs["label_field"],
                **{k: summary[k] for k in ("samples", "labelled", "instances", "per_class", "reused")},
                "skipped": len(skipped),
                "skipped_samples": [f"{s['filepath']}: {s['reason']}" for s in skipped[:20]],
            }

        return runner.run(ctx, steps(), self.resolve_output(ctx), show_field=kwargs["label_field"])

    @staticmethod
    def _segment_args(ctx, classes: list[str]) -> dict:
        """The inference knobs of ``segment`` from the form (per-class thresholds from its table over the bank's
        ``classes``)."""
        args = {key: param(ctx, key) for key in SEGMENT_ARGS}
        args["class_thresholds"] = settings.class_thresholds(ctx, classes)
        return args

    @staticmethod
    def _bank_settings(ctx, bank):
        """The settings the SDK will segment with, for the form's checks (device, weights)."""

        def settings(preset, overrides, device):
            return sdk().forms.segment_settings(
                ctx.dataset, bank, None if preset == SAME_AS_BANK else preset, overrides, device
            )

        return settings

    @staticmethod
    def _settings(ctx):
        """(preset, config overrides) for the SDK; "same as the bank" is preset None: the SDK layers the
        overrides on the bank's stored settings."""
        preset = param(ctx, "preset", SAME_AS_BANK)
        return (None if preset == SAME_AS_BANK else preset), settings.config_overrides(ctx)

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("label_field", label="Output field")
        outputs.str("run", label="Sharded job (follow it in 'NTT: jobs')")
        outputs.int("shards", label="Shards queued for ntt workers")
        outputs.int("samples", label="Samples in the run")
        outputs.int("labelled", label="Samples labelled")
        outputs.int("instances", label="Instances found")
        outputs.obj("per_class", label="Instances per class", view=types.JSONView())
        outputs.int("reused", label="Images taken from the candidate cache")
        outputs.int("skipped", label="Samples skipped (unreadable media)")
        outputs.list("skipped_samples", types.String(), label="Skipped samples (first 20)")
        return types.Property(outputs)


def _workers_input(inputs, ctx) -> None:
    """The choice to spread the run over ``ntt worker`` processes (many GPUs, many machines)."""
    inputs.bool(
        "workers",
        label="Spread over ntt workers (many GPUs, many machines)",
        description="Queue the run as shards that `ntt worker` processes run, one per GPU, on any machine that "
        "reaches this database, the media and the bank folder; follow it in 'NTT: jobs'",
        default=False,
    )
    if param(ctx, "workers", False):
        inputs.int("shard_size", label="Samples per shard", min=1, description="Empty: 500 (minutes of GPU work)")
