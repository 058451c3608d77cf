"""Operators of the ntt FiftyOne plugin. Each reads ``ctx.params`` and calls one ``ntt.fo`` function.

Every operator here must be listed under ``operators:`` in ``fiftyone.yml`` (FiftyOne drops the others).
"""

from .operators.bank import AddReferences, BuildBank
from .operators.evaluate import EvaluatePredictions
from .operators.feedback import GradeReferences, MarkNegatives, PromoteCorrections, ShowReferences
from .operators.jobs import Jobs, Runs
from .operators.manage import BankInfo, DeleteBank, RenameBank
from .operators.maps import MapPredictions
from .operators.references import MarkReferences, UnmarkReferences
from .operators.segment import SegmentWithBank
from .operators.suggest import SuggestReferences

OPERATORS = (
    MarkReferences,
    UnmarkReferences,
    SuggestReferences,
    BuildBank,
    AddReferences,
    SegmentWithBank,
    MarkNegatives,
    PromoteCorrections,
    ShowReferences,
    GradeReferences,
    EvaluatePredictions,
    MapPredictions,
    Jobs,
    BankInfo,
    RenameBank,
    DeleteBank,
    Runs,
)


def register(p):
    for operator in OPERATORS:
        p.register(operator)
