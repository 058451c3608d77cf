"""Views of reference shots: the references themselves, the shots behind predictions, a grading's worst shots."""

from __future__ import annotations

from collections.abc import Iterable

from ntt.fo.references import DEFAULT_TAG, NTTFiftyOneError, check_collection, reference_ids
from ntt.fo.review.feedback import references_behind
from ntt.fo.review.grades import worst_shots


def load_references_view(
    coll,
    tag: str = DEFAULT_TAG,
    predictions: str | None = None,
    label_ids: Iterable[str] | None = None,
    grade_key: str | None = None,
    count: int = 5,
):
    """A view of reference shots, from one of three places.

    - By default: the reference samples of ``coll`` (tagged ``tag``, or holding a label tagged ``tag``).
    - ``predictions``: the reference labels behind predictions of that field (``label_ids``, default all of
      ``coll``): the shots they were matched to (``shot_sample_id`` / ``shot_label_id``), only those labels
      shown. This is what 'NTT: show references' opens for the predictions selected in the App.
    - ``grade_key``: the ``count`` most harmful shots of the grading stored under that key
      (``grade_references(..., grade_key=...)``), only those labels shown.

    Raises:
        NTTFiftyOneError: both ``predictions`` and ``grade_key`` given, predictions that name no shot, or no
            grading of that key.
    """
    check_collection(coll)
    if predictions is not None and grade_key is not None:
        raise NTTFiftyOneError("give predictions or grade_key, not both: they open different views")
    if predictions is not None:
        return references_behind(coll, predictions, label_ids)
    if grade_key is not None:
        return worst_shots(coll, grade_key, count)
    return coll.select(reference_ids(coll, tag))
