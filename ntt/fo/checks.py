"""Argument checks shared by the SDK functions and the operator forms: every bad value becomes one clear
error before any model loads or any field is created."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from ntt.bank.memory import MemoryBank
from ntt.config import ConfigError, NTTConfig, derive, get_config, layered
from ntt.fo.references import NTTFiftyOneError
from ntt.models import ensure_weights
from ntt.models.devices import resolve_device

_OBJECT_ID = re.compile(r"[0-9a-f]{24}")


def whole_number(value: Any) -> Any:
    """A whole float (forms send ``4.0`` for 4) as an int; anything else as is."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def check_segment_args(
    score_thresh=None, class_thresholds=None, max_instances=None, batch_size=None, class_names=None
) -> None:
    """The inference knobs of ``segment``, by the config's own rules (thresholds in [0, 1], ``max_instances``
    >= 1, ``batch_size`` >= 0); ``class_thresholds`` may name only the bank's classes (when known)."""
    given = dict(score_thresh=score_thresh, class_thresholds=class_thresholds, max_instances=max_instances)
    given = {key: whole_number(value) for key, value in dict(given, batch_size=batch_size).items() if value is not None}
    try:
        derive(NTTConfig(), segment=given)
    except ConfigError as err:
        raise NTTFiftyOneError(str(err)) from err
    unknown = sorted(set(class_thresholds or {}) - set(class_names)) if class_names is not None else []
    if unknown:
        known = ", ".join(sorted(class_names)) or "none"
        raise NTTFiftyOneError(f"class_thresholds name classes the bank does not have: {unknown} (it has: {known})")


def check_settings(cfg: NTTConfig, class_names: Iterable[str]) -> None:
    """The final inference settings, wherever they came from (arguments, overrides, the bank's)."""
    seg = cfg.segment
    check_segment_args(seg.score_thresh, seg.class_thresholds, seg.max_instances, seg.batch_size, class_names)
    check_device(cfg)


def check_device(cfg: NTTConfig) -> None:
    """The configured device exists on this machine (``ConfigError`` naming the devices it has)."""
    resolve_device(cfg.model.device)


RANDOM_WEIGHTS = 'config={"model": {"random_weights": True}} in Python, or "Random weights" in the App\'s forms'


def check_weights(cfg: NTTConfig, kinds=("sam2", "dinov2"), random_hint: str = RANDOM_WEIGHTS) -> None:
    """Every checkpoint of ``kinds`` the run needs can be had here (``WeightsNotFoundError`` naming each missing
    file and where it goes, and ``random_hint``: how to try without weights)."""
    ensure_weights(cfg.model, kinds, random_hint)


def check_usable(bank: MemoryBank, name: str | None) -> None:
    """A bank with no shot (every class removed) cannot segment anything: say so."""
    if not bank.shots or not bank.classes:
        label = f"bank {name!r}" if name else "the bank"
        raise NTTFiftyOneError(f"{label} has no reference shots (every class was removed): add references first")


def settings_here(stored: dict[str, Any], overrides: dict | None = None, device: str | None = None) -> NTTConfig:
    """A stored bank's settings to run on this machine: everything but its device, which is ``device``,
    else the overrides', else "auto" (a bank built on a GPU machine still runs on a CPU worker)."""
    base = {section: dict(values) for section, values in stored.items()}
    base.get("model", {}).pop("device", None)
    return get_config(overrides=layered(base, overrides), device=device)


def run_settings(
    stored: dict[str, Any] | None, preset: str | None = None, config=None, device: str | None = None
) -> NTTConfig:
    """The settings a run with a stored bank uses: the bank's own (``stored``, here: ``settings_here``) with
    ``config`` layered on; a named ``preset`` (or a whole ``NTTConfig``) instead of them (``preset`` default
    "paper"). The bank's DINOv2 encoder is the caller's to adopt (``ntt.cli.pipeline.adopt_bank_encoder``)."""
    if preset is None and stored and not isinstance(config, NTTConfig):
        return settings_here(stored, config, device)
    return get_config(preset or "paper", config, device)


def shot_sample_ids(shots: Iterable[dict[str, Any]]) -> list[str]:
    """The FiftyOne sample ids among the positive shots' image ids (banks built elsewhere hold other ids). A
    sample that gave only negative shots stays a target: re-segmenting it shows what the negative changed."""
    ids = {str(s.get("image_id")) for s in shots if not s.get("negative")}
    return sorted(i for i in ids if _OBJECT_ID.fullmatch(i))
