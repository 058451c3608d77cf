"""Inference: SAM2 proposes masks from a point grid, DINOv2 features match them to the bank's classes."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import postprocess as pp
from .bank import MemoryBank
from .config import NTTConfig
from .geometry import mask_boxes_inclusive, point_grid
from .images import ImageLoadError, load_image
from .models import autocast, encoder_weights, get_dinov2, get_sam2, resolve_device
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
        self.dinov2 = encoder if encoder is not None else get_dinov2(cfg.model)
        bank.check_encoder(self.dinov2.name, self.dinov2.image_size, encoder_weights(self.dinov2, cfg.model))
        self.sam = proposer if proposer is not None else get_sam2(cfg.model, cfg.segment.add_no_mem_embed)
        self.prototypes = torch.from_numpy(bank.class_prototypes()).to(self.device)
        self.class_ids = torch.tensor(bank.class_ids, dtype=torch.int64)
        seg = cfg.segment
        side = seg.points_per_side if seg.prompt_mode == "grid" else seg.guided_grid
        self.grid = point_grid(side, self.sam.image_size).to(self.device) if side > 0 else None
        self.timer = timer or NullTimer()
        self.class_thresh = self._class_thresholds()
        self.last_counts: list[dict[str, int]] = []
        self.batch_size = cfg.segment.batch_size

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
            sam_in = torch.stack([self.sam.prepare(img) for img in images]).to(self.device)
        with autocast(self.cfg.model):
            with self.timer("sam2_encoder"):
                feats = self.sam.encode(sam_in)
            with self.timer("dinov2"):
                tokens = self.dinov2(self.dinov2.resize(sam_in))
        self.last_counts = []
        out = []
        for i, img in enumerate(images):
            cand = self._candidates(feats, i, tokens[i].float())
            out.append(self._finish(cand, img.shape[:2]))
            self.last_counts.append(cand.counts)
        return out

    def _prompts(self, tokens: torch.Tensor) -> torch.Tensor:
        seg = self.cfg.segment
        if seg.prompt_mode == "grid":
            return self.grid
        guided = guided_points(tokens, self.prototypes, seg.guided_points, self.sam.image_size)
        return guided if self.grid is None else torch.cat([guided, self.grid])

    def _candidates(self, feats: dict, index: int, tokens: torch.Tensor) -> Candidates:
        seg = self.cfg.segment
        with self.timer("decoder"), autocast(self.cfg.model):
            logits, iou = self.sam.decode_points(feats, index, self._prompts(tokens), seg.points_batch_size)
        counts = {"prompts": len(iou)}
        with self.timer("matching"):
            keep = iou > seg.pred_iou_thresh
            logits, iou = logits[keep], iou[keep]
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
            merge_masks = pp.upsample_logits(cand.logits, pp.merge_size(len(cand.scores), size))
            nonempty = merge_masks.flatten(1).any(1)
            cand, merge_masks = cand.take(nonempty), merge_masks[nonempty]
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

    def predict_resilient(self, images: Sequence[np.ndarray]) -> list[Instances | str]:
        """``predict`` that survives running out of (GPU) memory: the batch is split in halves and retried,
        later batches use the smaller size (``self.batch_size``); an image that does not fit alone
        gets the reason as a string instead of instances."""
        try:
            return list(self.predict(images))
        except torch.OutOfMemoryError as err:
            _free_memory()
            if len(images) == 1:
                return [f"out of memory even alone ({str(err).splitlines()[0]})"]
            half = len(images) // 2
            self.batch_size = max(1, min(self.batch_size, half))
            log.warning("out of memory on %d images: retrying in batches of %d", len(images), half)
            return self.predict_resilient(images[:half]) + self.predict_resilient(images[half:])

    def predict_files(self, sources: Iterable[str | Path]) -> Iterator[ImageResult]:
        """Segment image files batch by batch; unreadable files are skipped with a reason, not raised.

        Yields one ``ImageResult`` per source, in the order of ``sources``.
        """
        pending: list[tuple[object, np.ndarray | None, str | None]] = []
        for src in sources:
            try:
                pending.append((src, load_image(src), None))
            except ImageLoadError as err:
                log.warning("skipping %s", err)
                pending.append((src, None, str(err)))
            if sum(img is not None for _, img, _ in pending) >= self.batch_size:
                yield from self._run_batch(pending)
                pending = []
        if pending:
            yield from self._run_batch(pending)

    def _run_batch(self, pending) -> Iterator[ImageResult]:
        loaded = [img for _, img, _ in pending if img is not None]
        results = iter(self.predict_resilient(loaded))
        for src, img, err in pending:
            if img is None:
                yield ImageResult(src, None, err)
                continue
            res = next(results)
            yield ImageResult(src, res, None) if isinstance(res, Instances) else ImageResult(src, None, res)


def _free_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
