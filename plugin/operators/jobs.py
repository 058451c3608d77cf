"""Follow and stop this dataset's NTT jobs (SDK: ``ntt.fo.list_jobs``, ``ntt.fo.stop_job``)."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from .. import runner
from .. import widgets as ui
from ..settings import param, sdk
from .base import NTTOperator, operator_config

ACTIVE = ("queued", "running")


class Jobs(NTTOperator):
    @property
    def config(self):
        return operator_config(
            "jobs", "NTT: jobs", "Follow this dataset's NTT jobs (in this App, in the background, sharded) and stop one"
        )

    def resolve_execution_options(self, ctx):
        return foo.ExecutionOptions(allow_immediate_execution=True, allow_delegated_execution=False)

    def form(self, inputs, ctx):
        runs = sdk().list_jobs(ctx.dataset)
        if not runs:
            inputs.view(
                "none", types.Notice(label="No NTT job of this dataset yet (since this App started, or queued)")
            )
            return ui.form(inputs, "NTT jobs")
        inputs.md(jobs_table(runs), name="jobs")
        active = {
            run["id"]: f"{run['operation']} ({run['where']}, {run['state']})" for run in runs if run["state"] in ACTIVE
        }
        if active:
            stop = types.RadioGroup()
            for key, label in active.items():
                stop.add_choice(key, label=label)
            inputs.enum(
                "stop", stop.values(), label="Stop a job", description="Execute stops the one chosen", view=stop
            )
        inputs.view(
            "refresh",
            types.Notice(label="Reopen this form to refresh; Execute also reloads the dataset, to show new labels"),
        )
        return ui.form(inputs, "NTT jobs")

    def execute(self, ctx):
        nfo = sdk()
        chosen = param(ctx, "stop")
        with runner.clear_errors():
            message = nfo.stop_job(ctx.dataset, chosen) if chosen else "Nothing stopped; dataset reloaded"
        runner.reload(ctx)
        return {"message": message, "jobs": jobs_table(nfo.list_jobs(ctx.dataset))}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("message", label="Result")
        outputs.str("jobs", label="Jobs", view=types.MarkdownView())
        return types.Property(outputs, view=types.View(label="NTT jobs"))


def jobs_table(runs: list[dict]) -> str:
    """The jobs as a markdown table, newest first."""
    rows = ["| started (UTC) | job | where | state | progress | problem |", "|---|---|---|---|---|---|"]
    for run in runs:
        progress = "" if run["progress"] is None else f"{100 * run['progress']:.0f}% {run['label'] or ''}".strip()
        started = (run["started"] or "")[:19].replace("T", " ")
        rows.append(
            f"| {started} | {run['operation']} | {run['where']} | {run['state']} | {progress} | {run['error'] or ''} |"
        )
    return "\n".join(rows)


class Runs(Jobs):
    """'NTT: runs', the old name of 'NTT: jobs': kept one release, unlisted ("run" keeps FiftyOne's meaning)."""

    @property
    def config(self):
        return operator_config(
            "runs", "NTT: runs (deprecated: use NTT: jobs)", "The old name of 'NTT: jobs'", unlisted=True
        )
