"""The review loop in the App: teach a bank with verdicts on predictions, and see the references behind them (SDK:
``ntt.fo.add_negatives``, ``ntt.fo.promote_predictions``, ``ntt.fo.load_references_view``)."""

from __future__ import annotations

from collections import Counter

import fiftyone.operators.types as types

from .. import runner, settings
from .. import widgets as ui
from ..settings import param, sdk
from .base import BackgroundOperator, NTTOperator, operator_config
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
        selected = _selected_fields(ctx) or _lassoed_fields(ctx)
        if not selected and not ctx.params.get("label_ids"):
            return ui.invalid(
                inputs,
                "No labels selected: click the false positives in the App's sample view, or lasso them in the "
                "Embeddings panel ('NTT: map predictions'), first.",
            )
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
        return len(ctx.params.get("label_ids") or ctx.selected_labels or _lassoed(ctx))

    def execute(self, ctx):
        nfo = sdk()
        name = ctx.params["bank"]
        field = param(ctx, "label_field") or (_selected_fields(ctx) or _lassoed_fields(ctx))[0]
        ids = list(_labels(ctx, field))
        view = ctx.dataset.select_labels(ids=ids, fields=field)

        def steps():
            before = nfo.load_bank(view, name).negatives_per_class()
            bank = yield from nfo.steps.add_negatives_steps(
                view, name, field, label_ids=ids, device=settings.device(ctx)
            )
            added = sum(bank.negatives_per_class().values()) - sum(before.values())
            info = nfo.get_bank_info(view, name)
            return {"bank": name, "added": added, **brief(info)}

        return runner.run(ctx, steps(), self.resolve_output(ctx))

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("added", label="Negatives added")
        return types.Property(brief_outputs(outputs, "Updated"))


def _labels(ctx, field: str) -> dict[str, str]:
    """The chosen labels of ``field``: label id -> class name (from ``label_ids``, the labels selected in the App,
    or else those lassoed in the Embeddings panel)."""
    ids = ctx.params.get("label_ids") or [s["label_id"] for s in ctx.selected_labels if s.get("field") == field]
    ids = ids or _lassoed(ctx)
    if not ids:
        return {}
    view = ctx.dataset.select_labels(ids=ids, fields=field)
    found = view.values(f"{field}.detections.id", unwind=True), view.values(f"{field}.detections.label", unwind=True)
    return dict(zip(*found))


_MATCH_LABELS = "fiftyone.core.stages.MatchLabels"  # the extended stage a lasso on a map of patches adds


def _lassoed(ctx) -> list[str]:
    """The label ids a lasso selected in the Embeddings panel on a map of patches, when no label is selected
    otherwise: FiftyOne 1.22's panel narrows the App's view with an extended ``MatchLabels`` stage of their ids
    (older panels sent them as the extended selection)."""
    if ctx.selected_labels:
        return []
    extended = ctx.request_params.get("extended")
    match = extended.get(_MATCH_LABELS) if isinstance(extended, dict) else None
    if isinstance(match, dict) and match.get("ids"):
        return list(match["ids"])
    chosen = ctx.extended_selection
    return list((chosen.get("selection") if isinstance(chosen, dict) else chosen) or [])


def _lassoed_only(ctx, view, field: str):
    """``view`` showing only the lassoed labels of ``field`` when there is a lasso: promotion then takes the
    verdicts of those labels (the App's lasso view holds their whole samples)."""
    ids = _lassoed(ctx)
    return view.select_labels(ids=ids, fields=field) if ids else view


def _lassoed_fields(ctx) -> list[str]:
    """The field of the lassoed labels, as a list (empty: no lasso, or not labels of a Detections field)."""
    field = sdk().forms.field_of_labels(ctx.dataset, _lassoed(ctx))
    return [field] if field else []


class PromoteCorrections(BackgroundOperator):
    @property
    def config(self):
        return self.background_config(
            "promote_corrections",
            "NTT: promote reviewed predictions",
            "Teach a bank from a reviewed predictions field: tagged correct -> positive shots, tagged wrong -> "
            "negatives of the predicted class, relabelled -> a positive of the new class and a negative of the old; "
            "edits in the Annotate tab: an edited mask or box -> a positive with the correction, a deleted "
            "prediction -> a negative, a drawn object -> a positive",
        )

    def __call__(
        self,
        sample_collection,
        bank: str,
        label_field: str,
        correct_tag: str = "correct",
        wrong_tag: str = "wrong",
        device: str | None = None,
        delegate: bool = False,
        delegation_target: str | None = None,
    ):
        """Promote the review of ``label_field``, as ``ntt.fo.promote_predictions`` does, through this operator:
        ``delegate=True`` queues it for ``fiftyone delegated launch`` (see ``run_on``)."""
        return self.run_on(locals())

    def form(self, inputs, ctx):
        nfo = sdk()
        bank = ui.bank_input(inputs, ctx)
        if bank is None:
            return ui.invalid(inputs, ui.NO_BANK)
        nfo.load_bank(ctx.dataset, bank)  # a missing or corrupted file is the form's message
        view = ui.target_input(inputs, ctx, "Promote from")
        field = ui.field_input(inputs, ctx, "label_field", "Predictions field", "The reviewed predictions")
        if field is None:
            return ui.invalid(inputs, "This dataset has no Detections field to promote from.")
        inputs.str("correct_tag", label="Tag of correct predictions", default="correct")
        inputs.str("wrong_tag", label="Tag of wrong predictions", default="wrong")
        counts = nfo.forms.review_counts(_lassoed_only(ctx, view, field), field, *self._tags(ctx))
        if not any(counts.values()):
            return ui.invalid(
                inputs,
                f"Nothing reviewed in '{field}' here: tag predictions '{self._tags(ctx)[0]}' or '{self._tags(ctx)[1]}' "
                "(or change their label, or correct them in the Annotate tab) in the App first.",
            )
        summary = ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)
        note = f"To promote: {summary}; samples that give positives become references"
        inputs.view("count", types.Notice(label=note))
        problem = ui.device_input(inputs, ctx)
        if problem:
            return ui.invalid(inputs, problem)
        return ui.form(inputs, "Promote reviewed predictions into an NTT bank")

    @staticmethod
    def _tags(ctx) -> tuple[str, str]:
        return param(ctx, "correct_tag", "correct"), param(ctx, "wrong_tag", "wrong")

    def run_size(self, ctx) -> int:
        field = ctx.params["label_field"]
        view = _lassoed_only(ctx, ctx.target_view(), field)
        return sum(sdk().forms.review_counts(view, field, *self._tags(ctx)).values())

    def execute(self, ctx):
        nfo = sdk()
        name, field = ctx.params["bank"], ctx.params["label_field"]
        view = _lassoed_only(ctx, ctx.target_view(), field)

        def steps():
            before = len(nfo.load_bank(view, name).shots)
            bank = yield from nfo.steps.promote_predictions_steps(
                view, name, field, *self._tags(ctx), device=settings.device(ctx)
            )
            info = nfo.get_bank_info(view, name)
            return {"bank": name, "added": len(bank.shots) - before, **brief(info)}

        return runner.run(ctx, steps(), self.resolve_output(ctx))

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("added", label="Shots added")
        return types.Property(brief_outputs(outputs, "Updated"))


class ShowReferences(NTTOperator):
    @property
    def config(self):
        return operator_config(
            "show_references",
            "NTT: show the references behind predictions",
            "Open a view of the reference labels that the selected predictions were matched to (their nearest shots)",
        )

    def form(self, inputs, ctx):
        selected = _selected_fields(ctx)
        if not selected:
            return ui.invalid(inputs, "No predictions selected: click predictions in the App's sample view first.")
        count = len(ctx.selected_labels)
        inputs.view("count", types.Notice(label=f"The references behind {count} selected prediction(s)"))
        return ui.form(inputs, "Show the references behind predictions")

    def execute(self, ctx):
        field = _selected_fields(ctx)[0]
        ids = [s["label_id"] for s in ctx.selected_labels if s.get("field") == field]
        with runner.clear_errors():
            view = sdk().load_references_view(ctx.dataset, predictions=field, label_ids=ids)
        ctx.ops.set_view(view)
        return {"samples": view.count()}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("samples", label="Reference samples shown")
        return types.Property(outputs)


class GradeReferences(BackgroundOperator):
    @property
    def config(self):
        return self.background_config(
            "grade_references",
            "NTT: grade references",
            "Leave-one-out on the bank's own reference samples: how well each class's other shots find its labelled "
            "instances and each shot's effect (most harmful first); optionally calibrate per-class thresholds",
        )

    def __call__(
        self,
        sample_collection,
        bank: str,
        calibrate: bool = False,
        target_precision: float | None = None,
        device: str | None = None,
        delegate: bool = False,
        delegation_target: str | None = None,
    ):
        """Grade ``bank``'s references, as ``ntt.fo.grade_references`` does, through this operator:
        ``delegate=True`` queues it for ``fiftyone delegated launch`` (see ``run_on``)."""
        return self.run_on(locals())

    def form(self, inputs, ctx):
        bank = ui.bank_input(inputs, ctx)
        if bank is None:
            return ui.invalid(inputs, ui.NO_BANK)
        info = sdk().get_bank_info(ctx.dataset, bank)
        sdk().load_bank(ctx.dataset, bank)  # a missing or corrupted file is the form's message
        samples = len(info.get("shot_sample_ids") or [])
        inputs.view(
            "count",
            types.Notice(label=f"{samples} reference sample(s), each segmented once without its own shots"),
        )
        inputs.bool("calibrate", label="Store calibrated per-class thresholds in the bank", default=False)
        inputs.float(
            "target_precision",
            label="Calibrate to this precision",
            min=0.0,
            max=1.0,
            description="Empty: the threshold with the best F1 per class",
        )
        problem = ui.device_input(inputs, ctx)
        if problem:
            return ui.invalid(inputs, problem)
        return ui.form(inputs, "Grade an NTT bank's references")

    def run_size(self, ctx) -> int:
        return len(sdk().get_bank_info(ctx.dataset, ctx.params["bank"]).get("shot_sample_ids") or [])

    def execute(self, ctx):
        nfo = sdk()
        name = ctx.params["bank"]
        kwargs = dict(
            calibrate=bool(param(ctx, "calibrate", False)),
            target_precision=param(ctx, "target_precision"),
            device=settings.device(ctx),
        )

        def steps():
            report = yield from nfo.steps.grade_references_steps(ctx.dataset, name, **kwargs)
            worst = [str(s.annotation_id) for s in report.shots[:5]]
            calibrated = len(report.calibration["classes"]) if kwargs["calibrate"] else 0
            return {"bank": name, "report": report.markdown(), "worst_label_ids": worst, "calibrated": calibrated}

        def worst_view(result):
            return ctx.dataset.select_labels(ids=result["worst_label_ids"])

        return runner.run(ctx, steps(), self.resolve_output(ctx), show_view=worst_view)

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("report", label="Report (the view shows the 5 most harmful shots)", view=types.MarkdownView())
        outputs.int("calibrated", label="Classes calibrated")
        return types.Property(outputs)
