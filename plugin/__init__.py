"""Operators of the ntt FiftyOne plugin. Each reads ``ctx.params`` and calls one ``ntt.fo`` function.

Every operator here must be listed under ``operators:`` in ``fiftyone.yml`` (FiftyOne drops the others).
"""

from .operators.bank import AddReferences, BuildBank
from .operators.evaluate import EvaluatePredictions
from .operators.feedback import GradeReferences, MarkNegatives, PromoteCorrections, ShowReferences
from .operators.jobs import Jobs, Runs
from .operators.manage import BankInfo, DeleteBank, RenameBank
from .operators.references import MarkReferences, UnmarkReferences
from .operators.segment import SegmentWithBank

OPERATORS = (
    MarkReferences,
    UnmarkReferences,
    BuildBank,
    AddReferences,
    SegmentWithBank,
    MarkNegatives,
    PromoteCorrections,
    ShowReferences,
    GradeReferences,
    EvaluatePredictions,
    Jobs,
    BankInfo,
    RenameBank,
    DeleteBank,
    Runs,
)


def register(p):
    for operator in OPERATORS:
        p.register(operator)
