"""The memory bank: one prototype per reference shot, grouped into classes; saved as safetensors + JSON.

A bank file is a single ``.safetensors`` file: tensors ``shot_features`` (S, D) float32 and
``shot_class_ids`` (S,) int64, and a JSON header (format version, classes, encoder id, weights
fingerprint and preprocessing, per-shot provenance, and a sha256 checksum over the header and the
tensors, so an edited class name is caught like a flipped feature bit). Nothing in it is ever unpickled.

A shot is a positive (it makes its class's prototype) or, with ``"negative": true`` in its provenance, a
negative of its class: something that looks like the class but is not (usually a false positive), which
lowers the class's score on masks that look more like it than like the class (``postprocess.match_classes``).

A shot is made from a label: its identity is (``source``, image id, annotation id), ``source`` saying where the ids
are ids: the sha256 (hex) of the COCO file the shot came from, or ``"dataset:<dataset id>"`` for a FiftyOne label.
Most annotation tools number images and annotations from 1 in every file they export, so ids alone would take the
labels of a second file for those of the first. ``same_label`` is the rule (with the one for shots of banks made
before shots recorded their source), ``MemoryBank.holds`` the one place that decides "already in the bank".
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ntt.bank.checks import (
    BankError,
    checked_class_ids,
    checked_classes,
    checked_encoder,
    checked_features,
    checked_info,
    checked_shots,
)
from ntt.io.atomic import write_bytes_atomic

FORMAT_VERSION = 3  # 3: shots may be negatives
READS = (2, 3)  # version 2 is version 3 without negatives
_META_KEY = "ntt_bank"
_DATASETS = "dataset:"  # the source prefix of shots from FiftyOne datasets

log = logging.getLogger(__name__)


@dataclass
class MemoryBank:
    """Reference prototypes of a set of classes.

    Attributes:
        classes: ``[{"id": int, "name": str}, ...]`` in the bank's class order.
        shot_features: float32 (S, D): per shot, the mask-weighted mean of its DINOv2 patch tokens
            (raw, not normalised).
        shot_class_ids: int64 (S,): the category id of each shot.
        shots: per-shot provenance dicts (``image_id``, ``image_path``, ``annotation_id``, ``class_id``;
            ``source``: where the ids are ids, see ``same_label``; ``negative``: true for a negative shot of its
            class). A bank is never changed in place: every change makes a new one.
        encoder: the DINOv2 encoder and preprocessing the features come from (``name``,
            ``image_size``, ``weights`` (where they came from, for messages), ``fingerprint`` (a hash of
            the loaded weights: the same weights in another file format give the same one), ``dim``,
            ``context_ratio``). Target features must come from the same encoder.
        info: free-form provenance (an object); ``calibration`` holds ``ntt bank grade --calibrate``'s thresholds.
        file_digest: sha256 (hex) of the file's bytes as this bank was loaded from or saved to, None for a bank
            made in memory: what a conditional update (``ntt.bank.file.update_bank_file``) compares with.

    Raises:
        BankError: any part is malformed (the constructor checks everything: a bank file may be hostile).
    """

    classes: list[dict[str, Any]]
    shot_features: np.ndarray
    shot_class_ids: np.ndarray
    shots: list[dict[str, Any]]
    encoder: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)
    file_digest: str | None = field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        """Check every part of the bank (all of it may come from a file someone else wrote) and normalise the
        arrays: one ``BankError`` that says what is wrong, never a crash later or a silently wrong result."""
        self.encoder = checked_encoder(self.encoder)
        self.classes = checked_classes(self.classes)
        self.shots = checked_shots(self.shots)
        self.info = checked_info(self.info)
        self.shot_features = checked_features(self.shot_features, self.encoder["dim"])
        self.shot_class_ids = checked_class_ids(self.shot_class_ids)
        shots, rows, ids = len(self.shots), len(self.shot_features), len(self.shot_class_ids)
        if not shots == rows == ids:
            raise BankError(f"bank has inconsistent numbers of shots: {shots} shots, {rows} features, {ids} class ids")
        if set(self.shot_class_ids.tolist()) - {c["id"] for c in self.classes}:
            raise BankError("bank has shots of unknown classes (shot_class_ids that no class has)")
        self.negative = np.array([shot.get("negative", False) for shot in self.shots], dtype=bool).reshape(-1)

    def _check_negatives(self) -> None:
        """A bank to segment with: no class may have negative shots only (``as_negatives`` makes such a bank,
        to be added to one that has the classes)."""
        positive = set(self.shot_class_ids[~self.negative].tolist())
        alone = sorted({c["name"] for c in self.classes if c["id"] not in positive and self.negative.any()})
        if alone:
            raise BankError(f"classes with negative shots only (a negative needs its class's references): {alone}")

    @property
    def class_ids(self) -> list[int]:
        return [int(c["id"]) for c in self.classes]

    @property
    def class_names(self) -> list[str]:
        return [str(c["name"]) for c in self.classes]

    def shots_per_class(self) -> dict[str, int]:
        """Positive shots per class name."""
        return {c["name"]: int(((self.shot_class_ids == c["id"]) & ~self.negative).sum()) for c in self.classes}

    def negatives_per_class(self) -> dict[str, int]:
        """Negative shots per class name (classes without any left out)."""
        counts = {c["name"]: int(((self.shot_class_ids == c["id"]) & self.negative).sum()) for c in self.classes}
        return {name: n for name, n in counts.items() if n}

    def class_prototypes(self) -> np.ndarray:
        """float32 (C, D): per class, the L2-normalised mean of its positive shot prototypes (equal weights)."""
        if not self.classes:
            raise BankError("the bank is empty (every class was removed): add references to it first")
        protos = []
        for c in self.classes:
            feats = self.shot_features[(self.shot_class_ids == c["id"]) & ~self.negative]
            if len(feats) == 0:
                raise BankError(f"class {c['name']!r} (id {c['id']}) has no reference shots")
            mean = feats.astype(np.float64).mean(axis=0)
            protos.append(mean / max(np.linalg.norm(mean), 1e-12))
        return np.stack(protos).astype(np.float32)

    def negative_prototypes(self) -> tuple[np.ndarray, np.ndarray]:
        """The negative shots: float32 (K, D) L2-normalised features and int64 (K,) class indices (into
        ``classes``); K = 0 without negatives."""
        index = {c["id"]: i for i, c in enumerate(self.classes)}
        feats = self.shot_features[self.negative].astype(np.float64)
        units = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
        classes = np.array([index[int(c)] for c in self.shot_class_ids[self.negative]], dtype=np.int64)
        return units.astype(np.float32).reshape(-1, self.shot_features.shape[1]), classes

    def as_negatives(self) -> MemoryBank:
        """The same shots, every one a negative of its class (to ``add`` to a bank that has those classes)."""
        shots = [{**shot, "negative": True} for shot in self.shots]
        return MemoryBank(self.classes, self.shot_features, self.shot_class_ids, shots, dict(self.encoder), self.info)

    def holds(self, shot: dict[str, Any], negative: bool) -> bool:
        """Whether the bank has ``shot``'s label already as a shot of that kind (a negative when ``negative``, else
        a positive), whatever its class: the one rule of "already in the bank", for ``add``, ``ntt.bank.teach`` and
        ``ntt.fo.add_references`` alike.

        ``shot`` is a provenance dict (as ``shots`` holds, or ``Reference.provenance()``); labels are told apart by
        ``same_label``. A label held as the other kind is not held: a negative can become a positive, and the
        reverse (``add`` then replaces the older one of the same class). A shot without an annotation id is no
        label's, so never held.
        """
        return any(bool(self.negative[i]) == bool(negative) for i in self._same_label_as(shot))

    def add(self, other: MemoryBank, say: Callable[[str], None] | None = None) -> MemoryBank:
        """A new bank with ``other``'s shots (and classes) added; the encoders must match. Returns this bank itself
        when nothing is new.

        Classes are merged by name (``matched_to``): a class of ``other`` named as one of this bank's joins it,
        whatever its id there, and a new name whose id this bank gives another class gets the next free id. Shots
        whose label the bank holds already as that kind of shot (``holds``) are not added twice. A new shot of a
        label the bank has as the other kind of the same class replaces it: a positive and a negative of one label
        and class contradict each other, and the newer verdict wins. A positive of one class and a negative of
        another from one label (a relabelled prediction) are both kept. Negatives need their class in the result.

        Args:
            say: gets a line for each class numbered otherwise in ``other`` and each shot replaced (default: logged).
        """
        say = say or log.info
        if _encoder_key(other.encoder) != _encoder_key(self.encoder):
            raise BankError(f"cannot merge banks of different encoders: {self.encoder} vs {other.encoder}")
        other = self._matched(other, say)
        new = [j for j, shot in enumerate(other.shots) if not self.holds(shot, bool(other.negative[j]))]
        if not new:
            return self
        replaced = self._replaced(other, new, say)
        kept = [i for i in range(len(self.shots)) if i not in replaced]
        known = set(self.class_ids)
        classes = self.classes + [dict(c) for c in other.classes if c["id"] not in known]
        class_ids = np.concatenate([self.shot_class_ids[kept], other.shot_class_ids[new]])
        used = set(class_ids.tolist())
        merged = MemoryBank(
            classes=[c for c in classes if c["id"] in used],
            shot_features=np.concatenate([self.shot_features[kept], other.shot_features[new]]),
            shot_class_ids=class_ids,
            shots=[self.shots[i] for i in kept] + [other.shots[j] for j in new],
            encoder=dict(self.encoder),
            info=dict(self.info),
        )
        merged._check_negatives()
        return merged

    def _matched(self, other: MemoryBank, say: Callable[[str], None]) -> MemoryBank:
        """``other`` with its classes numbered as this bank's (``matched_to``); each class whose id changes said."""
        matched = other.matched_to(self)
        ours = {c["name"]: c["id"] for c in self.classes}
        names = {c["id"]: c["name"] for c in self.classes}
        where = _where(other)
        for before, after in zip(other.classes, matched.classes):
            name, old, new = before["name"], before["id"], after["id"]
            if old == new:
                continue
            if name in ours:
                say(f"class {name!r} is id {old} in {where} and id {new} in the bank: added to the bank's {name!r}")
            else:
                say(f"class {name!r} is id {old} in {where}, the bank's {names[old]!r}: added as a new class, id {new}")
        return matched

    def _replaced(self, other: MemoryBank, new: list[int], say: Callable[[str], None]) -> set[int]:
        """Indices of this bank's shots that ``other``'s shots ``new`` contradict (same label and class, the other
        kind), each said."""
        names = {c["id"]: c["name"] for c in self.classes}
        replaced: set[int] = set()
        for j in new:
            shot, negative, class_id = other.shots[j], bool(other.negative[j]), int(other.shot_class_ids[j])
            for i in self._same_label_as(shot):
                if i in replaced or bool(self.negative[i]) == negative or int(self.shot_class_ids[i]) != class_id:
                    continue
                replaced.add(i)
                was, now = ("negative", "positive") if self.negative[i] else ("positive", "negative")
                say(
                    f"{describe_shot(shot)} was a {was} of {names[class_id]!r} and is now a {now}: the newer "
                    "verdict replaces the older"
                )
        return replaced

    def _same_label_as(self, shot: dict[str, Any]) -> list[int]:
        """Indices of the bank's shots made from ``shot``'s label (``same_label``)."""
        key = _label_key(shot)
        if key is None:
            return []
        return [i for i in self._by_label.get(key, ()) if same_label(self.shots[i], shot)]

    @functools.cached_property
    def _by_label(self) -> dict[tuple[str, str], list[int]]:
        """(image id, annotation id) -> indices of the shots with those ids: ``holds`` looks a shot up in it, not
        through every shot (built once: a bank is never changed in place)."""
        index: dict[tuple[str, str], list[int]] = {}
        for i, shot in enumerate(self.shots):
            key = _label_key(shot)
            if key is not None:
                index.setdefault(key, []).append(i)
        return index

    def matched_to(self, other: MemoryBank) -> MemoryBank:
        """The same shots with their classes numbered as ``other``'s classes of the same name (``other.add`` does
        this first: classes merge by name). A class ``other`` lacks keeps its id when ``other`` does not use it,
        else gets the next free one (another file may number its classes otherwise; two changes made at once may
        each have given the same id to a new class). Returns this bank itself when no id changes."""
        theirs = {c["name"]: c["id"] for c in other.classes}
        used = set(theirs.values()) | set(self.class_ids)
        mapping = {}
        for c in self.classes:
            if c["name"] in theirs:
                mapping[c["id"]] = theirs[c["name"]]
            elif c["id"] in theirs.values():
                mapping[c["id"]] = max(used) + 1
                used.add(mapping[c["id"]])
        if all(old == new for old, new in mapping.items()):
            return self
        renumber = lambda i: mapping.get(int(i), int(i))  # noqa: E731
        return MemoryBank(
            classes=[{**c, "id": renumber(c["id"])} for c in self.classes],
            shot_features=self.shot_features,
            shot_class_ids=np.array([renumber(i) for i in self.shot_class_ids], dtype=np.int64),
            shots=[{**s, "class_id": renumber(s["class_id"])} if "class_id" in s else s for s in self.shots],
            encoder=dict(self.encoder),
            info=dict(self.info),
        )

    def remove(self, annotation_ids=(), class_names=()) -> MemoryBank:
        """A new bank without the shots of these annotation ids and without these classes.

        Classes left without any positive shot are dropped from the bank, with their negatives.
        """
        ann = {str(a) for a in annotation_ids}
        drop_ids = {c["id"] for c in self.classes if c["name"] in set(class_names)}
        keep = [
            str(shot.get("annotation_id")) not in ann and self.shot_class_ids[i] not in drop_ids
            for i, shot in enumerate(self.shots)
        ]
        return self.keep(np.array(keep, dtype=bool))

    def keep(self, chosen: np.ndarray) -> MemoryBank:
        """A new bank of the shots where ``chosen`` (bool (S,)) is true; classes left without a positive shot are
        dropped, with their negatives."""
        chosen = np.asarray(chosen, dtype=bool).reshape(len(self.shots))
        kept_ids = set(self.shot_class_ids[chosen & ~self.negative].tolist())
        index = np.flatnonzero(chosen & np.isin(self.shot_class_ids, list(kept_ids)))
        return MemoryBank(
            classes=[c for c in self.classes if c["id"] in kept_ids],
            shot_features=self.shot_features[index],
            shot_class_ids=self.shot_class_ids[index],
            shots=[self.shots[i] for i in index],
            encoder=dict(self.encoder),
            info=dict(self.info),
        )

    def with_info(self, **entries: Any) -> MemoryBank:
        """A new bank with the same shots and these ``info`` entries set (e.g. ``calibration=...``)."""
        info = {**self.info, **entries}
        return MemoryBank(self.classes, self.shot_features, self.shot_class_ids, self.shots, dict(self.encoder), info)

    def check_encoder(self, encoder: dict[str, Any]) -> None:
        """Raise BankError unless target features will come from the bank's encoder, input size and weights.

        ``encoder`` is the ``encoder`` dict the segmenter's DINOv2 would write into a bank. Weights are
        compared by fingerprint, so the same weights loaded from another file (Meta's ``.pth`` or timm's
        safetensors) are accepted and different weights under the same file name are not.
        """
        have, want = _encoder_key(self.encoder), _encoder_key(encoder)
        if have != want:
            raise BankError(
                f"bank was built with DINOv2 {_describe(self.encoder)}, but the segmenter uses "
                f"{_describe(encoder)}; use the same encoder and weights "
                "(a random-weights bank needs --random-weights with the same seed)"
            )

    @property
    def fingerprint(self) -> str:
        """The sha256 (hex) of what predictions depend on (classes, shot features and class ids, encoder)."""
        content = {"classes": self.classes, "encoder": self.encoder}
        if self.negative.any():  # a bank without negatives keeps the fingerprint it had before they existed
            content["negatives"] = np.flatnonzero(self.negative).tolist()
        return _digest(content, self.shot_features, self.shot_class_ids)

    def summary(self) -> dict[str, Any]:
        return {
            "classes": len(self.classes),
            "shots": len(self.shots),
            "shots_per_class": self.shots_per_class(),
            "negatives_per_class": self.negatives_per_class(),
            "encoder": self.encoder,
        }

    # ---- persistence -------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the bank atomically (temp file + rename) and return its path.

        Raises:
            BankError: the bank has no shot left (an empty bank cannot segment anything).
        """
        from safetensors.numpy import save

        if not self.shots:
            raise BankError("refusing to write an empty bank (no shot left): keep at least one class")
        self._check_negatives()
        tensors = {"shot_features": self.shot_features, "shot_class_ids": self.shot_class_ids}
        meta = {
            "format_version": FORMAT_VERSION,
            "classes": self.classes,
            "shots": self.shots,
            "encoder": self.encoder,
            "info": self.info,
        }
        meta = json.loads(json.dumps(meta, default=str))  # what the file will hold, for the checksum
        meta["checksum"] = _digest(meta, self.shot_features, self.shot_class_ids)
        data = save(tensors, metadata={_META_KEY: json.dumps(meta)})
        written = write_bytes_atomic(path, data)
        self.file_digest = hashlib.sha256(data).hexdigest()
        return written

    @classmethod
    def load(cls, path: str | Path) -> MemoryBank:
        """Read and verify a bank file (format version, checksum, then every part, as the constructor does).

        ``file_digest`` of the result is the sha256 of the bytes read. A folder, pipe or device given as the
        bank is refused without being read.

        Raises:
            BankError: naming the file and what is wrong with it.
        """
        raw = _read_bytes(path)
        path = Path(path)
        tensors, meta = _parse(path, raw)
        version = meta.get("format_version")
        if version not in READS or not isinstance(version, int):
            raise BankError(f"{path}: bank format version {version}, this ntt reads {' and '.join(map(str, READS))}")
        signed = {k: v for k, v in meta.items() if k != "checksum"}
        if meta.get("checksum") != _digest(signed, tensors["shot_features"], tensors["shot_class_ids"]):
            raise BankError(f"{path}: checksum mismatch, the bank file was modified or corrupted")
        try:
            bank = cls(
                classes=meta["classes"],
                shot_features=tensors["shot_features"],
                shot_class_ids=tensors["shot_class_ids"],
                shots=meta["shots"],
                encoder=meta["encoder"],
                info=meta.get("info", {}),
            )
        except KeyError as err:
            raise BankError(f"{path}: bank metadata is incomplete (no {err} entry)") from err
        except TypeError as err:  # a shape of metadata no check foresaw: still one message naming the file
            raise BankError(f"{path}: bank metadata is malformed ({err})") from err
        except BankError as err:
            raise BankError(f"{path}: {err}") from err
        bank.file_digest = hashlib.sha256(raw).hexdigest()
        return bank


def _read_bytes(path: str | Path) -> bytes:
    """A bank file's bytes; only a regular file is opened (a FIFO would block, /dev/zero never end)."""
    from ntt.io.inputs import InputFileError, regular_file

    try:
        return regular_file(path, "bank file").read_bytes()
    except FileNotFoundError as err:
        raise BankError(f"{path}: bank file not found") from err
    except InputFileError as err:
        raise BankError(str(err)) from err


def _parse(path: Path, raw: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        tensors = load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + header_len])
        meta = json.loads(header["__metadata__"][_META_KEY])
    except (SafetensorError, ValueError, KeyError, TypeError, OverflowError, RecursionError) as err:
        raise BankError(f"{path}: not a valid ntt bank file ({type(err).__name__}: {err})") from err
    if not isinstance(meta, dict):
        raise BankError(f"{path}: not a valid ntt bank file (its metadata is not a JSON object)")
    if set(tensors) != {"shot_features", "shot_class_ids"}:
        raise BankError(f"{path}: not a valid ntt bank file (unexpected tensors {sorted(tensors)})")
    return tensors, meta


def _digest(meta: dict[str, Any], features: np.ndarray, class_ids: np.ndarray) -> str:
    """sha256 of a JSON header (canonical form: sorted keys, no spaces) and the two tensors."""
    digest = hashlib.sha256()
    digest.update(json.dumps(meta, sort_keys=True, separators=(",", ":"), default=str).encode())
    with np.errstate(over="ignore"):  # float64 features beyond float32 hash as inf (and are refused as not finite)
        digest.update(np.ascontiguousarray(features, dtype=np.float32).tobytes())
    digest.update(np.ascontiguousarray(class_ids, dtype=np.int64).tobytes())
    return digest.hexdigest()


def on_image(shot: dict[str, Any], origin: str | None, image_id: Any) -> bool:
    """Whether ``shot`` comes from image ``image_id`` of ``origin`` (where the references came from: a COCO
    file's digest or a dataset id; None: not known). Image ids repeat across COCO files (most tools number from
    1), so ids are compared only within one origin; a shot or image without an origin matches by id alone."""
    theirs = shot.get("source")
    return str(shot.get("image_id")) == str(image_id) and (theirs is None or origin is None or theirs == origin)


def same_label(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether shots ``a`` and ``b`` (provenance dicts) were made from the same label.

    Their image ids and annotation ids must be equal (as strings: ids go through JSON), and a shot without an
    annotation id is no label's. Then:

    - both have a ``source``: it is the same. All FiftyOne datasets count as one source: their ids are database
      ids, unique across datasets, and a clone keeps its samples', labels' and banks' ids (the same labels).
    - either has none (a shot of a bank made before shots recorded their source): their ``image_path`` is the same
      (as written) when both have one. So a second file's labels numbered alike, on other images, are not taken
      for an old bank's; the same file added again (same paths) is. Shots of in-memory images match by ids alone.
    """
    key = _label_key(a)
    if key is None or key != _label_key(b):
        return False
    ours, theirs = a.get("source"), b.get("source")
    if ours is not None and theirs is not None:
        return _namespace(ours) == _namespace(theirs)
    ours, theirs = a.get("image_path"), b.get("image_path")
    return ours is None or theirs is None or str(ours) == str(theirs)


def describe_shot(shot: dict[str, Any]) -> str:
    """A shot's label for messages: ``annotation 7 of image 3 (refs/000003.jpg)``."""
    where = f" ({shot['image_path']})" if shot.get("image_path") else ""
    return f"annotation {shot.get('annotation_id')} of image {shot.get('image_id')}{where}"


def _label_key(shot: dict[str, Any]) -> tuple[str, str] | None:
    annotation = shot.get("annotation_id")
    return None if annotation is None else (str(shot.get("image_id")), str(annotation))


def _namespace(source: str) -> str:
    return _DATASETS if source.startswith(_DATASETS) else source


def _where(bank: MemoryBank) -> str:
    """What a bank to add came from, for messages: its references file (``info["source"]``, set by
    ``ntt.cli.pipeline.bank_from_coco``) when known."""
    source = bank.info.get("source")
    return source if isinstance(source, str) and source else "the added shots"


def _encoder_key(encoder: dict[str, Any]) -> tuple:
    fingerprint = encoder.get("fingerprint") or encoder.get("weights")
    return (encoder.get("name"), int(encoder.get("image_size", 0)), fingerprint)


def _describe(encoder: dict[str, Any]) -> str:
    fingerprint = str(encoder.get("fingerprint"))[:12]
    where = f"{encoder.get('name')} at {encoder.get('image_size')}px"
    return f"{where} with {encoder.get('weights')} weights ({fingerprint})"
