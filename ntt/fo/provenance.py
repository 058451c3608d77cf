"""What a predictions field records about the bank that made it (``dataset.get_field(field).info``).

``segment`` records it when it starts, so an interrupted run has it too; ``evaluate`` reads it, so it works
after the bank is renamed, rebuilt or deleted and after the references are untagged:

- ``ntt_bank``: the bank's name at the time; ``ntt_bank_fingerprint``: its content (``MemoryBank.fingerprint``)
- ``ntt_tag``: its reference tag; ``ntt_classes``: its class names
- ``ntt_reference_ids``: the samples left out as references: the bank's shot samples, plus the samples
  tagged as references when the run started (when references were excluded)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import fiftyone as fo

from ..bank import MemoryBank
from .checks import shot_sample_ids
from .store import dataset_of, schema_lock

KEYS = ("ntt_bank", "ntt_bank_fingerprint", "ntt_tag", "ntt_classes", "ntt_reference_ids")


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
    """The provenance recorded on ``field`` ({} for a field ntt did not write)."""
    info = dataset_of(coll).get_field(field).info or {}
    return {k: info[k] for k in KEYS if k in info}


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
