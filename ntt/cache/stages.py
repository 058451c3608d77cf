"""The candidate cache as a ``Segmenter`` uses it: one stage's bank-independent output per image.

With grid prompts that is the image's mask pool (``pool_codec``): re-segmenting after a bank change runs only
matching and post-processing. Guided prompts are chosen with the bank's prototypes, so there only the two
encoders' outputs are kept (``encoded_codec``): the decoder still runs on the new prompts.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import torch

from ntt.cache.store import entry_key, image_digest
from ntt.models import encoder_identity

log = logging.getLogger(__name__)


class StageCache:
    """Entries of one stage's output in a ``CandidateStore``, keyed for one predictor's models and settings.

    The key: the image's bytes, both models with their weights' fingerprints, the input sizes, the precision and
    device type, the codec's format, and ``settings`` (what else shapes the stage's output). Hits are unpacked
    onto the predictor's device; ``put`` returns what later hits will see.

    Args:
        codec: a module with ``FORMAT``, ``pack(value) -> {name: array}`` and ``unpack(arrays, device)``.
    """

    def __init__(self, predictor, store, codec, settings: list):
        model = predictor.cfg.model
        self.parts = {
            "format": codec.FORMAT,
            "sam2": [model.sam2, getattr(predictor.sam, "fingerprint", type(predictor.sam).__name__)],
            "dinov2": [predictor.dinov2.name, encoder_identity(predictor.dinov2, model)["fingerprint"]],
            "sizes": [int(predictor.sam.image_size), int(predictor.dinov2.image_size)],
            "numerics": [model.dtype, predictor.device.type],
            "settings": settings,
        }
        self.store, self.codec, self.device = store, codec, predictor.device
        self._hit, self._missed = set(), set()  # keys: a batch retried after running out of memory counts once
        self._unstored: set[str] = set()  # computed but not stored (e.g. the disk is full)

    @property
    def hits(self) -> int:
        """Images whose work came from the cache."""
        return len(self._hit - self._missed)

    @property
    def unstored(self) -> int:
        """Images computed whose entry could not be written (e.g. the disk is full)."""
        return len(self._unstored)

    @property
    def misses(self) -> int:
        """Images whose work was computed (and stored)."""
        return len(self._missed)

    def key(self, source, image: np.ndarray) -> str:
        """The entry key of an image: from its file's bytes, or from the array itself."""
        if isinstance(source, np.ndarray):
            digest = hashlib.sha256(repr(image.shape).encode() + np.ascontiguousarray(image).tobytes()).hexdigest()
        else:
            digest = image_digest(source)
        return entry_key(image=digest, **self.parts)

    def get(self, key: str):
        """The stored value, or None (a miss). An entry the store finds unusable, or the codec cannot unpack,
        is removed with one warning and is a miss: the caller computes and stores it again."""
        arrays = self.store.get(key)
        value = None if arrays is None else self._unpack(key, arrays)
        if value is None:
            self._missed.add(key)
        else:
            self._hit.add(key)
        return value

    def _unpack(self, key: str, arrays):
        try:
            return self.codec.unpack(arrays, self.device)
        except torch.OutOfMemoryError:
            raise  # the device is full, not the entry bad: the segmenter retries with smaller batches
        except Exception as err:  # noqa: BLE001 - an entry that cannot be read is rebuilt, never a crash
            path = self.store.path(key)
            log.warning("candidate cache: ignoring and removing %s (%s: %s)", path, type(err).__name__, err)
            self.store.remove(key)
            return None

    def put(self, key: str, value):
        """Store ``value``; returns it as a later hit will see it, so the run that fills the cache and the runs
        that read it give the same detections."""
        arrays = self.codec.pack(value)
        try:
            self.store.put(key, arrays)
        except OSError as err:  # a full disk must not stop segmenting: the cache is only a shortcut
            log.warning("candidate cache: not stored (%s)", err)
            self._unstored.add(key)
        else:
            self._unstored.discard(key)
        return self.codec.unpack(arrays, self.device)


def stage_cache(predictor, store) -> StageCache:
    """The cache of the last bank-independent stage for the predictor's prompt mode."""
    from ntt.cache import encoded_codec, pool_codec

    seg = predictor.cfg.segment
    if seg.prompt_mode == "grid":
        settings = [seg.points_per_side, seg.pred_iou_thresh, seg.add_no_mem_embed]
        return StageCache(predictor, store, pool_codec, settings)
    return StageCache(predictor, store, encoded_codec, [seg.add_no_mem_embed])
