"""The review loop's way back into a bank: labels a user judged (usually false positives) become negative shots.

A negative shot of a class is a mask that looks like the class but is not: matching lowers the class's score on
masks that look more like it than like the class (``ntt.postprocess.match_classes``). Negatives are encoded with
the bank's own models and added to its file beside the positives; the rest of the bank is not re-encoded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from ..bank import MemoryBank
from ..bank_encoder import build_bank_steps as memory_bank_steps
from ..steps import Step, Steps, drive, signature_of
from ..types import Progress
from .banks import _store, get_bank_info, load_bank, needed_models
from .checks import check_device, check_weights, settings_here
from .references import NTTFiftyOneError, _sample_references, check_collection, check_detections_field
from .store import dataset_of

log = logging.getLogger(__name__)


def add_negatives_steps(
    coll,
    name: str,
    label_field: str,
    label_ids: Iterable[str] | None = None,
    device: str | None = None,
) -> Steps[MemoryBank]:
    """``add_negatives`` as a generator (same arguments, checked at the first step): yields a ``Step`` after
    each image encoded and returns the (updated) bank. Closed before its end, the bank stays as it was."""
    info = get_bank_info(coll, name)
    bank = load_bank(coll, name)
    cfg = settings_here(info["config"], device=device)
    check_device(cfg)
    refs = _negative_references(coll, label_field, label_ids, bank)
    have = {(str(s.get("image_id")), str(s.get("annotation_id"))) for s in bank.shots if s.get("negative")}
    new = [r for r in refs if (str(r.image_id), str(r.annotation_id)) not in have]
    if not new:
        yield Step(1.0, "Nothing new: every chosen label is a negative of the bank already")
        return bank
    log.info("bank %r: encoding %d negative(s)", name, len(new))
    check_weights(cfg, needed_models(new))
    encoded = yield from memory_bank_steps(new, cfg)
    merged = bank.add(encoded.as_negatives())
    _store(dataset_of(coll), name, merged, info["label_field"], info["tag"], cfg)
    return merged


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


def _negative_references(coll, label_field: str, label_ids, bank: MemoryBank) -> list:
    """The chosen labels as references of their classes (the bank's class ids)."""
    check_collection(coll)
    check_detections_field(coll, label_field)
    wanted = None if label_ids is None else {str(i) for i in label_ids}
    ids = dict(zip(bank.class_names, bank.class_ids))
    refs, unknown = [], set()
    for sample in coll.select_fields(label_field).iter_samples():
        dets = sample[label_field].detections if sample[label_field] is not None else []
        chosen = [d for d in dets if wanted is None or d.id in wanted]
        unknown.update(d.label for d in chosen if d.label not in ids)
        if chosen and not unknown:
            refs.extend(_sample_references(sample, chosen, dict(ids)))
    for ref in refs:
        ref.extra["label_field"] = label_field  # where the shot came from
    if unknown:
        raise NTTFiftyOneError(
            f"negatives must be of the bank's classes ({', '.join(bank.class_names)}); these labels are not: "
            f"{sorted(str(u) for u in unknown)}"
        )
    if not refs:
        raise NTTFiftyOneError(f"no labels to make negatives: none of the chosen labels is in {label_field!r} here")
    return refs
