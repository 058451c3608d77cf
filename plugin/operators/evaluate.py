"""Evaluate predictions with FiftyOne's COCO evaluator, masks and mAP (SDK: ``ntt.fo.evaluate``)."""

from __future__ import annotations

import fiftyone.operators.types as types

from .. import runner
from .. import widgets as ui
from ..settings import param, sdk
from .base import NTTOperator, operator_config

AVERAGES = ("micro avg", "macro avg", "weighted avg")
MAX_ROWS = 15  # classes listed in the short report (by support)


class EvaluatePredictions(NTTOperator):
    @property
    def config(self):
        return operator_config(
            "evaluate_predictions",
            "NTT: evaluate predictions",
            "COCO mAP with instance masks, the bank's reference samples left out; opens in the Model Evaluation "
            "panel (works after the bank is renamed or deleted)",
        )

    def form(self, inputs, ctx):
        fields = sdk().forms.detections_fields(ctx.dataset)
        if len(fields) < 2:
            return ui.invalid(
                inputs,
                "Needs a predictions field and a ground-truth field, both Detections: segment with an NTT bank first.",
            )
        ntt = [f for f in fields if (ctx.dataset.get_field(f).info or {}).get("ntt_bank")]
        pred = ui.field_input(
            inputs, ctx, "pred_field", "Predictions", "Field written by 'NTT: segment with bank'", (ntt or fields)[0]
        )
        gt_default = "ground_truth" if "ground_truth" in fields else next(f for f in fields if f != pred)
        gt = ui.field_input(inputs, ctx, "gt_field", "Ground truth", "Detections with instance masks", gt_default)
        ui.target_input(inputs, ctx, "Evaluate")
        inputs.str(
            "eval_key",
            label="Evaluation key",
            default="ntt_eval",
            required=True,
            description="Name of the evaluation (letters, digits, _); adds <key>_tp/_fp/_fn fields",
        )
        inputs.bool("exclude_references", label="Leave out the reference samples", default=True)
        if pred == gt:
            return ui.invalid(inputs, "Predictions and ground truth must be different fields.")
        key = param(ctx, "eval_key", "ntt_eval")
        if not key.isidentifier():
            return ui.invalid(inputs, f"'{key}' is not a valid evaluation key: use letters, digits and _.")
        if key in ctx.dataset.list_evaluations():
            inputs.view("replace", types.Notice(label=f"The existing evaluation '{key}' will be replaced"))
        return ui.form(inputs, "Evaluate NTT predictions")

    def execute(self, ctx):
        nfo = sdk()
        key = param(ctx, "eval_key", "ntt_eval")
        with runner.clear_errors():
            results = nfo.evaluate(
                ctx.target_view(),
                ctx.params["pred_field"],
                gt_field=ctx.params["gt_field"],
                eval_key=key,
                exclude_references=bool(param(ctx, "exclude_references", True)),
            )
        runner.reload(ctx)
        report = results.report()
        rows = sorted((k for k in report if k not in AVERAGES), key=lambda k: -report[k]["support"])[:MAX_ROWS]
        table = {k: {m: round(float(v), 4) for m, v in report[k].items()} for k in [*rows, *AVERAGES] if k in report}
        mAP = float(results.mAP())
        return {"mAP": round(mAP, 4), "eval_key": key, "report": table, "summary": _markdown(mAP, key, table)}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.float("mAP", label="COCO mAP (masks, IoU 0.50:0.95)")
        outputs.str("eval_key", label="Evaluation key (open the Model Evaluation panel)")
        outputs.str("summary", label="Report", view=types.MarkdownView())
        return types.Property(outputs)


def _markdown(mAP: float, key: str, table: dict) -> str:
    lines = [
        f"**mAP {mAP:.3f}** (eval key `{key}`)",
        "",
        "| class | precision | recall | f1 | support |",
        "|---|---|---|---|---|",
    ]
    for name, m in table.items():
        lines.append(
            f"| {name} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1-score']:.3f} | {int(m['support'])} |"
        )
    return "\n".join(lines)
