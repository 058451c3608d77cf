"""Teaching a bank from a review, without re-encoding what it holds: new positive and negative shots.

``teach`` encodes only the new shots, with the bank's own encoder settings, and adds them: positives make (or
join) their class's prototype, negatives push down what looks more like them than like their class
(``postprocess.match_classes``). Labels the bank holds already as that kind of shot (``MemoryBank.holds``) are
left out before encoding; a label it holds as the other kind of the same class is encoded, and replaces that shot
(the newer verdict wins).
"""

from __future__ import annotations

from collections.abc import Sequence

from ntt.bank.encoder import build_bank_steps
from ntt.bank.memory import MemoryBank
from ntt.config import NTTConfig
from ntt.steps import Step, Steps, drive
from ntt.types import Progress, Reference


def teach_steps(
    bank: MemoryBank,
    positives: Sequence[Reference],
    negatives: Sequence[Reference],
    cfg: NTTConfig,
    encoder=None,
    proposer=None,
) -> Steps[MemoryBank]:
    """``teach`` as a generator: a ``Step`` after each image encoded; returns the new bank."""
    lesson = yield from lesson_steps(bank, positives, negatives, cfg, encoder=encoder, proposer=proposer)
    return learn(bank, lesson)


def lesson_steps(
    bank: MemoryBank,
    positives: Sequence[Reference],
    negatives: Sequence[Reference],
    cfg: NTTConfig,
    encoder=None,
    proposer=None,
) -> Steps[list[MemoryBank]]:
    """The new shots of a ``teach``, encoded once: a ``Step`` after each image encoded; returns them as parts
    (positives, then negatives) for ``learn`` to add to ``bank``, or to a later version of it (a bank stored
    with a dataset may change while the shots are encoded). An empty list: nothing is new."""
    positives, negatives = _new(bank, positives, False), _new(bank, negatives, True)
    total = max(1, len(positives) + len(negatives))
    lesson = []
    if positives:
        encoding = build_bank_steps(positives, cfg, encoder=encoder, proposer=proposer)
        lesson.append((yield from _scaled(encoding, 0, len(positives), total)))
    if negatives:
        encoding = build_bank_steps(negatives, cfg, encoder=encoder, proposer=proposer)
        added = yield from _scaled(encoding, len(positives), len(negatives), total)
        lesson.append(added.as_negatives())
    if not lesson:
        yield Step(1.0, "Nothing new: every shot is in the bank already")
    return lesson


def learn(bank: MemoryBank, lesson: Sequence[MemoryBank]) -> MemoryBank:
    """``bank`` plus the parts of a lesson (``MemoryBank.add``: classes matched by name, labels the bank holds
    already as that kind of shot left out, contradicted shots replaced). Returns ``bank`` itself when nothing is
    new."""
    for part in lesson:
        bank = bank.add(part)
    return bank


def teach(*args, progress: Progress | None = None, **kwargs) -> MemoryBank:
    """A new bank: ``bank`` plus ``positives`` (shots of their classes; a new class name makes a new class)
    and ``negatives`` (negative shots of their classes, which the bank or the positives must have).

    Args:
        bank: the bank to teach (not changed).
        positives, negatives: references (image, mask or box, class); their provenance (``source``,
            ``image_id``, ``annotation_id``) names their label, and labels the bank holds already as that kind of
            shot are skipped (``MemoryBank.holds``).
        cfg: the bank's settings (its encoder must be the bank's: ``MemoryBank.add`` checks).
        encoder, proposer: models to use instead of the configured DINOv2 / SAM2 (tests, other backbones).
        progress: ``progress(fraction, label)`` for each step of ``teach_steps``.
    """
    return drive(teach_steps(*args, **kwargs), progress)


def _new(bank: MemoryBank, refs: Sequence[Reference], negative: bool) -> list[Reference]:
    """The references whose label ``bank`` does not hold as that kind of shot yet."""
    return [ref for ref in refs if not bank.holds(ref.provenance(), negative)]


def _scaled(steps: Steps[MemoryBank], done: int, size: int, total: int) -> Steps[MemoryBank]:
    """The steps of a part of ``size`` references after ``done`` others, as fractions of all ``total``."""
    while True:
        try:
            step = next(steps)
        except StopIteration as stop:
            return stop.value
        yield Step((done + step.fraction * size) / total, step.label)
