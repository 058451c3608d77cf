"""What the App's forms ask the SDK before anything runs: the checks ``segment`` and the bank calls make, and the
cheap reads forms show (targets, settings, review counts), each from the dataset's records without loading a
model or a bank file. The operators in ``plugin/`` use these; SDK users rarely need them.
"""

from ntt.fo.banks import check_bank_name
from ntt.fo.checks import check_segment_args, check_weights
from ntt.fo.labelling.segment import segment_settings, targets_view
from ntt.fo.references import (
    DEFAULT_TAG,
    check_detections_field,
    detections_fields,
    field_of_labels,
    reference_ids,
    without_references,
)
from ntt.fo.review.feedback import review_counts
from ntt.fo.review.maps import count_kept_embeddings
from ntt.fo.store import bank_dir

__all__ = [
    "DEFAULT_TAG",
    "bank_dir",
    "check_bank_name",
    "check_detections_field",
    "check_segment_args",
    "check_weights",
    "count_kept_embeddings",
    "detections_fields",
    "field_of_labels",
    "reference_ids",
    "review_counts",
    "segment_settings",
    "targets_view",
    "without_references",
]
