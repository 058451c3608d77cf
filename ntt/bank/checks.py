"""What each part of a memory bank must be, checked when a bank is made or loaded: a bank file may be hostile or
hand-edited, so every part is checked and the first wrong one is one ``BankError`` that says what is wrong
(``MemoryBank.load`` adds the file's name), never a crash later or a silently wrong result (a NaN feature
matches nothing; a class id of 1.5 would be cast)."""

from __future__ import annotations

from typing import Any

import numpy as np


class BankError(ValueError):
    """A bank is invalid, corrupted or incompatible; the message says why."""


_INT64 = np.iinfo(np.int64)
_ZERO_NORM_SQ = 1e-24  # squared norm under which a row cannot be normalised (1e-12 is the eps used elsewhere)


def checked_encoder(encoder: Any) -> dict[str, Any]:
    """The encoder object with ``dim`` and ``image_size`` as positive ints and a non-empty ``name``."""
    if not isinstance(encoder, dict):
        raise BankError(f"bank encoder must be an object, got {_json_kind(encoder)}")
    for key in ("dim", "image_size"):
        if not _is_int(encoder.get(key)) or encoder[key] < 1:
            raise BankError(f"bank encoder.{key} must be a positive integer, got {_short(encoder.get(key))}")
    if not isinstance(encoder.get("name"), str) or not encoder["name"]:
        raise BankError(f"bank encoder.name must be a non-empty string, got {_short(encoder.get('name'))}")
    return {**encoder, "dim": int(encoder["dim"]), "image_size": int(encoder["image_size"])}


def checked_classes(classes: Any) -> list[dict[str, Any]]:
    """Class objects, each with an int64 ``id`` (unique) and a non-empty ``name``; ids made plain ints."""
    if not isinstance(classes, (list, tuple)):
        raise BankError(f"bank classes must be a list of objects, got {_json_kind(classes)}")
    checked = []
    for i, c in enumerate(classes):
        if not isinstance(c, dict):
            raise BankError(f"bank class {i} must be an object with an id and a name, got {_short(c)}")
        if not _is_int(c.get("id")) or not _INT64.min <= c["id"] <= _INT64.max:
            raise BankError(f"bank class {i} ({_short(c)}) must have an integer id")
        if not isinstance(c.get("name"), str) or not c["name"].strip():
            raise BankError(f"bank class {i} ({_short(c)}) must have a non-empty name")
        checked.append({**c, "id": int(c["id"])})
    if len({c["id"] for c in checked}) != len(checked):
        raise BankError("bank has duplicate class ids")
    return checked


def checked_shots(shots: Any) -> list[dict[str, Any]]:
    """Shot provenance objects; ``negative``, when present, is true or false (a string would be truthy), and
    ``source`` a non-empty string (where the shot's ids are ids: ``MemoryBank.holds`` compares it)."""
    if not isinstance(shots, (list, tuple)):
        raise BankError(f"bank shots must be a list of objects, got {_json_kind(shots)}")
    for i, shot in enumerate(shots):
        if not isinstance(shot, dict):
            raise BankError(f"bank shot {i} must be an object (its provenance), got {_short(shot)}")
        if not isinstance(shot.get("negative", False), bool):
            raise BankError(f"bank shot {i}: negative must be true or false, got {_short(shot['negative'])}")
        source = shot.get("source")
        if source is not None and (not isinstance(source, str) or not source):
            raise BankError(f"bank shot {i}: source must be a non-empty string, got {_short(source)}")
    return list(shots)


def checked_info(info: Any) -> dict[str, Any]:
    """The info object; its ``calibration``, when set, maps class names to thresholds in [0, 1]."""
    if not isinstance(info, dict):
        raise BankError(f"bank info must be an object, got {_json_kind(info)}")
    calibration = info.get("calibration")
    if calibration is None:
        return info
    classes = calibration.get("classes", {}) if isinstance(calibration, dict) else None
    if not isinstance(classes, dict):
        raise BankError(f"bank info.calibration must be an object with a 'classes' object, got {_short(calibration)}")
    for name, entry in classes.items():
        threshold = entry.get("threshold") if isinstance(entry, dict) else None
        if not _is_number(threshold) or not 0.0 <= threshold <= 1.0:
            raise BankError(f"bank info.calibration: class {name!r} needs a threshold in [0, 1], got {_short(entry)}")
    return info


def checked_features(features: Any, dim: int) -> np.ndarray:
    """float32 (S, D) shot features: a float array of exactly that shape (never reshaped), finite, no zero row."""
    array = np.asarray(features)
    if array.size == 0:
        return np.zeros((0, dim), np.float32)
    if array.ndim != 2 or array.shape[1] != dim:
        raise BankError(f"bank shot_features must be (shots, encoder dim {dim}), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise BankError(f"bank shot_features must be floats, got {array.dtype}")
    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf: refused just below
        array = np.ascontiguousarray(array, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if len(bad):
        raise BankError(f"bank shot_features are not finite (NaN or Inf) for {_shot_list(bad, len(array))}")
    zero = np.flatnonzero(np.einsum("ij,ij->i", array, array) <= _ZERO_NORM_SQ)
    if len(zero):
        raise BankError(f"bank shot_features are zero (a shot that matches nothing) for {_shot_list(zero, len(array))}")
    return array


def checked_class_ids(class_ids: Any) -> np.ndarray:
    """int64 (S,) class ids from a 1-D integer array (floats such as 1.5 are refused, not cast)."""
    array = np.asarray(class_ids)
    if array.size == 0:
        return np.zeros(0, np.int64)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise BankError(f"bank shot_class_ids must be a 1-D integer array, got {array.dtype} of shape {array.shape}")
    return array.astype(np.int64)


def _shot_list(rows: np.ndarray, total: int) -> str:
    first = ", ".join(map(str, rows[:5].tolist())) + (", ..." if len(rows) > 5 else "")
    return f"{len(rows)} of {total} shots (shot {first})"


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _json_kind(value: Any) -> str:
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number" if _is_number(value) else type(value).__name__)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
