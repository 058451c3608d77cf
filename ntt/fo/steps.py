"""The SDK's long calls as generators, for callers that show progress or may stop part-way (the App's
operators, notebooks with their own progress bars).

Each ``*_steps`` function takes the arguments of its plain twin in ``ntt.fo`` (``segment_steps`` those of
``segment``, ...), yields a ``Step(fraction, label)`` as the work advances and returns what the twin returns.
Closing one before its end stops the work at that step and keeps what it finished (``segment`` keeps the
batches written so far; a bank change not yet stored is not stored). ``tracked`` runs such a generator as a job
of this process, listed by ``ntt.fo.list_jobs`` and stopped by ``ntt.fo.stop_job`` (``JobStopped`` is raised
at its next step).
"""

from ntt.fo.banks import add_references_steps, build_bank_steps
from ntt.fo.jobs.follow import JobStopped, tracked
from ntt.fo.labelling.segment import segment_steps
from ntt.fo.review.feedback import add_negatives_steps, promote_predictions_steps
from ntt.fo.review.grades import grade_references_steps
from ntt.fo.review.suggest import suggest_references_steps
from ntt.steps import Step

__all__ = [
    "JobStopped",
    "Step",
    "add_negatives_steps",
    "add_references_steps",
    "build_bank_steps",
    "grade_references_steps",
    "promote_predictions_steps",
    "segment_steps",
    "suggest_references_steps",
    "tracked",
]
