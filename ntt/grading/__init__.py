"""The references grade themselves: leave-one-out over a bank's own reference images (``report``), where a variant
without a shot can differ (``leave_one_out``), finishing such a variant again (``refinish``), COCOeval's AP50 from
matches (``ap50``), per-class thresholds fitted from it (``calibration``), and which images to label next
(``suggest``: a cover of the image vectors, or where a bank is least sure).

May import: the base modules, ``ntt.io``, ``ntt.models``, ``ntt.bank``, ``ntt.cache``, ``ntt.predict``.
"""

from ntt.grading.report import ClassGrade, GradeReport, LabelledImage, ShotGrade, grade, grade_steps

__all__ = ["ClassGrade", "GradeReport", "LabelledImage", "ShotGrade", "grade", "grade_steps"]
