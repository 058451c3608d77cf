"""Which samples to label next: where to start labelling references, and where a bank needs more.

- Without a bank ("cover"): greedy k-center over one DINOv2 vector per image (``ntt.grading.suggest.k_center``),
  starting from the samples already marked as references, so the picks cover what the references do not; the
  picks are tagged.
- With a bank ("unsure"): its targets ranked by how unsure the bank is about them (far from every shot, and with
  predictions, their least clear detection: ``ntt.grading.suggest.unsureness``); nothing is tagged.

The image vectors are cached on disk (``ntt.predict.image_embeddings``): asking again costs no encoding.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ntt.bank.memory import BankError, MemoryBank
from ntt.cli.pipeline import adopt_bank_encoder
from ntt.config import NTTConfig, get_config
from ntt.fo.banks import read_bank
from ntt.fo.checks import check_device, check_usable, check_weights, run_settings, shot_sample_ids, whole_number
from ntt.fo.references import DEFAULT_TAG, NTTFiftyOneError, check_collection, check_detections_field, reference_ids
from ntt.grading.suggest import k_center, unsureness
from ntt.models import encoder_identity, get_dinov2
from ntt.predict.image_embeddings import ImageEmbeddings, image_embeddings_steps
from ntt.steps import Step, Steps, drive, signature_of
from ntt.types import Progress

SUGGEST_TAG = "ntt_to_label"


def suggest_references_steps(
    coll,
    count: int = 10,
    bank: str | None = None,
    label_field: str | None = None,
    tag: str = SUGGEST_TAG,
    preset: str | None = None,
    config: NTTConfig | dict | None = None,
    device: str | None = None,
) -> Steps[dict[str, Any]]:
    """``suggest_references`` as a generator (same arguments, checked before any model loads): yields
    ``Step(0.0, "Loading DINOv2")``, then a ``Step`` after each batch of images encoded, and returns the result."""
    check_collection(coll)
    count = _checked_count(count)
    _check_tag(tag)
    if bank is None:
        if label_field is not None:
            raise NTTFiftyOneError("label_field (predictions to take margins from) needs a bank: name one")
        return (yield from _cover(coll, count, tag, get_config(preset or "paper", config, device)))
    read = read_bank(coll, bank)
    check_usable(read.bank, bank)
    if label_field is not None:
        check_detections_field(coll, label_field)
    cfg = adopt_bank_encoder(run_settings(read.info.get("config"), preset, config, device), read.bank.encoder)
    ref_tag = read.info.get("tag", DEFAULT_TAG)
    return (yield from _unsure(coll, count, bank, read.bank, ref_tag, label_field, cfg))


@signature_of(suggest_references_steps)
def suggest_references(*args, progress: Progress | None = None, **kwargs) -> dict[str, Any]:
    """Suggest which samples of ``coll`` to label next.

    Without ``bank`` (where to start, or what to add): greedy k-center over one DINOv2 vector per image (the
    mean of its patch tokens): each pick is the sample least like every sample picked or labelled so far, so
    the first few already span the collection. The samples marked as references (tag ``ntt_ref``, on the sample
    or on a label) and those tagged ``tag`` by an earlier call count as picked already, so asking again suggests
    the next ones. The ``count`` new picks are tagged ``tag`` (earlier tags are left alone): open them with
    ``coll.match_tags(tag)``, label them, mark them as references.

    With ``bank`` (a bank stored on the dataset: where it is least sure): its targets (samples that are neither
    its shot samples nor tagged with its reference tag) ranked by ``ntt.grading.suggest.unsureness``: the mean
    of two percentile ranks among the targets, the image's distance to the bank's nearest positive shot (1 -
    cosine) and, with ``label_field``, the smallest ``margin`` among its predictions (small: a detection nearly
    another class); a target without predictions is ranked by its distance alone. The images are encoded with
    the bank's DINOv2, so they share its shots' feature space. Nothing is tagged: open the picks with
    ``coll.select(result["picked"], ordered=True)``.

    Images that cannot be read are skipped and reported. Image vectors are cached on disk
    (``$NTT_CACHE_DIR/image_embeddings``): a second call encodes nothing again.

    Args:
        count: how many samples to suggest, >= 1.
        bank: the name of a bank stored with the dataset (None: cover the collection).
        label_field: with ``bank``, a ``Detections`` field of predictions (``segment``'s) to take margins from.
        tag: the sample tag of the picks without a bank (not the reference tag).
        preset: model settings, a name of ``ntt.config.PRESETS``: without a bank, default "paper" (the models
            ``build_bank`` defaults to); with one, default the bank's own. The DINOv2 encoder is always the bank's.
        config: an ``NTTConfig`` (used as is) or a dict of per-section overrides on the preset's settings.
        device: "auto" (default: this machine), "cpu", "cuda" or "cuda:N".
        progress: ``progress(fraction, label)`` for each step of ``suggest_references_steps``.
    Returns:
        ``mode`` ("cover" or "unsure"); ``picked``: sample ids in pick order (cover) or most unsure first;
        ``skipped``: ``[{"id", "filepath", "reason"}]``; cover: ``tag`` and ``centres`` (samples that counted as
        picked already); unsure: ``scores`` (each pick's unsureness in (0, 1], as ``picked``), ``bank`` and
        ``targets`` (how many were ranked).
    """
    return drive(suggest_references_steps(*args, **kwargs), progress)


def _cover(coll, count: int, tag: str, cfg: NTTConfig) -> Steps[dict[str, Any]]:
    """Greedy k-center from the references (and earlier picks) of ``coll``; the new picks are tagged ``tag``."""
    ids, paths = coll.values(["id", "filepath"])
    labelled = set(reference_ids(coll, DEFAULT_TAG)) | set(coll.match_tags(tag).values("id"))
    found = yield from _embeddings(paths, cfg)
    rows = [ids[i] for i in found.indices]
    centres = [row for row, sid in enumerate(rows) if sid in labelled]
    picked = [rows[row] for row in k_center(found.vectors, count, start=centres)]
    coll.select(picked).tag_samples(tag)
    return {
        "mode": "cover",
        "picked": picked,
        "skipped": _skipped(found, ids, paths),
        "tag": tag,
        "centres": len(centres),
    }


def _unsure(coll, count: int, name: str, bank: MemoryBank, ref_tag: str, label_field, cfg) -> Steps[dict[str, Any]]:
    """The bank's targets in ``coll``, the ``count`` most unsure first (nothing is written)."""
    targets = coll.exclude(reference_ids(coll, ref_tag) + shot_sample_ids(bank.shots))
    ids, paths = targets.values(["id", "filepath"])
    margins = _smallest_margins(targets, label_field) if label_field is not None else None
    found = yield from _embeddings(paths, cfg, bank, name)
    rows = np.asarray(found.indices, dtype=int)
    scores = unsureness(found.vectors, bank.shot_features[~bank.negative], None if margins is None else margins[rows])
    order = np.argsort(-scores, kind="stable")[:count]  # most unsure first; ties: the earlier sample
    return {
        "mode": "unsure",
        "picked": [ids[rows[k]] for k in order],
        "scores": [float(scores[k]) for k in order],
        "skipped": _skipped(found, ids, paths),
        "bank": name,
        "targets": len(rows),
    }


def _embeddings(paths: list[str], cfg: NTTConfig, bank: MemoryBank | None = None, name: str = "") -> Steps:
    """The image vectors of ``paths`` with ``cfg``'s DINOv2 (``ImageEmbeddings``); with ``bank``, that encoder
    checked to be the bank's first."""
    check_device(cfg)
    check_weights(cfg, ("dinov2",))
    yield Step(0.0, "Loading DINOv2")
    if bank is not None:
        _check_same_encoder(bank, name, cfg)
    return (yield from image_embeddings_steps(paths, cfg))


def _check_same_encoder(bank: MemoryBank, name: str, cfg: NTTConfig) -> None:
    """Image vectors and shots must share one feature space: the bank's DINOv2, input size and weights."""
    try:
        bank.check_encoder(encoder_identity(get_dinov2(cfg.model), cfg.model))
    except BankError as err:
        raise NTTFiftyOneError(f"bank {name!r}: {err}") from err


def _smallest_margins(targets, label_field: str) -> np.ndarray:
    """float64 (N,) over ``targets``' samples in order: the smallest ``margin`` among each one's detections, NaN
    where it has none (no detections, or detections without a margin)."""
    per_sample = targets.values(f"{label_field}.detections.margin")
    smallest = [min((m for m in margins or [] if m is not None), default=np.nan) for margins in per_sample]
    return np.asarray(smallest, dtype=np.float64)


def _skipped(found: ImageEmbeddings, ids: list[str], paths: list[str]) -> list[dict[str, str]]:
    return [{"id": ids[i], "filepath": paths[i], "reason": reason} for i, reason in found.skipped]


def _checked_count(count) -> int:
    count = whole_number(count)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise NTTFiftyOneError(f"count must be a whole number >= 1 (how many samples to suggest), got {count!r}")
    return count


def _check_tag(tag) -> None:
    if not isinstance(tag, str) or not tag.strip():
        raise NTTFiftyOneError(f"tag must be a non-empty sample tag, got {tag!r}")
    if tag == DEFAULT_TAG:
        raise NTTFiftyOneError(
            f"tag {tag!r} is the reference tag: suggestions are not labelled yet; tag them with another tag "
            f"(default {SUGGEST_TAG!r}) and mark them as references once labelled"
        )
