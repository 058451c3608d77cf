"""Segmenting many images: a ``Predictor`` run batch by batch with the engineering policy around it.

Images are loaded ahead in threads; the batch size is fitted to the GPU's memory when asked (batch_size 0);
running out of memory halves the decoder's prompt chunk (when the decoder failed) or the batch, and an
image that fits in no way is reported, not raised. None of it changes a result: ``Predictor.predict`` does.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ntt.bank.memory import MemoryBank
from ntt.cache.stages import stage_cache
from ntt.config import NTTConfig
from ntt.io.images import ImageLoadError, load_image
from ntt.predict.loader import prefetch
from ntt.predict.predictor import DecoderOutOfMemory, Encoded, Predictor
from ntt.timing import NullTimer
from ntt.types import Instances

log = logging.getLogger(__name__)

MAX_AUTO_BATCH = 32
MIN_POINTS_CHUNK = 32


@dataclass
class ImageResult:
    """The outcome for one target: its instances, or the reason it was skipped (``error``); ``counts``:
    how many candidates each filter left (diagnostics, empty when skipped)."""

    source: object
    instances: Instances | None
    error: str | None = None
    counts: dict[str, int] = field(default_factory=dict)


class Segmenter:
    """Segments every instance of the bank's classes in many target images.

    Example:
        >>> seg = Segmenter(MemoryBank.load("bank.safetensors"), get_config("paper"))
        >>> for result in seg.run(["a.jpg", "b.jpg"]):
        ...     print(result.source, result.error or len(result.instances))
    """

    def __init__(self, bank: MemoryBank, cfg: NTTConfig, proposer=None, encoder=None, timer=None, cache=None):
        """Arguments as ``Predictor``'s; the timer is charged the waiting for images too (``load``).

        Args:
            cache: a ``CandidateStore``: each image's bank-independent work is taken from it when there and
                stored when not. With grid prompts that is its mask pool, so re-segmenting after a bank change
                skips the encoders and the decoder; with guided prompts (chosen with the bank), the encoders'
                outputs, so only the decoder runs again. None: no cache.
        """
        self.timer = timer or NullTimer()
        self.predictor = Predictor(bank, cfg, proposer, encoder, self.timer)
        self.cfg, self.bank = self.predictor.cfg, bank
        self.cache = stage_cache(self.predictor, cache) if cache is not None else None
        self.batch_size = cfg.segment.batch_size or 1  # halved when a batch runs out of memory
        self.points_chunk = cfg.segment.points_batch_size  # halved when the decoder runs out of memory
        self._fit_batch = cfg.segment.batch_size == 0 and self.predictor.device.type == "cuda"

    def run(self, sources: Iterable[str | Path | np.ndarray]) -> Iterator[ImageResult]:
        """Segment images batch by batch: one ``ImageResult`` per source, in the order of ``sources``.

        Args:
            sources: image files, or RGB uint8 (H, W, 3) arrays. Unreadable files are skipped with a reason,
                as are images that run out of memory even alone.
        """
        workers = self.cfg.segment.loader_workers
        loaded = prefetch(sources, self._load, workers, lambda: 2 * self.batch_size)
        pending: list[tuple[object, tuple | None, str | None]] = []
        while True:
            with self.timer("load"):  # with workers: only the time spent waiting for them
                item = next(loaded, None)
            if item is None:
                break
            if item[2] is not None:
                log.warning("skipping %s", item[2])
            pending.append(item)
            if sum(got is not None for _, got, _ in pending) >= self.batch_size:
                yield from self._run_batch(pending)
                pending = []
        if pending:
            yield from self._run_batch(pending)

    def _load(self, source) -> tuple[np.ndarray, torch.Tensor | None, str | None]:
        """The image, its SAM2 input when loading ahead, and its cache key (all in the loader's thread)."""
        image = _checked_array(source) if isinstance(source, np.ndarray) else load_image(source)
        prepared = self.predictor.prepare(image) if self.cfg.segment.loader_workers else None
        return image, prepared, (self.cache.key(source, image) if self.cache else None)

    def _run_batch(self, pending) -> Iterator[ImageResult]:
        """Results for a batch of loaded and skipped sources, in order: a batch whose every source was skipped
        (the loader may leave none) runs no stage."""
        loaded = [got for _, got, _ in pending if got is not None]
        images = [image for image, _, _ in loaded]
        prepared = [p for _, p, _ in loaded] if loaded and loaded[0][1] is not None else None
        results = iter(self._predict(images, prepared, [key for _, _, key in loaded]))
        for src, got, err in pending:
            yield dataclasses.replace(next(results), source=src) if got is not None else ImageResult(src, None, err)

    def _predict(
        self, images: Sequence[np.ndarray], prepared: Sequence[torch.Tensor] | None, keys
    ) -> list[ImageResult]:
        """The predictor's stages for a batch (mask pools from the cache when there), surviving running out of
        (GPU) memory: a decoder failure is retried with half as many prompts per decoder call (down to
        ``MIN_POINTS_CHUNK``), any other with the batch split in halves (later batches use the smaller size); an
        image that fits in neither way gets the reason. No images: no results (no stage runs)."""
        if not images:
            return []
        try:
            if self._fit_batch:
                found = self._predict_and_fit_batch(images, prepared, keys)
            else:
                found = self._finish(images, self._pools(images, prepared, keys))
            return [ImageResult(None, inst, None, counts) for inst, counts in found]
        except torch.OutOfMemoryError as err:
            _free_memory()
            if isinstance(err, DecoderOutOfMemory) and self.points_chunk > MIN_POINTS_CHUNK:
                self.points_chunk = max(MIN_POINTS_CHUNK, self.points_chunk // 2)
                log.warning("decoder out of memory: retrying with %d prompts per decoder call", self.points_chunk)
                return self._predict(images, prepared, keys)
            if len(images) == 1:
                return [ImageResult(None, None, f"out of memory even alone ({str(err).splitlines()[0]})")]
            half = len(images) // 2
            self.batch_size = max(1, min(self.batch_size, half))
            log.warning("out of memory on %d images: retrying in batches of %d", len(images), half)
            first, rest = (None, None) if prepared is None else (prepared[:half], prepared[half:])
            return self._predict(images[:half], first, keys[:half]) + self._predict(images[half:], rest, keys[half:])

    def _pools(self, images, prepared, keys) -> list:
        """Each image's mask pool: with grid prompts from the cache when there, else computed (in one batch)
        and stored; with guided prompts, from the encoders' outputs (cached the same way)."""
        if self.cache is None:
            return self.predictor.mask_pools(images, prepared, self.points_chunk)
        if self.cfg.segment.prompt_mode != "grid":
            return self.predictor.pools_from(Encoded.join(self._encoded(images, prepared, keys)), self.points_chunk)
        pools = [self.cache.get(key) for key in keys]
        todo = [i for i, pool in enumerate(pools) if pool is None]
        if todo:
            chosen = None if prepared is None else [prepared[i] for i in todo]
            fresh = self.predictor.mask_pools([images[i] for i in todo], chosen, self.points_chunk)
            for i, pool in zip(todo, fresh):
                pools[i] = self.cache.put(keys[i], pool)
        return pools

    def _encoded(self, images, prepared, keys) -> list[Encoded]:
        """Each image's encoder outputs (a batch of one): from the cache when there, else encoded and stored."""
        found = [self.cache.get(key) for key in keys]
        todo = [i for i, got in enumerate(found) if got is None]
        if todo:
            inputs = [prepared[i] if prepared is not None else self.predictor.prepare(images[i]) for i in todo]
            for i, encoded in zip(todo, self.predictor.encode(inputs).split()):
                found[i] = self.cache.put(keys[i], encoded)
        return found

    def _finish(self, images, pools) -> list[tuple[Instances, dict]]:
        return [self.predictor.finish(pool, image.shape[:2]) for pool, image in zip(pools, images)]

    def _predict_and_fit_batch(self, images, prepared, keys) -> list[tuple[Instances, dict]]:
        """Run the first batch while measuring its peak GPU memory, then size later batches to the memory
        left (automatic batch size)."""
        self._fit_batch = False
        device = self.predictor.device
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        out = self._finish(images, self._pools(images, prepared, keys))
        per_image = (torch.cuda.max_memory_allocated(device) - base) / len(images)
        free, _ = torch.cuda.mem_get_info(device)
        spare = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        self.batch_size = fit_batch_size(free + spare, per_image)
        log.info("batch size %d (%.0f MiB per image, %.0f MiB free)", self.batch_size, per_image / 2**20, free / 2**20)
        return out


def _checked_array(image: np.ndarray) -> np.ndarray:
    """An image given as an array must be what ``load_image`` returns: RGB uint8 (H, W, 3), H and W >= 1; any
    other is skipped with the reason (it would stop the whole batch deep inside the models)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ImageLoadError(
            f"an array of shape {tuple(image.shape)} and dtype {image.dtype}: images are RGB uint8 (H, W, 3)"
        )
    return image


def fit_batch_size(available_bytes: float, per_image_bytes: float, headroom: float = 0.8) -> int:
    """Images per batch that fit in ``headroom`` of the available memory, between 1 and ``MAX_AUTO_BATCH``.

    ``per_image_bytes`` is measured on a batch of one, so it also carries the decoder's per-chunk working
    memory, which does not grow with the batch: the estimate errs on the safe side.
    """
    if per_image_bytes <= 0:
        return MAX_AUTO_BATCH
    return int(max(1, min(MAX_AUTO_BATCH, headroom * available_bytes // per_image_bytes)))


def _free_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
