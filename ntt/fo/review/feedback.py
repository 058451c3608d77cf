"""The review loop's way back into a bank: verdicts on a run's predictions become shots (``ntt.bank.teach``).

- ``add_negatives``: chosen labels (usually false positives) become negative shots of their classes.
- ``promote_predictions``: after review, predictions tagged correct become positive shots of their class,
  predictions tagged wrong negatives of the class they were predicted as, and a prediction whose label the
  reviewer changed a positive of the new class and a negative of the predicted one. Edits made with FiftyOne's
  own annotation tools (the App's Annotate tab) count too (``corrections``): an edited mask or box is a
  positive with the correction, a deleted prediction a negative of its class, an object drawn into the field a
  positive of its class.
- ``references_behind``: the reference labels that predictions were matched to (their nearest shots), for
  ``load_references_view(predictions=...)``.

New shots are encoded once, with the bank's own models; the rest of the bank is not re-encoded, and when another
change (another reviewer's) was stored while they were encoded, they are added to that version instead (matched
to its classes by name; shots it holds already are not added twice). Samples that gave
positive shots are references from then on (left out of later runs and their evaluation); samples that gave only
negatives stay targets, so re-segmenting them shows what the negatives changed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import fiftyone as fo
from bson import ObjectId

from ntt.bank.memory import MemoryBank
from ntt.bank.teach import learn, lesson_steps
from ntt.fo.banks import BankRead, needed_models, read_bank, store_change
from ntt.fo.checks import check_device, check_weights, settings_here
from ntt.fo.references import NTTFiftyOneError, _sample_references, check_collection, check_detections_field
from ntt.fo.review.corrections import corrections
from ntt.fo.store import dataset_of
from ntt.steps import Steps, drive, signature_of
from ntt.types import Progress, Reference

log = logging.getLogger(__name__)

VERDICTS = ("correct", "wrong", "relabelled", "edited", "deleted", "drawn")


def add_negatives_steps(
    coll,
    name: str,
    label_field: str,
    label_ids: Iterable[str] | None = None,
    device: str | None = None,
) -> Steps[MemoryBank]:
    """``add_negatives`` as a generator (same arguments, checked at the first step): yields a ``Step`` after
    each image encoded and returns the (updated) bank. Closed before its end, the bank stays as it was."""
    read = read_bank(coll, name)
    wanted = None if label_ids is None else {str(i) for i in label_ids}
    negatives = [(s, d, d.label, "negative") for s, d in _labels(coll, label_field) if wanted is None or d.id in wanted]
    if not negatives:
        raise NTTFiftyOneError(f"no labels to make negatives: none of the chosen labels is in {label_field!r} here")
    return (yield from _teach(coll, read, label_field, [], negatives, device))


@signature_of(add_negatives_steps)
def add_negatives(*args, progress: Progress | None = None, **kwargs) -> MemoryBank:
    """Make labels of ``label_field`` negative shots of their classes in bank ``name``.

    Typical use: after a run, select its false positives (``label_ids``; default: every label of the field in
    ``coll``) and call this; segmenting again pushes down whatever looks more like them than like the class.
    Each label's own class must be one of the bank's. Labels that are negatives already are skipped; the new
    ones are encoded with the bank's own models on ``device`` (default "auto"). Their samples stay targets.
    ``progress(fraction, label)`` is called for each step of ``add_negatives_steps``. Returns the bank.
    """
    return drive(add_negatives_steps(*args, **kwargs), progress)


def promote_predictions_steps(
    coll,
    name: str,
    label_field: str,
    correct_tag: str = "correct",
    wrong_tag: str = "wrong",
    device: str | None = None,
) -> Steps[MemoryBank]:
    """``promote_predictions`` as a generator (same arguments): yields a ``Step`` after each image encoded and
    returns the (updated) bank. Closed before its end, the bank stays as it was."""
    read = read_bank(coll, name)
    positives, negatives = _verdicts(coll, label_field, correct_tag, wrong_tag)
    if not positives and not negatives:
        raise NTTFiftyOneError(
            f"nothing to promote in {label_field!r}: tag predictions {correct_tag!r} or {wrong_tag!r}, change "
            "their label, or correct them in the App's Annotate tab, first"
        )
    return (yield from _teach(coll, read, label_field, positives, negatives, device))


def review_counts(coll, label_field: str, correct_tag: str = "correct", wrong_tag: str = "wrong") -> dict[str, int]:
    """What ``promote_predictions`` would take from ``label_field``, per verdict (``VERDICTS``): predictions tagged
    ``correct`` or ``wrong``, ``relabelled``, ``edited``, ``deleted``, and objects ``drawn`` into the field."""
    positives, negatives = _verdicts(coll, label_field, correct_tag, wrong_tag)
    verdicts = [v for *_, v in positives] + [v for *_, v in negatives if v != "relabelled"]
    return {kind: verdicts.count(kind) for kind in VERDICTS}


def _verdicts(coll, label_field: str, correct_tag: str, wrong_tag: str) -> tuple[list, list]:
    """The reviewed predictions as (sample, detection, class name, verdict) positives and negatives: from tags,
    changed labels, and edits made with FiftyOne's annotation tools (``corrections``)."""
    positives, negatives = [], []
    for sample, whole in _samples(coll, label_field):
        labels = sample[label_field]
        changes = corrections(whole)  # against every prediction: one the view hides is not a deleted one
        visible = {det.id for det in labels.detections} if labels is not None else set()
        edited = dict((det.id, mask_changed) for det, mask_changed in changes.edited)
        for det in labels.detections if labels is not None else []:
            predicted = det.get_field("predicted_label") if det.has_field("predicted_label") else det.label
            tags = set(det.tags or [])
            if correct_tag in tags and wrong_tag in tags:
                raise NTTFiftyOneError(
                    f"label {det.id} of sample {sample.id} is tagged {correct_tag!r} and {wrong_tag!r}"
                )
            shot = _as_edited(det, edited[det.id]) if det.id in edited else det
            if det.label != predicted:  # relabelled by the reviewer
                positives.append((sample, shot, det.label, "relabelled"))
                negatives.append((sample, shot, predicted, "relabelled"))
            elif wrong_tag in tags:
                negatives.append((sample, det, predicted, "wrong"))
            elif det.id in edited:
                positives.append((sample, shot, det.label, "edited"))
            elif correct_tag in tags:
                positives.append((sample, det, det.label, "correct"))
        drawn = [det for det in changes.drawn if det.id in visible and det.label is not None]
        positives += [(sample, det, det.label, "drawn") for det in drawn]
        negatives += [(sample, _deleted(rec), rec["label"], "deleted") for rec in changes.deleted]
    return positives, negatives


def _as_edited(det, mask_changed: bool):
    """An edited prediction as a shot: with its corrected mask; with its box alone when only the box was changed
    (the mask no longer fits it: SAM2 makes one from the box)."""
    return det if mask_changed else fo.Detection(_id=det._id, label=det.label, bounding_box=det.bounding_box)


def _deleted(rec: dict):
    """A deleted prediction, from its record: its id, class and box (its mask is gone: SAM2 makes one)."""
    return fo.Detection(_id=ObjectId(rec["id"]), label=rec["label"], bounding_box=rec["box"])


@signature_of(promote_predictions_steps)
def promote_predictions(*args, progress: Progress | None = None, **kwargs) -> MemoryBank:
    """Teach bank ``name`` from a reviewed predictions field, in one call, without re-encoding the bank.

    In ``label_field`` of ``coll``: a prediction tagged ``correct_tag`` becomes a positive shot of its class (its
    predicted mask); one tagged ``wrong_tag`` a negative shot of the class it was predicted as; one whose label
    the reviewer changed (``label`` differs from its ``predicted_label``) a positive of the new class (a new class
    if the bank has none of that name) and a negative of the predicted one. Edits made with FiftyOne's annotation
    tools (the App's Annotate tab, or the SDK) are verdicts too: a prediction whose mask was painted becomes a
    positive with the corrected mask (one whose box alone was moved, with that box: SAM2 makes its mask), a
    deleted prediction a negative of its class (from its recorded box), and an object drawn into the field a
    positive of its class. Each new shot records its sample, label, field and verdict (``promoted``: one of
    ``VERDICTS``); predictions already promoted are skipped. Samples that gave
    positives are references from then on. ``progress(fraction, label)`` is called for each step of
    ``promote_predictions_steps``. Returns the bank.
    """
    return drive(promote_predictions_steps(*args, **kwargs), progress)


def references_behind(coll, label_field: str, label_ids: Iterable[str] | None = None):
    """A view of the reference labels behind predictions of ``label_field`` (``label_ids``, default all in
    ``coll``): the shots they were matched to (``shot_sample_id`` / ``shot_label_id``), in the bank's reference
    field, only those labels shown."""
    check_detections_field(coll, label_field)
    view = coll if label_ids is None else coll.select_labels(ids=list(label_ids), fields=label_field)
    shots = [i for i in view.values(f"{label_field}.detections.shot_label_id", unwind=True) if i]
    if not shots:
        raise NTTFiftyOneError(f"no provenance in {label_field!r}: these predictions name no reference shot")
    return dataset_of(coll).select_labels(ids=sorted(set(shots)))


def _labels(coll, label_field: str):
    """(sample, detection) for every label of ``label_field`` in ``coll``."""
    for sample, _ in _samples(coll, label_field):
        for det in sample[label_field].detections if sample[label_field] is not None else []:
            yield sample, det


def _samples(coll, label_field: str):
    """The samples of ``coll`` with only ``label_field`` loaded (checked first), each with its labels as the
    dataset holds them: a view may hide some (filtered by confidence, or a lasso selection), and verdicts are
    taken from the labels it shows, but what was deleted is told from all of them."""
    check_collection(coll)
    check_detections_field(coll, label_field)
    shown = coll.select_fields(label_field)
    whole = dataset_of(coll).select(shown.values("id"), ordered=True).select_fields(label_field)
    for sample, full in zip(shown.iter_samples(), whole.iter_samples()):
        yield sample, full[label_field]


def _teach(coll, read: BankRead, field: str, positives, negatives, device) -> Steps[MemoryBank]:
    """Encode the verdicts ``(sample, detection, class name, verdict)`` as shots, once, and add them to the bank
    as it is stored when they are done (``banks.store_change``)."""
    bank = read.bank
    cfg = settings_here(read.info["config"], device=device)
    check_device(cfg)
    known = set(bank.class_names) | {cls for _, _, cls, _ in positives}
    strangers = sorted({str(cls) for _, _, cls, _ in negatives} - known)
    if strangers:
        raise NTTFiftyOneError(
            f"negatives must be of the bank's classes ({', '.join(bank.class_names)}); these are not: {strangers}"
        )
    ids = dict(zip(bank.class_names, bank.class_ids))
    pos, neg = (_references(items, ids, field) for items in (positives, negatives))
    check_weights(cfg, needed_models(pos + neg))
    lesson = yield from lesson_steps(bank, pos, neg, cfg)
    taught = store_change(coll, read, lambda current: learn(current, lesson), cfg)
    if lesson:
        encoded = sum(len(part.shots) for part in lesson)
        log.info("bank %r: %d new shot(s) encoded; it holds %d now", read.name, encoded, len(taught.shots))
    return taught


def _references(items, ids: dict[str, int], field: str) -> list[Reference]:
    """References of the given classes from labels (a new class name gets the next free id in ``ids``)."""
    refs = []
    for sample, det, cls, verdict in items:
        [ref] = _sample_references(sample, [det], ids)
        ids.setdefault(cls, max(ids.values(), default=0) + 1)
        ref.class_id, ref.class_name = ids[cls], cls
        ref.extra.update(label_field=field, promoted=verdict)
        refs.append(ref)
    return refs
