"""What a predictions field records about the bank that made it (``dataset.get_field(field).info``).

``segment`` records it when it starts, so an interrupted run has it too; ``evaluate`` reads it, so it works
after the bank is renamed, rebuilt or deleted and after the references are untagged:

- ``ntt_bank``: the bank's name at the time; ``ntt_bank_fingerprint``: its content (``MemoryBank.fingerprint``)
- ``ntt_tag``: its reference tag; ``ntt_classes``: its class names
- ``ntt_reference_ids``: the samples left out as references: the bank's shot samples, plus the samples
  tagged as references when the run started (when references were excluded)

FiftyOne's ``apply_model`` does not tell a model its output field, so an ``NTTModel`` (``model.py``) marks each
``Detections`` it returns with its bank's fingerprint (``LABEL_KEY``) and registers the bank's provenance in the
dataset's info (``REGISTRY``, by fingerprint). ``recorded`` reads a field's provenance from its labels that way
when the field's info has none, or another bank's (the labels were replaced since), and records it on the field
(so ``evaluate`` treats an ``apply_model`` field as a ``segment`` field).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import fiftyone as fo

from ntt.bank.memory import MemoryBank
from ntt.fo.checks import shot_sample_ids
from ntt.fo.store import dataset_of, schema_lock

KEYS = ("ntt_bank", "ntt_bank_fingerprint", "ntt_tag", "ntt_classes", "ntt_reference_ids")
LABEL_KEY = "ntt_bank_fingerprint"  # on each ``Detections`` apply_model writes: the bank that made it
REGISTRY = "ntt_bank_"  # ``dataset.info[REGISTRY + fingerprint]``: the provenance of a bank apply_model used

log = logging.getLogger(__name__)


@dataclass
class Source:
    """The bank a run segments with, as far as provenance goes: its name (None for an unnamed bank), reference
    tag, fingerprint, class names and shot samples; ``bank`` (the loaded bank), a named bank's stored settings
    and the file it was read from when segmenting."""

    name: str | None
    tag: str
    fingerprint: str | None
    classes: list[str]
    shot_samples: list[str]
    bank: MemoryBank | None = None
    stored: dict[str, Any] | None = None
    bank_path: str | None = None  # a named bank's file as recorded: the version ``bank`` was read from

    @classmethod
    def of_bank(
        cls, bank: MemoryBank, name: str | None, tag: str, stored: dict | None = None, bank_path: str | None = None
    ) -> Source:
        shots = shot_sample_ids(bank.shots)
        return cls(name, tag, bank.fingerprint, bank.class_names, shots, bank, stored, bank_path)

    @classmethod
    def of_record(cls, info: dict[str, Any], tag: str) -> Source:
        """From a bank's run record alone (no file read): for forms."""
        shots = info.get("shot_sample_ids", [])
        return cls(info["name"], tag, info.get("fingerprint"), list(info["classes"]), shots, None, info.get("config"))

    def info(self, excluded: list[str]) -> dict[str, Any]:
        """The provenance to record on the predictions field; ``excluded``: the reference samples left out."""
        return {
            "ntt_bank": self.name,
            "ntt_bank_fingerprint": self.fingerprint,
            "ntt_tag": self.tag,
            "ntt_classes": self.classes,
            "ntt_reference_ids": sorted(set(self.shot_samples) | set(excluded)),
        }


def recorded(coll, field: str) -> dict[str, Any]:
    """The provenance recorded on ``field`` ({} for a field ntt did not write).

    Labels ``apply_model`` wrote name their bank (``LABEL_KEY``): when the field records none or another bank, the
    bank's registered provenance is recorded on the field and returned. One query over the field's labels."""
    dataset = dataset_of(coll)
    info = _known(dataset.get_field(field).info)
    marks = dataset.distinct(f"{field}.{LABEL_KEY}")
    if not marks or marks == [info.get("ntt_bank_fingerprint")]:
        return info
    with schema_lock(dataset):  # the field's record and the registry as stored now
        info = _known(dataset.get_field(field).info)
        found = _from_labels(dataset, field, info, marks)
        if found is None:
            return info
        ensure_field(dataset, field)
        _save_info(dataset, field, found)
    return found


def register_model(dataset, info: dict[str, Any]) -> None:
    """Register the provenance of a bank ``apply_model`` labels ``dataset`` with, in the dataset's info (key
    ``REGISTRY`` + fingerprint). Safe while FiftyOne iterates the dataset and across processes: a single-key
    update, no reload (which would leave views iterated before it blind to fields added after it)."""
    dataset.info[REGISTRY + info["ntt_bank_fingerprint"]] = info
    dataset.save()


def _from_labels(dataset, field: str, info: dict[str, Any], marks: list[str]) -> dict[str, Any] | None:
    """The registered provenance of the bank that ``marks`` (the fingerprints on ``field``'s labels) name, when
    it is one bank, registered, and not mixed with labels of the bank ``info`` records (unmarked: segment's).
    None otherwise: then ``info`` stands, with a warning."""
    if len(marks) > 1 or (info and dataset.exists(field).exists(f"{field}.{LABEL_KEY}", False).count()):
        log.warning("ntt: field %r mixes the predictions of several banks: its recorded bank stands", field)
        return None
    found = (dataset.info or {}).get(REGISTRY + marks[0])
    if found is None:
        log.warning("ntt: field %r holds predictions of a bank this dataset has no record of", field)
        return None
    return dict(found)


def _known(info: dict[str, Any] | None) -> dict[str, Any]:
    return {k: info[k] for k in KEYS if k in (info or {})}


def declare_field(dataset, label_field: str, info: dict[str, Any]) -> dict[str, Any]:
    """Add the output field up front (under the schema lock, so writing labels later changes no schema) and
    record the run's provenance on it. A resumed run of the same bank keeps the references excluded before.

    Returns:
        the provenance recorded.
    """
    with schema_lock(dataset):
        ensure_field(dataset, label_field)
        old = dataset.get_field(label_field).info or {}
        if old.get("ntt_bank_fingerprint") == info["ntt_bank_fingerprint"]:
            info = {**info, "ntt_reference_ids": sorted(set(info["ntt_reference_ids"]) | set(_ids(old)))}
        _save_info(dataset, label_field, info)
    return info


def record_done(dataset, label_field: str, info: dict[str, Any]) -> None:
    """Record the provenance again at the end: the field may have been dropped by a process outside ntt."""
    with schema_lock(dataset):
        ensure_field(dataset, label_field)
        _save_info(dataset, label_field, info)


def ensure_field(dataset, label_field: str) -> None:
    if label_field not in dataset.get_field_schema():
        dataset.add_sample_field(label_field, fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)


def _save_info(dataset, label_field: str, info: dict[str, Any]) -> None:
    field = dataset.get_field(label_field)
    field.info = {**(field.info or {}), **info}
    field.description = f"NTT instance segmentation with bank {info['ntt_bank']!r}"
    field.save()


def _ids(info: dict[str, Any]) -> list[str]:
    return list(info.get("ntt_reference_ids") or [])
