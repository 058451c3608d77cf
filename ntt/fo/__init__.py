"""The FiftyOne SDK of ntt: the only part of the package that imports fiftyone.

Typical flow on any dataset or view::

    import ntt.fo as nfo

    nfo.mark_references(dataset.take(10, seed=0))                     # or label-level: label_field=...
    nfo.build_bank(dataset, "pets", label_field="ground_truth")
    nfo.segment(dataset, "pets", label_field="ntt", batch_size=8)
    nfo.add_negatives(dataset, "pets", "ntt", label_ids=false_positive_ids)  # then segment again
    # or step by step: build_bank_steps / add_references_steps / segment_steps yield Step(fraction, label)
    # and return the result; closing one stops the run there (segment keeps the batches written so far)
    results = nfo.evaluate(dataset, "ntt", gt_field="ground_truth", eval_key="ntt_eval")
    results.print_report()
"""

from ..steps import Step
from .banks import (
    add_references,
    add_references_steps,
    bank_dir,
    build_bank,
    build_bank_steps,
    check_bank_name,
    delete_bank,
    get_bank_info,
    list_banks,
    load_bank,
    rename_bank,
)
from .checks import check_segment_args, check_weights
from .evaluate import evaluate
from .feedback import add_negatives, add_negatives_steps, promote, promote_steps, references_behind, review_counts
from .grades import grade_references, grade_references_steps, worst_shots
from .model import NTTModel, load_model, register_zoo_source
from .reaper import reap
from .references import (
    DEFAULT_TAG,
    NTTFiftyOneError,
    check_detections_field,
    collect_references,
    detections_fields,
    mark_references,
    reference_classes,
    reference_ids,
    unmark_references,
    without_references,
)
from .runs import RunStopped, list_runs, stop_run, tracked
from .segment import segment, segment_settings, segment_steps, segment_targets, to_detections
from .shard_status import run_status, sharded_runs
from .shards import shard_steps, submit
from .workers import Worker

__all__ = [
    "DEFAULT_TAG",
    "NTTModel",
    "Worker",
    "NTTFiftyOneError",
    "RunStopped",
    "Step",
    "add_negatives",
    "add_negatives_steps",
    "add_references",
    "add_references_steps",
    "bank_dir",
    "build_bank",
    "build_bank_steps",
    "check_bank_name",
    "check_detections_field",
    "check_segment_args",
    "check_weights",
    "collect_references",
    "delete_bank",
    "detections_fields",
    "evaluate",
    "get_bank_info",
    "grade_references",
    "grade_references_steps",
    "list_banks",
    "list_runs",
    "load_bank",
    "load_model",
    "mark_references",
    "promote",
    "promote_steps",
    "reap",
    "register_zoo_source",
    "reference_classes",
    "reference_ids",
    "references_behind",
    "rename_bank",
    "review_counts",
    "run_status",
    "segment",
    "segment_settings",
    "segment_steps",
    "segment_targets",
    "shard_steps",
    "sharded_runs",
    "stop_run",
    "submit",
    "to_detections",
    "tracked",
    "unmark_references",
    "without_references",
    "worst_shots",
]
