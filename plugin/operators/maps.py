"""The predictions as a map (SDK: ``ntt.fo.map_predictions``): a visualization of a predictions field's patches
from the embeddings segmenting kept, with the bank's shots in the same coordinates, and a similarity index for the
App's "sort by similarity"; the Embeddings panel opens on it."""

from __future__ import annotations

import fiftyone.operators.types as types

from .. import runner
from .. import widgets as ui
from ..settings import param, sdk
from .base import BackgroundOperator

AUTO = "auto"  # the method choice: umap when installed, else tsne
PANEL = "Embeddings"  # the App's Embeddings panel
FORM_CHECK_LIMIT = 20_000  # past this many predictions the form counts kept embeddings on the first samples only
FORM_CHECK_SAMPLES = 500


class MapPredictions(BackgroundOperator):
    @property
    def config(self):
        return self.background_config(
            "map_predictions",
            "NTT: map predictions",
            "See a predictions field as a map in the Embeddings panel (colour it by class, by evaluation outcome or "
            "by margin; lasso a cluster, then mark it as negatives) with the bank's shots in the same coordinates, "
            "and index it for 'sort by similarity'",
        )

    def __call__(
        self,
        sample_collection,
        label_field: str = "ntt",
        bank: str | None = None,
        method: str | None = None,
        brain_key: str | None = None,
        similarity: bool = True,
        delegate: bool = False,
        delegation_target: str | None = None,
    ):
        """Map predictions, as ``ntt.fo.map_predictions`` does (same arguments), through this operator:
        ``delegate=True`` queues it for ``fiftyone delegated launch`` (see ``run_on``)."""
        return self.run_on(locals())

    def form(self, inputs, ctx):
        view = ui.target_input(inputs, ctx, "Map")
        field = ui.field_input(inputs, ctx, "label_field", "Predictions", "The predictions field to map", "ntt")
        if field is None:
            return ui.invalid(inputs, "No Detections field to map: segment with a bank first.")
        total = view.count(f"{field}.detections")
        checked = view if total <= FORM_CHECK_LIMIT else view.limit(FORM_CHECK_SAMPLES)  # forms stay quick
        kept = sdk().forms.count_kept_embeddings(checked, field)
        if not kept:
            return ui.invalid(
                inputs,
                f"None of the predictions in '{field}' here has a kept embedding: segment with 'Keep each "
                "prediction's embedding' ticked (the default) first.",
            )
        _bank_input(inputs, ctx, field)
        methods = ui.choices(types.RadioGroup(), [AUTO, "umap", "tsne", "pca"])
        inputs.enum(
            "method",
            methods.values(),
            label="Projection",
            description="auto: umap when umap-learn is installed, else tsne; pca is the quickest",
            default=AUTO,
            view=methods,
        )
        inputs.str("brain_key", label="Brain key", description=f"Default: {field}_map", required=False)
        inputs.bool("similarity", label=f"Also index for 'sort by similarity' ({field}_sim)", default=True)
        note = f"{kept} of {total} prediction(s) in '{field}' have a kept embedding and will be mapped"
        if checked is not view:
            note = f"{total} predictions in '{field}'; on the first {FORM_CHECK_SAMPLES} samples, {kept} have one"
        inputs.view("count", types.Notice(label=note))
        ui.delegation_notice(inputs, view.count())
        return ui.form(inputs, "Map predictions in the Embeddings panel")

    def run_size(self, ctx) -> int:
        return ctx.target_view().count()

    def execute(self, ctx):
        from ntt.steps import Step

        nfo = sdk()
        field = param(ctx, "label_field", "ntt")
        method = param(ctx, "method", AUTO)
        kwargs = dict(
            label_field=field,
            bank=param(ctx, "bank") or None,
            method=None if method == AUTO else method,
            brain_key=param(ctx, "brain_key") or None,
            similarity=bool(param(ctx, "similarity", True)),
        )

        def steps():
            yield Step(0.0, f"Mapping the predictions of '{field}'")
            found = nfo.map_predictions(ctx.target_view(), **kwargs)
            similar = found["similarity"] or {}
            return {
                "brain_key": found["brain_key"],
                "points": found["points"],
                "missing": found["missing"],
                "method": found["method"],
                "shots_brain_key": found["shots_brain_key"] or "",
                "shots": found["shots"],
                "shots_here": found["shots_here"],
                "similarity_key": similar.get("brain_key", ""),
                "colour_by": f"{field}.detections.label, an evaluation key (e.g. {field}.detections.eval) or "
                f"{field}.detections.margin",
            }

        return runner.run(ctx, steps(), self.resolve_output(ctx), open_panel=PANEL)

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("brain_key", label="Map (choose it in the Embeddings panel)")
        outputs.int("points", label="Predictions mapped")
        outputs.int("missing", label="Predictions without a kept embedding (left out)")
        outputs.str("method", label="Projection")
        outputs.str("shots_brain_key", label="The bank's shots, in the same coordinates")
        outputs.int("shots", label="Shots placed")
        outputs.int("shots_here", label="Shots that are labels of this dataset")
        outputs.str("similarity_key", label="Similarity index ('sort by similarity' on the field's patches)")
        outputs.str("colour_by", label="Colour by")
        return types.Property(outputs)


def _bank_input(inputs, ctx, field: str) -> None:
    """The bank whose shots to place on the map: the one that wrote ``field`` by default (else the first)."""
    banks = sdk().list_banks(ctx.dataset)
    if not banks:
        return
    wrote = (ctx.dataset.get_field(field).info or {}).get("ntt_bank")
    dropdown = ui.choices(types.DropdownView(), banks)
    inputs.enum(
        "bank",
        dropdown.values(),
        label="Bank",
        description="Its shots are placed in the map's coordinates (a second map over their field)",
        default=wrote if wrote in banks else banks[0],
        view=dropdown,
    )
