"""Evaluate predictions with FiftyOne's COCO evaluator (SDK: ``ntt.fo.evaluate``)."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from .. import inputs as ui
from .base import NTTOperator


class EvaluatePredictions(NTTOperator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="evaluate_predictions",
            label="NTT: evaluate predictions",
            description="COCO mAP with masks, reference samples excluded; opens in the Model Evaluation panel",
            dynamic=True,
        )

    def resolve_input(self, ctx):
        inputs, unusable = self.start_form()
        if unusable:
            return unusable
        fields = ui.detections_fields(ctx)
        if len(fields) < 2:
            return ui.invalid(inputs, "Needs a predictions field and a ground-truth field (both Detections).")
        preds = [f for f in fields if (ctx.dataset.get_field(f).info or {}).get("ntt_bank")] or fields
        ui.field_input(inputs, ctx, "pred_field", "Predictions", "Field written by 'segment with bank'", preds[0])
        gt_default = "ground_truth" if "ground_truth" in fields else next(f for f in fields if f != preds[0])
        ui.field_input(inputs, ctx, "gt_field", "Ground truth", "Detections with instance masks", gt_default)
        inputs.str("eval_key", label="Evaluation key", default="ntt_eval", required=True)
        if ctx.params.get("pred_field") and ctx.params.get("pred_field") == ctx.params.get("gt_field"):
            return ui.invalid(inputs, "Predictions and ground truth must be different fields.")
        return types.Property(inputs, view=types.View(label="Evaluate NTT predictions"))

    def execute(self, ctx):
        p = ctx.params
        results = ui.sdk().evaluate(
            ctx.dataset, p["pred_field"], gt_field=p["gt_field"], eval_key=p.get("eval_key", "ntt_eval")
        )
        if ctx.executor is not None:
            ctx.trigger("reload_dataset")
        return {"mAP": float(results.mAP()), "eval_key": p.get("eval_key", "ntt_eval")}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.float("mAP", label="COCO mAP (masks)")
        outputs.str("eval_key", label="Evaluation key (open the Model Evaluation panel)")
        return types.Property(outputs)
