"""Segmenting a FiftyOne view with a bank into a ``Detections`` field, batch by batch (resumable)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fiftyone as fo

from ntt.bank.memory import MemoryBank
from ntt.cache.store import CandidateStore
from ntt.cli.pipeline import adopt_bank_encoder
from ntt.config import NTTConfig, derive
from ntt.fo.banks import get_bank_info, read_bank
from ntt.fo.checks import (
    check_segment_args,
    check_settings,
    check_usable,
    check_weights,
    run_settings,
    whole_number,
)
from ntt.fo.labelling.provenance import Source, declare_field, record_done, recorded
from ntt.fo.labelling.writes import EmbeddingWrites, write_labels
from ntt.fo.outages import patiently
from ntt.fo.references import DEFAULT_TAG, NTTFiftyOneError, check_collection, check_detections_field, reference_ids
from ntt.fo.review.corrections import with_record
from ntt.fo.store import dataset_key, dataset_of
from ntt.grading.calibration import StaleCalibration, calibrated_thresholds
from ntt.io.coco import explain
from ntt.predict.segmenter import Segmenter
from ntt.steps import Step, Steps, drive, signature_of
from ntt.types import Instances, Progress


def to_detections(inst: Instances, class_names: dict[int, str], shots: list[dict] | None = None) -> fo.Detections:
    """Convert instances to ``fo.Detections``: relative xywh boxes (pixel box / image size) and masks
    cropped to them, exactly what ``fo.Detection.from_mask`` makes of the full mask (tested), without
    building full-image masks; ``confidence`` is the NTT score. Each detection carries its provenance as
    attributes (``coco.explain``): ``shot_sample_id`` / ``shot_label_id`` (the nearest shot's sample and label
    when the bank was built here), ``shot_cosine``, ``class_cosine``, ``margin``, ``negative_cosine``,
    ``sam_iou``, and ``predicted_label`` (the label as predicted: a reviewer may change ``label``). The
    ``Detections`` records what was predicted (``corrections.with_record``), so edits made later are found."""
    h, w = inst.image_size
    dets = []
    for i, (box, crop, score, cid) in enumerate(zip(inst.boxes, inst.crops, inst.scores, inst.class_ids)):
        x1, y1, x2, y2 = (float(v) for v in box)
        rel = [x1 / w, y1 / h, (x2 - x1) / w, (y2 - y1) / h]
        why = explain(inst, i, shots)
        for key, name in (("shot_image_id", "shot_sample_id"), ("shot_annotation_id", "shot_label_id")):
            if key in why:
                value = why.pop(key)
                why[name] = None if value is None else str(value)
        why["predicted_label"] = label = class_names[int(cid)]
        dets.append(fo.Detection(label=label, bounding_box=rel, mask=crop, confidence=float(score), **why))
    return with_record(fo.Detections(detections=dets))


def segment_steps(
    coll,
    bank: str | MemoryBank,
    label_field: str = "ntt",
    score_thresh: float | None = None,
    class_thresholds: dict[str, float] | None = None,
    max_instances: int | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    preset: str | None = None,
    config: NTTConfig | dict | None = None,
    skip_existing: bool = False,
    overwrite: bool = False,
    exclude_references: bool = True,
    tag: str | None = None,
    cache: bool | None = None,
    thresholds: str | None = None,
    mask_dir: str | None = None,
    keep_embeddings: bool = True,
) -> Steps[dict[str, Any]]:
    """``segment`` as a generator (same arguments, checked at the first step): yields ``Step(0.0, "Loading
    models")``, then a ``Step(fraction, label)`` after each batch is written, and returns the summary. Closed
    before its end (at a step), it stops there: the batches written so far keep complete labels; resume with
    ``skip_existing=True``."""
    plan = plan_segment(**locals())
    check_weights(plan.cfg)
    yield Step(0.0, "Loading models")
    segmenter = new_segmenter(plan.source.bank, plan.cfg)
    dataset = dataset_of(coll)
    info = declare_field(dataset, label_field, plan.source.info(plan.excluded))
    summary = yield from _run(dataset, plan.view, segmenter, label_field, mask_dir, overwrite, keep=keep_embeddings)
    record_done(dataset, label_field, info)
    return summary


@dataclass
class Plan:
    """What a segment request resolves to before any model loads: the bank (``source``), the settings, the
    samples to label and the reference samples left out."""

    source: Source
    cfg: NTTConfig
    view: Any
    excluded: list[str]


def plan_segment(
    coll,
    bank,
    label_field="ntt",
    score_thresh=None,
    class_thresholds=None,
    max_instances=None,
    batch_size=None,
    device=None,
    preset=None,
    config=None,
    skip_existing=False,
    overwrite=False,
    exclude_references=True,
    tag=None,
    cache=None,
    thresholds=None,
    mask_dir=None,
    keep_embeddings=True,
) -> Plan:
    """Check ``segment``'s arguments (the same) and resolve them, without loading a model (the weights are
    the caller's to check: a machine that only queues work need not have them)."""
    check_collection(coll)
    if not isinstance(keep_embeddings, bool):
        raise NTTFiftyOneError(f"keep_embeddings must be True or False, got {keep_embeddings!r}")
    knobs = dict(score_thresh=score_thresh, class_thresholds=class_thresholds, max_instances=max_instances)
    knobs.update(batch_size=batch_size, cache=cache)
    source, cfg = resolve_settings(coll, bank, tag, preset, config, device, thresholds, **knobs)
    excluded = _references(coll, source) if exclude_references else []
    view = _target_view(coll, coll.exclude(excluded), source, label_field, skip_existing, overwrite)
    return Plan(source, cfg, view, excluded)


def new_segmenter(bank: MemoryBank, cfg: NTTConfig) -> Segmenter:
    """The ``Segmenter`` of a run: the bank, the settings, the candidate cache when the settings use it."""
    return Segmenter(bank, cfg, cache=CandidateStore() if cfg.segment.cache else None)


def resolve_settings(
    coll, bank, tag=None, preset=None, config=None, device=None, thresholds=None, **knobs
) -> tuple[Source, NTTConfig]:
    """The bank (checked usable) and the settings a run with it uses: the bank's own or ``preset``'s,
    ``config`` layered on, ``device`` or "auto", the inference ``knobs`` of ``segment`` (``score_thresh``,
    ``class_thresholds``, ``max_instances``, ``batch_size``, ``cache``; checked), ``thresholds="calibrated"``
    under ``class_thresholds``, and the bank's DINOv2 encoder."""
    source = _resolve_bank(coll, bank, tag)
    check_usable(source.bank, source.name)
    if thresholds is not None and thresholds != "calibrated":
        raise NTTFiftyOneError(f"thresholds must be 'calibrated' or None, got {thresholds!r}")
    check_segment_args(*(knobs.get(k) for k in ("score_thresh", "class_thresholds", "max_instances", "batch_size")))
    for key in ("max_instances", "batch_size"):
        knobs[key] = whole_number(knobs.get(key))
    _check_encoder(config, source.bank.encoder)
    cfg = run_settings(source.stored, preset, config, device)
    cfg = adopt_bank_encoder(
        derive(cfg, segment={k: v for k, v in knobs.items() if v is not None}), source.bank.encoder
    )
    if thresholds is not None:  # resolved here, once: the run uses this set whatever the bank stores later
        stored = _stored_thresholds(source, cfg)
        cfg = derive(cfg, segment={"class_thresholds": {**stored, **cfg.segment.class_thresholds}})
    check_settings(cfg, source.classes)
    return source, cfg


def _stored_thresholds(source: Source, cfg: NTTConfig) -> dict[str, float]:
    """The calibrated per-class thresholds stored in the bank (``grade_references``), if they fit the bank and
    ``cfg``: a stale calibration is refused with why and what to do, never applied."""
    try:
        return calibrated_thresholds(source.bank, cfg)
    except StaleCalibration as err:
        raise NTTFiftyOneError(f"bank {source.name!r}: {err}") from err


@signature_of(segment_steps)
def segment(*args, progress: Progress | None = None, **kwargs) -> dict[str, Any]:
    """Segment every sample of ``coll`` with a bank and write ``fo.Detections`` into ``label_field``.

    Results are written after every batch, so a stopped run keeps what it finished; re-run with
    ``skip_existing=True`` to continue where it stopped. Samples whose media is missing or unreadable are
    skipped and reported; every other sample gets a (possibly empty) ``Detections``. Every argument is
    checked before any model loads or any field is created. The field's ``info`` records the bank (see
    ``provenance``) as soon as segmenting starts.

    Args:
        bank: the name of a bank stored with the dataset, or a ``MemoryBank``.
        score_thresh: drop detections scoring below this, in [0, 1].
        class_thresholds: per bank class name, a score threshold in [0, 1] that replaces ``score_thresh``.
        max_instances: detections per image, >= 1.
        batch_size: images per forward pass, >= 0 (0: fit to the GPU's memory).
        preset: model settings as in ``build_bank``. Without it, a named bank's own settings are used (so a
            random-weights bank segments with random weights).
        config: an ``NTTConfig``, or a dict (``{"segment": {"prompt_mode": "guided"}}``) layered on the
            preset's or the bank's settings. The DINOv2 encoder is always the bank's.
        device: "auto" (default: this machine), "cpu", "cuda" or "cuda:N"; never the device the bank was
            built on.
        skip_existing: only segment samples whose ``label_field`` is unset.
        overwrite: allow replacing existing labels (otherwise existing labels are an error).
        exclude_references: leave out the reference samples (default; they would match themselves): the
            bank's shot samples and the samples tagged ``tag``.
        tag: the reference tag (default: the bank's, else ``ntt_ref``).
        mask_dir: write the masks as PNGs under ``<mask_dir>/<dataset id>/<label_field>/<sample id>/``
            (``Detection.mask_path``) instead of in the database: for large datasets and images (a sample's
            document is capped at 16 MB). A folder every machine that reads the dataset can reach; evaluation
            and the App read the files.
        thresholds: "calibrated": per-class score thresholds from the bank's last grading with calibration
            (``grade_references(..., calibrate=True)``); ``class_thresholds`` entries override them.
        keep_embeddings: keep each prediction's mask-pooled DINOv2 feature (the one its class was matched with:
            no extra model pass) outside the sample documents, by label id (``ntt.fo.embeddings``; ~D + 70
            bytes a prediction, D = 384 with the lite models): what ``map_predictions`` and
            ``index_similarity`` read.
        cache: keep each image's bank-independent work in the candidate cache (``ntt cache info``) and reuse
            it: re-segmenting after the bank changed skips the encoders, and with grid prompts the decoder
            too (None: the settings', on in the fast and lite presets; see ``SegmentConfig.cache``).
        progress: optional callback ``(fraction, label)``, called for each step of ``segment_steps``.
    Returns:
        a summary: ``samples`` (in the target view), ``labelled``, ``instances``, ``per_class``,
        ``skipped`` (``[{"id", "filepath", "reason"}]``), ``reused`` (images whose bank-independent work came
        from the candidate cache).
    """
    return drive(segment_steps(*args, **kwargs), progress)


def targets_view(
    coll,
    bank: str | MemoryBank,
    label_field: str = "ntt",
    skip_existing: bool = False,
    overwrite: bool = False,
    exclude_references: bool = True,
    tag: str | None = None,
):
    """The samples ``segment`` would label with these arguments, from the bank's record alone (cheap enough
    for forms); raises what ``segment`` would about existing labels."""
    source = _resolve_bank(coll, bank, tag, load=False)
    excluded = _references(coll, source) if exclude_references else []
    return _target_view(coll, coll.exclude(excluded), source, label_field, skip_existing, overwrite)


def segment_settings(coll, bank: str, preset: str | None = None, config=None, device: str | None = None) -> NTTConfig:
    """The settings ``segment`` would run with for these arguments (before its thresholds and batch size): the
    bank's own or ``preset``'s, ``config`` layered on, ``device`` or this machine's, the bank's DINOv2 encoder.
    From the bank's record alone (cheap enough for forms)."""
    info = get_bank_info(coll, bank)
    return adopt_bank_encoder(run_settings(Source.of_record(info, "").stored, preset, config, device), info["encoder"])


def _resolve_bank(coll, bank, tag, load: bool = True) -> Source:
    if isinstance(bank, MemoryBank):
        return Source.of_bank(bank, bank.info.get("name"), tag or DEFAULT_TAG)
    if not load:
        info = get_bank_info(coll, bank)
        return Source.of_record(info, tag or info.get("tag", DEFAULT_TAG))
    read = read_bank(coll, bank)  # the description and the content of one version
    tag = tag or read.info.get("tag", DEFAULT_TAG)
    return Source.of_bank(read.bank, bank, tag, read.info.get("config"), read.info.get("bank_path"))


def _check_encoder(config, encoder: dict) -> None:
    """Targets are encoded with the bank's DINOv2 (shots and masks must share one feature space): a ``config``
    naming another one is refused rather than silently overridden."""
    named = (config or {}).get("model", {}).get("dinov2") if isinstance(config, dict) else None
    if named is not None and named != encoder["name"]:
        raise NTTFiftyOneError(
            f"the bank's shots were encoded with DINOv2 {encoder['name']!r}, and targets are always encoded with "
            f"the bank's encoder: config names {named!r}; leave it out, or build a bank with {named!r}"
        )


def _references(coll, source: Source) -> list[str]:
    """The reference samples ``segment`` leaves out: the bank's shot samples and the samples tagged now."""
    return sorted(set(reference_ids(coll, source.tag)) | set(source.shot_samples))


def _target_view(coll, view, source: Source, label_field: str, skip_existing: bool, overwrite: bool):
    if skip_existing and overwrite:
        raise NTTFiftyOneError(
            "skip_existing ('Skip samples already labelled': continue a stopped run) and overwrite ('Overwrite "
            "existing labels': replace them) contradict each other: choose one"
        )
    if label_field not in coll.get_field_schema(flat=True):
        return view
    check_detections_field(coll, label_field)
    existing = view.exists(label_field).count()
    if skip_existing:
        _check_same_bank(coll, label_field, source, existing)
        return view.exists(label_field, False)
    if existing and not overwrite:
        raise NTTFiftyOneError(
            f"field {label_field!r} already has labels on {existing} samples: replace them (overwrite=True; "
            "'Overwrite existing labels' in the form) or continue a stopped run (skip_existing=True; 'Skip "
            "samples already labelled')"
        )
    return view


def _check_same_bank(coll, label_field: str, source: Source, existing: int) -> None:
    """Resuming into a field written with another bank would mix two banks' predictions in one field."""
    before = recorded(coll, label_field).get("ntt_bank_fingerprint")
    if existing and before and before != source.fingerprint:
        raise NTTFiftyOneError(
            f"field {label_field!r} holds predictions of another bank (or of {source.name!r} before it changed): "
            "resuming would mix them; overwrite them (overwrite=True; 'Overwrite existing labels' in the form) or "
            "choose another field"
        )


def _run(
    dataset,
    view,
    segmenter: Segmenter,
    label_field: str,
    mask_dir: str | None,
    overwrite: bool = False,
    holds: Callable[[], bool] | None = None,
    keep: bool = True,
) -> Steps[dict[str, Any]]:
    """Segment the view's samples and write their labels batch by batch, a step after each (a run closed at a
    step keeps them); with ``mask_dir``, each mask goes to a PNG there first.

    ``overwrite``: a sample that cannot be read loses its old label in the same write (the field never holds
    two banks' labels). ``holds``: a shard's attempt, which writes first-writer-wins (only still-empty samples)
    and only while ``holds()`` says it still holds its shard (else ``LeaseLost``). ``keep``: keep the
    predictions' embeddings (``EmbeddingWrites``)."""
    ids, paths = view.values(["id", "filepath"])
    names = dict(zip(segmenter.bank.class_ids, segmenter.bank.class_names))
    summary = {"samples": len(ids), "labelled": 0, "instances": 0, "per_class": Counter(), "skipped": []}
    values: dict[str, fo.Detections | None] = {}
    masks = MaskFiles(dataset, mask_dir, label_field) if mask_dir is not None else None
    vectors = EmbeddingWrites(dataset, label_field) if keep else None
    # ordered; images are loaded ahead in threads, which stop when the run is closed
    with closing(segmenter.run(paths)) as results:
        for done, (sid, res) in enumerate(zip(ids, results), start=1):
            if res.instances is None:
                summary["skipped"].append({"id": sid, "filepath": res.source, "reason": res.error})
                if overwrite:
                    values[sid] = None
                    if masks is not None:
                        masks.clear(sid)
                    if vectors is not None:
                        vectors.clear(sid)
            else:
                values[sid] = to_detections(res.instances, names, segmenter.bank.shots)
                if masks is not None:
                    masks.write(sid, values[sid])
                if vectors is not None:
                    vectors.add(sid, values[sid], res.instances.embeddings)
                summary["instances"] += len(res.instances)
                summary["per_class"].update(names[int(c)] for c in res.instances.class_ids)
            if done % segmenter.batch_size == 0 or done == len(ids):
                _write(dataset, label_field, values, summary, masks, vectors, holds, overwrite)
                yield Step(done / len(ids), f"Segmenting {done}/{len(ids)} samples")
    summary["per_class"] = dict(summary["per_class"])
    summary["reused"] = segmenter.cache.hits if segmenter.cache else 0  # images taken from the candidate cache
    return summary


class LeaseLost(NTTFiftyOneError):
    """A shard's attempt no longer holds its shard (declared lost, stopped, or run again elsewhere)."""


class MaskFiles:
    """Masks as PNG files (``Detection.mask_path``; the mask leaves the sample document, which MongoDB caps at
    16 MB) under ``mask_dir/<dataset id>/<field>/<sample id>/<label id>.png``: a clone (same sample and label ids,
    another dataset id) never shares a folder with its source. Written before the labels, so a label never names
    a missing file."""

    def __init__(self, dataset, mask_dir: str, label_field: str):
        self.root = Path(mask_dir) / dataset_key(dataset) / label_field
        self.written: dict[str, list[Path]] = {}  # this batch's new files, by sample
        self.before: dict[str, list[Path]] = {}  # the files of the labels they replace, by sample

    def write(self, sid: str, dets: fo.Detections) -> None:
        folder = self.root / sid
        folder.mkdir(parents=True, exist_ok=True)
        self.before[sid] = sorted(folder.glob("*.png"))
        self.written[sid] = []
        for det in dets.detections:
            path = folder / f"{det.id}.png"
            det.export_mask(str(path), update=True)
            self.written[sid].append(path)

    def clear(self, sid: str) -> None:
        """The sample's label is being cleared: its files go once the write is done."""
        self.before[sid] = sorted((self.root / sid).glob("*.png"))
        self.written[sid] = []

    def settle(self, written: set[str], replacing: bool) -> None:
        """After a batch's write: remove the files of samples another attempt labelled first, and (when the
        labels replaced older ones of this dataset) the replaced labels' files."""
        for sid, paths in self.written.items():
            stale = self.before.get(sid, []) if sid in written and replacing else []
            stale += [] if sid in written else paths
            for path in stale:
                path.unlink(missing_ok=True)
        self.written.clear()
        self.before.clear()


def _write(dataset, label_field: str, values: dict, summary: dict, masks, vectors, holds, overwrite: bool) -> None:
    if holds is not None and not holds():
        raise LeaseLost("this attempt no longer holds its shard (declared lost or stopped): it stops here")
    if vectors is not None:  # before the labels: a label that exists has its vector
        patiently(lambda: vectors.save(replacing=overwrite))
    written = patiently(lambda: write_labels(dataset, label_field, values, first_writer_wins=holds is not None))
    if masks is not None:
        masks.settle(written, replacing=holds is None)
    if vectors is not None:
        patiently(lambda: vectors.settle(written))
    summary["labelled"] += sum(1 for sid in written if values[sid] is not None)
    values.clear()
