"""Inference: SAM2 proposes masks from a point grid, DINOv2 features match them to the bank's classes."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import postprocess as pp
from .bank import MemoryBank
from .config import NTTConfig
from .geometry import mask_boxes_inclusive, point_grid
from .images import load_image
from .loader import prefetch
from .models import autocast, encoder_identity, get_dinov2, get_sam2, resolve_device
from .prompts import guided_points
from .timing import NullTimer
from .types import Instances

log = logging.getLogger(__name__)


@dataclass
class Candidates:
    """Per-image candidate masks after decoding, on the device (internal).

    logits: float (N, m, m) low-res mask logits; iou: float (N,) SAM-predicted IoU;
    embeddings: float (N, D) unit-norm; scores: float (N,); labels: int64 (N,) bank class indices.
    """

    logits: torch.Tensor
    iou: torch.Tensor
    embeddings: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    counts: dict[str, int] = field(default_factory=dict)

    def take(self, index: torch.Tensor) -> Candidates:
        return Candidates(
            self.logits[index],
            self.iou[index],
            self.embeddings[index],
            self.scores[index],
            self.labels[index],
            self.counts,
        )


@dataclass
class ImageResult:
    """The outcome for one target: its instances, or the reason it was skipped."""

    source: object
    instances: Instances | None
    error: str | None = None


class Segmenter:
    """Segments every instance of the bank's classes in target images.

    Example:
        >>> bank = MemoryBank.load("bank.safetensors")
        >>> seg = Segmenter(bank, get_config("paper"))
        >>> instances = seg.predict([load_image("a.jpg")])[0]
    """

    def __init__(self, bank: MemoryBank, cfg: NTTConfig, proposer=None, encoder=None, timer=None):
        """Load (or take) the models and check that the bank was built with the same encoder.

        Args:
            proposer / encoder: models to use instead of the configured SAM2 / DINOv2 (same interfaces as
                ``SAM2Proposer`` / ``DinoV2Encoder``; used by tests and for other backbones).
            timer: a ``StageTimer`` to charge each stage's time to (benchmarks).
        """
        self.cfg = cfg.validate()
        self.bank = bank
        self.device = resolve_device(cfg.model.device)
        if self.device.type == "cpu" and cfg.model.dtype == "bf16":
            log.warning("bf16 on a CPU is often slower than fp32 (many have no native bf16): consider the lite preset")
        self.dinov2 = encoder if encoder is not None else get_dinov2(cfg.model)
        bank.check_encoder(encoder_identity(self.dinov2, cfg.model))
        self.sam = proposer if proposer is not None else get_sam2(cfg.model, cfg.segment.add_no_mem_embed)
        self.prototypes = torch.from_numpy(bank.class_prototypes()).to(self.device)
        self.class_ids = torch.tensor(bank.class_ids, dtype=torch.int64)
        seg = cfg.segment
        side = seg.points_per_side if seg.prompt_mode == "grid" else seg.guided_grid
        self.grid = point_grid(side, self.sam.image_size).to(self.device) if side > 0 else None
        self.timer = timer or NullTimer()
        self.class_thresh = self._class_thresholds()
        self.last_counts: list[dict[str, int]] = []  # per image of the last batch
        self.counts: Counter[str] = Counter()  # summed over every image so far
        self.batch_size = cfg.segment.batch_size or 1
        self.points_chunk = cfg.segment.points_batch_size  # halved when one image runs out of memory
        self._fit_batch = cfg.segment.batch_size == 0 and self.device.type == "cuda"

    def _class_thresholds(self) -> torch.Tensor | None:
        given = self.cfg.segment.class_thresholds
        if not given:
            return None
        unknown = set(given) - set(self.bank.class_names)
        if unknown:
            raise ValueError(f"class_thresholds name classes not in the bank: {sorted(unknown)}")
        values = [given.get(name, self.cfg.segment.score_thresh) for name in self.bank.class_names]
        return torch.tensor(values, dtype=torch.float32, device=self.device)

    @torch.no_grad()
    def predict(self, images: Sequence[np.ndarray]) -> list[Instances]:
        """Instances for RGB uint8 images (H, W, 3), run as one batch through the encoders."""
        if not images:
            return []
        with self.timer("resize"):
            prepared = [self.sam.prepare(img) for img in images]
        return self._predict_prepared(images, prepared)

    def _predict_prepared(self, images: Sequence[np.ndarray], prepared: Sequence[torch.Tensor]) -> list[Instances]:
        """``predict`` for images already resized by ``self.sam.prepare`` (float (3, S, S) each)."""
        if self._fit_batch:
            return self._predict_and_fit_batch(images, prepared)
        sam_in = torch.stack(list(prepared)).to(self.device, non_blocking=True)
        with autocast(self.cfg.model):
            with self.timer("sam2_encoder"):
                feats = self.sam.encode(sam_in)
            with self.timer("dinov2"):
                tokens = self.dinov2(self.dinov2.resize(sam_in)).float()
        with self.timer("decoder"):
            prompts = [self._prompts(t) for t in tokens]  # fp32: guided prompts rank close similarities
            with autocast(self.cfg.model):
                decoded = self.sam.decode_batch(feats, prompts, self.points_chunk, compiled=self.cfg.model.compile)
        self.last_counts = []
        out = []
        for (logits, iou), img, tok in zip(decoded, images, tokens):
            cand = self._candidates(logits, iou, tok)
            out.append(self._finish(cand, img.shape[:2]))
            self.last_counts.append(cand.counts)
            self.counts.update(cand.counts)
        return out

    def _predict_and_fit_batch(self, images, prepared) -> list[Instances]:
        """Run the first batch while measuring its peak GPU memory, then size later batches to the memory
        left (automatic batch size)."""
        self._fit_batch = False
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        out = self._predict_prepared(images, prepared)
        per_image = (torch.cuda.max_memory_allocated(self.device) - base) / len(images)
        free, _ = torch.cuda.mem_get_info(self.device)
        spare = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        self.batch_size = fit_batch_size(free + spare, per_image)
        log.info("batch size %d (%.0f MiB per image, %.0f MiB free)", self.batch_size, per_image / 2**20, free / 2**20)
        return out

    def _prompts(self, tokens: torch.Tensor) -> torch.Tensor:
        seg = self.cfg.segment
        if seg.prompt_mode == "grid":
            return self.grid
        guided = guided_points(tokens, self.prototypes, seg.guided_points, self.sam.image_size)
        return guided if self.grid is None else torch.cat([guided, self.grid])

    def _candidates(self, logits: torch.Tensor, iou: torch.Tensor, tokens: torch.Tensor) -> Candidates:
        """Filter one image's decoded masks (float (P, m, m) logits, (P,) IoU) and match them to classes."""
        seg = self.cfg.segment
        counts = {"prompts": len(iou)}
        with self.timer("matching"):
            keep = iou > seg.pred_iou_thresh
            logits, iou = logits[keep].float(), iou[keep]
            counts["iou_filter"] = len(iou)
            masks = logits > 0
            nonempty = masks.flatten(1).any(1)
            logits, iou, masks = logits[nonempty], iou[nonempty], masks[nonempty]
            counts["nonempty"] = len(iou)
            emb = pp.pool_mask_features(masks, tokens)
            scores, labels = pp.match_classes(emb, self.prototypes)
        cand = Candidates(logits, iou, emb, scores, labels, counts)
        with self.timer("nms_merge"):
            boxes = mask_boxes_inclusive(masks)
            keep = pp.class_aware_nms(boxes, iou, labels, seg.nms_thresh, seg.nms_max_keep)
        cand = cand.take(keep)
        counts["nms"] = len(keep)
        cand = cand.take(cand.scores > 0)
        counts["positive_score"] = len(cand.scores)
        return cand

    def _finish(self, cand: Candidates, size: tuple[int, int]) -> Instances:
        with self.timer("nms_merge"):
            cand, scores, keep = self._merge_and_select(cand, size)
        with self.timer("full_res_masks"):
            found = pp.logits_to_crops(cand.logits[keep], size)
        kept = [i for i, f in enumerate(found) if f is not None]
        keep = keep[kept]
        cand.counts["final"] = len(keep)
        return Instances(
            boxes=np.array([found[i][0] for i in kept], np.float32).reshape(-1, 4),
            crops=[found[i][1] for i in kept],
            scores=scores[keep].float().cpu().numpy().clip(0.0, 1.0),
            class_ids=self.class_ids[cand.labels[keep].cpu()].numpy(),
            image_size=(int(size[0]), int(size[1])),
        )

    def _merge_and_select(self, cand: Candidates, size: tuple[int, int]):
        """Soft-merge the scores and pick the final candidates: (candidates, scores, kept indices); the
        candidates lose those whose mask vanishes at full resolution."""
        seg = self.cfg.segment
        if seg.merge_resolution == "full" and len(cand.scores):
            # Faithful: IoS on full-resolution masks (scaled down only past a memory budget).
            merge_at = pp.merge_size(len(cand.scores), size)
            merge_masks = pp.upsample_logits(cand.logits, merge_at)
            if merge_at == tuple(size):  # truly empty at full resolution: nothing to keep
                nonempty = merge_masks.flatten(1).any(1)
                cand, merge_masks = cand.take(nonempty), merge_masks[nonempty]
            else:  # a mask that vanishes when scaled down is kept (IoS 0); its full-res crop decides
                log.info(
                    "soft merge of %d masks at %dx%d instead of %dx%d (memory budget)",
                    len(cand.scores),
                    *merge_at,
                    *size,
                )
        else:
            merge_masks = cand.logits > 0
        scores = cand.scores
        if seg.soft_merge and len(scores):
            scores = pp.apply_decay(scores, self._decay(cand, merge_masks), seg.soft_merge_exponent)
        keep = pp.select_top(scores, cand.labels, seg.max_instances, seg.score_thresh, self.class_thresh)
        return cand, scores, keep

    def _decay(self, cand: Candidates, masks: torch.Tensor) -> torch.Tensor:
        """Soft-merge decay per candidate, computed class by class (only same-class pairs interact)."""
        decay = torch.zeros_like(cand.scores)
        for label in cand.labels.unique():
            idx = torch.nonzero(cand.labels == label).flatten()  # keeps NMS (rank) order
            inter, areas = pp.mask_intersections(masks[idx])
            decay[idx] = pp.soft_merge_decay(inter, areas, cand.labels[idx], cand.embeddings[idx])
        return decay

    def predict_resilient(
        self, images: Sequence[np.ndarray], prepared: Sequence[torch.Tensor] | None = None
    ) -> list[Instances | str]:
        """``predict`` that survives running out of (GPU) memory: the batch is split in halves and retried,
        later batches use the smaller size (``self.batch_size``); a single image is retried with half as
        many prompts per decoder call (down to ``MIN_POINTS_CHUNK``); an image that does not fit even
        then gets the reason as a string instead of instances. ``prepared``: the images already resized
        by ``self.sam.prepare`` (optional)."""
        try:
            if prepared is None:
                return list(self.predict(images))
            return list(self._predict_prepared(images, prepared))
        except torch.OutOfMemoryError as err:
            _free_memory()
            if len(images) == 1:
                if self.points_chunk <= MIN_POINTS_CHUNK:
                    return [f"out of memory even alone ({str(err).splitlines()[0]})"]
                self.points_chunk = max(MIN_POINTS_CHUNK, self.points_chunk // 2)
                log.warning("out of memory on one image: retrying with %d prompts per decoder call", self.points_chunk)
                return self.predict_resilient(images, prepared)
            half = len(images) // 2
            self.batch_size = max(1, min(self.batch_size, half))
            log.warning("out of memory on %d images: retrying in batches of %d", len(images), half)
            first, rest = (None, None) if prepared is None else (prepared[:half], prepared[half:])
            return self.predict_resilient(images[:half], first) + self.predict_resilient(images[half:], rest)

    def predict_files(self, sources: Iterable[str | Path]) -> Iterator[ImageResult]:
        """Segment image files batch by batch; unreadable files are skipped with a reason, not raised.

        ``segment.loader_workers`` threads decode and resize the next images while a batch runs.
        Yields one ``ImageResult`` per source, in the order of ``sources``.
        """
        workers = self.cfg.segment.loader_workers
        loaded = prefetch(sources, self._load, workers, lambda: 2 * self.batch_size)
        pending: list[tuple[object, tuple | None, str | None]] = []
        while True:
            with self.timer("load"):  # with workers: only the time spent waiting for them
                item = next(loaded, None)
            if item is None:
                break
            _, _, error = item
            if error is not None:
                log.warning("skipping %s", error)
            pending.append(item)
            if sum(got is not None for _, got, _ in pending) >= self.batch_size:
                yield from self._run_batch(pending)
                pending = []
        if pending:
            yield from self._run_batch(pending)

    def _load(self, source) -> tuple[np.ndarray, torch.Tensor | None]:
        image = load_image(source)
        return image, (self.sam.prepare(image) if self.cfg.segment.loader_workers else None)

    def _run_batch(self, pending) -> Iterator[ImageResult]:
        loaded = [got for _, got, _ in pending if got is not None]
        images = [image for image, _ in loaded]
        prepared = [p for _, p in loaded] if loaded and loaded[0][1] is not None else None
        results = iter(self.predict_resilient(images, prepared))
        for src, got, err in pending:
            if got is None:
                yield ImageResult(src, None, err)
                continue
            res = next(results)
            yield ImageResult(src, res, None) if isinstance(res, Instances) else ImageResult(src, None, res)


MAX_AUTO_BATCH = 32
MIN_POINTS_CHUNK = 32


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
