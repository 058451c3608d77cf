"""A segment request resolved once into a job: what every attempt at it runs, whatever happens meanwhile.

A sharded run stores its job in its run document. A shard runs the job and re-resolves nothing: not the bank
by its name (it may be renamed or taught mid-run: the job holds the bank *version*, its file and fingerprint),
not the thresholds (``thresholds="calibrated"`` is resolved into ``class_thresholds`` here), not the dataset by
its name (the job holds its id). The device is left to each worker. The bank file is named relative to the
bank root (``$NTT_BANK_DIR``), so a worker that mounts the bank folder at another path finds it, and the file
is kept on disk until the run ends (``banks._records`` counts unfinished runs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ntt.bank.memory import BankError, MemoryBank
from ntt.config import NTTConfig
from ntt.fo.checks import settings_here
from ntt.fo.references import NTTFiftyOneError
from ntt.fo.store import bank_file_key, dataset_key, locate_bank_file


@dataclass(frozen=True)
class Job:
    """A resolved segment request (JSON-serialisable: ``to_doc`` / ``from_doc``)."""

    dataset_id: str
    label_field: str
    bank_name: str  # at the time of the request: provenance only, never looked up again
    bank_file: str  # the bank version: ``store.bank_file_key`` of its file
    fingerprint: str
    settings: dict[str, Any]  # ``NTTConfig.to_dict()``, thresholds resolved, device left to the worker
    provenance: dict[str, Any]  # what the field's info records (``provenance.Source.info``)
    mask_dir: str | None = None
    keep_embeddings: bool = True  # a job submitted before this option keeps them, as the default does

    def to_doc(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Job:
        return cls(**doc)


def job_of(
    coll, plan, label_field: str, provenance: dict[str, Any], mask_dir: str | None, keep_embeddings: bool = True
) -> Job:
    """The job of a planned request (``segment.plan_segment``) of a named bank."""
    settings = plan.cfg.to_dict()
    settings["model"]["device"] = "auto"  # each worker's own (its CUDA_VISIBLE_DEVICES)
    return Job(
        dataset_id=dataset_key(coll),
        label_field=label_field,
        bank_name=plan.source.name,
        bank_file=bank_file_key(plan.source.bank_path),
        fingerprint=plan.source.fingerprint,
        settings=settings,
        provenance=provenance,
        mask_dir=mask_dir,
        keep_embeddings=keep_embeddings,
    )


def job_bank(job: Job) -> MemoryBank:
    """The job's bank version, loaded and checked against its fingerprint.

    Raises:
        NTTFiftyOneError: the file is gone or holds other content.
    """
    path = locate_bank_file(job.bank_file)
    if not path.is_file():
        raise NTTFiftyOneError(
            f"the bank version this run uses ({job.bank_file} under the bank folder) is missing here: is the bank "
            "folder (NTT_BANK_DIR) mounted on this worker?"
        )
    try:
        bank = MemoryBank.load(path)
    except BankError as err:
        raise NTTFiftyOneError(f"the bank version this run uses: {err}") from err
    if bank.fingerprint != job.fingerprint:
        raise NTTFiftyOneError(f"the bank version this run uses ({path}) holds other content than when submitted")
    bank.info["name"] = job.bank_name
    return bank


def job_settings(job: Job, batch_size: int | None = None) -> NTTConfig:
    """The job's settings on this machine (its device), with ``batch_size`` when a retry halved it."""
    overrides = {"segment": {"batch_size": batch_size}} if batch_size else None
    return settings_here(job.settings, overrides)
