"""The FiftyOne SDK of ntt: the only part of the package that imports fiftyone.

Typical flow on any dataset or view::

    import ntt.fo as nfo

    nfo.suggest_references(dataset, count=10)                         # which samples to label first (tagged)
    nfo.mark_references(dataset.take(10, seed=0))                     # or label-level: label_field=...
    nfo.build_bank(dataset, "pets", label_field="ground_truth")
    nfo.segment(dataset, "pets", label_field="ntt", batch_size=8)
    results = nfo.evaluate(dataset, "ntt", gt_field="ground_truth", eval_key="ntt_eval")
    nfo.map_predictions(dataset, "ntt")                               # the Embeddings panel; "sort by similarity"
    nfo.add_negatives(dataset, "pets", "ntt", label_ids=false_positive_ids)  # then segment again
    nfo.promote_predictions(dataset, "pets", "ntt")                   # reviewed predictions become shots
    nfo.grade_references(dataset, "pets", grade_key="pets_grades")    # a run: dataset.load_run_results(key)
    nfo.submit_job(dataset, "pets", label_field="ntt")                # sharded, for `ntt worker` processes on many GPUs

The words, as FiftyOne uses them: a *run* is what FiftyOne stores under a key (a bank is one, a stored grading
another); a *job* is work in progress (in this App, in the background, or sharded over ``ntt worker`` processes).

Beyond these names: ``ntt.fo.steps`` (the long calls as generators of progress steps), ``ntt.fo.forms`` (the
checks and cheap reads the App's forms make), ``ntt.fo.jobs.workers`` (``ntt worker`` and its reaper),
``ntt.fo.labelling.model.NTTModel`` (what ``load_model`` returns). Older names still work for one release, with a
``FutureWarning`` naming the new one.
"""

import importlib
import warnings

from ntt.fo import forms, steps  # noqa: F401 - submodules reached as ntt.fo.forms, ... (not re-exported)
from ntt.fo.banks import add_references, build_bank, delete_bank, get_bank_info, list_banks, load_bank, rename_bank
from ntt.fo.jobs import workers  # noqa: F401 - reached as ntt.fo.jobs.workers (and ntt.fo.workers)
from ntt.fo.jobs.follow import get_job_status, list_jobs, stop_job
from ntt.fo.jobs.shards import submit_job
from ntt.fo.labelling.evaluate import evaluate
from ntt.fo.labelling.model import load_model, register_zoo_source
from ntt.fo.labelling.segment import segment
from ntt.fo.references import NTTFiftyOneError, mark_references, unmark_references
from ntt.fo.review.feedback import add_negatives, promote_predictions
from ntt.fo.review.grades import grade_references
from ntt.fo.review.maps import index_similarity, map_predictions
from ntt.fo.review.suggest import suggest_references
from ntt.fo.review.views import load_references_view

__all__ = [
    # references
    "mark_references",
    "unmark_references",
    "load_references_view",
    "suggest_references",
    # banks
    "build_bank",
    "add_references",
    "get_bank_info",
    "list_banks",
    "load_bank",
    "rename_bank",
    "delete_bank",
    # labelling
    "segment",
    "load_model",
    "register_zoo_source",
    # evaluation
    "evaluate",
    # the review loop
    "add_negatives",
    "promote_predictions",
    "grade_references",
    # error analysis: the predictions as a map, and "more like this"
    "map_predictions",
    "index_similarity",
    # jobs: sharded over `ntt worker`s, in the background, or in this App
    "submit_job",
    "get_job_status",
    "list_jobs",
    "stop_job",
    # the one error type
    "NTTFiftyOneError",
]

# old name -> (module, name there): each still works for one release, with a FutureWarning naming the new place
DEPRECATED = {
    "promote": ("ntt.fo", "promote_predictions"),
    "submit": ("ntt.fo", "submit_job"),
    "run_status": ("ntt.fo", "get_job_status"),
    "list_runs": ("ntt.fo", "list_jobs"),
    "stop_run": ("ntt.fo", "stop_job"),
    "sharded_runs": ("ntt.fo.jobs.status", "sharded_runs"),
    "references_behind": ("ntt.fo.review.feedback", "references_behind"),
    "worst_shots": ("ntt.fo.review.grades", "worst_shots"),
    "segment_targets": ("ntt.fo.forms", "targets_view"),
    "build_bank_steps": ("ntt.fo.steps", "build_bank_steps"),
    "add_references_steps": ("ntt.fo.steps", "add_references_steps"),
    "segment_steps": ("ntt.fo.steps", "segment_steps"),
    "add_negatives_steps": ("ntt.fo.steps", "add_negatives_steps"),
    "promote_steps": ("ntt.fo.steps", "promote_predictions_steps"),
    "grade_references_steps": ("ntt.fo.steps", "grade_references_steps"),
    "Step": ("ntt.fo.steps", "Step"),
    "tracked": ("ntt.fo.steps", "tracked"),
    "RunStopped": ("ntt.fo.steps", "JobStopped"),
    "check_segment_args": ("ntt.fo.forms", "check_segment_args"),
    "check_weights": ("ntt.fo.forms", "check_weights"),
    "check_bank_name": ("ntt.fo.forms", "check_bank_name"),
    "check_detections_field": ("ntt.fo.forms", "check_detections_field"),
    "detections_fields": ("ntt.fo.forms", "detections_fields"),
    "segment_settings": ("ntt.fo.forms", "segment_settings"),
    "review_counts": ("ntt.fo.forms", "review_counts"),
    "bank_dir": ("ntt.fo.forms", "bank_dir"),
    "reference_ids": ("ntt.fo.forms", "reference_ids"),
    "without_references": ("ntt.fo.forms", "without_references"),
    "DEFAULT_TAG": ("ntt.fo.forms", "DEFAULT_TAG"),
    "Worker": ("ntt.fo.jobs.workers", "Worker"),
    "reap": ("ntt.fo.jobs.workers", "reap"),
    "shard_steps": ("ntt.fo.jobs.workers", "shard_steps"),
    "NTTModel": ("ntt.fo.labelling.model", "NTTModel"),
    "collect_references": ("ntt.fo.references", "collect_references"),
    "reference_classes": ("ntt.fo.references", "reference_classes"),
    "to_detections": ("ntt.fo.labelling.segment", "to_detections"),
}


def __getattr__(name: str):
    if name not in DEPRECATED:
        raise AttributeError(f"module 'ntt.fo' has no attribute {name!r}")
    module, new = DEPRECATED[name]
    warnings.warn(
        f"ntt.fo.{name} is deprecated and will be removed in the next release: use {module}.{new}",
        FutureWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(module), new)
