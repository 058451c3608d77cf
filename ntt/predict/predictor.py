"""The NTT prediction, stage by stage: encode -> propose -> pool_masks -> match -> select.

Each stage is a method over typed values (``Encoded``, ``Proposals``, ``MaskPool``, ``Candidates``,
``Instances``); with grid prompts, the stages before ``match`` do not depend on the bank (a cache can keep them);
``Predictor.predict`` is their composition: this is where faithfulness to the paper lives. Engineering policy
(loading ahead, batch sizes, out-of-memory back-off) belongs to ``ntt.predict.segmenter``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ntt.bank.memory import MemoryBank
from ntt.config import NTTConfig, derive
from ntt.geometry import mask_boxes, point_grid
from ntt.models import autocast, encoder_identity, get_dinov2, get_sam2, resolve_device
from ntt.predict import postprocess as pp
from ntt.predict.prompts import guided_points
from ntt.stages import Candidates, Encoded, MaskPool, Proposals  # noqa: F401 - also reached here
from ntt.timing import NullTimer
from ntt.types import Instances

log = logging.getLogger(__name__)


class DecoderOutOfMemory(torch.OutOfMemoryError):
    """Out of memory in SAM2's mask decoder: fewer prompts per decoder call may fit."""


class Predictor:
    """Every instance of the bank's classes in a batch of target images.

    Example:
        >>> bank = MemoryBank.load("bank.safetensors")
        >>> instances = Predictor(bank, get_config("paper")).predict([load_image("a.jpg")])[0]
    """

    def __init__(self, bank: MemoryBank, cfg: NTTConfig, proposer=None, encoder=None, timer=None):
        """Load (or take) the models and check that the bank was built with the same encoder.

        Args:
            proposer: a model to use instead of the configured SAM2 (the interface of ``SAM2Proposer``; used by
                tests and for other backbones).
            encoder: the same for DINOv2 (the interface of ``DinoV2Encoder``).
            timer: a ``StageTimer`` to charge each stage's time to (benchmarks).
        """
        self.cfg = cfg.validate()
        self.device = resolve_device(cfg.model.device)
        if self.device.type == "cpu" and cfg.model.dtype == "bf16":
            log.warning("bf16 on a CPU is often slower than fp32 (many have no native bf16): consider the lite preset")
        self.dinov2 = encoder if encoder is not None else get_dinov2(cfg.model)
        bank.check_encoder(encoder_identity(self.dinov2, cfg.model))
        self.sam = proposer if proposer is not None else get_sam2(cfg.model, cfg.segment.add_no_mem_embed)
        self._use_bank(bank)
        seg = cfg.segment
        side = seg.points_per_side if seg.prompt_mode == "grid" else seg.guided_grid
        self.grid = point_grid(side, self.sam.image_size).to(self.device) if side > 0 else None
        self.timer = timer or NullTimer()
        self.last_counts: list[dict[str, int]] = []  # per image of the last ``predict``
        self.warned_not_finite = False  # SAM2 gave NaN / Inf predicted IoUs: said once, not per image

    def with_bank(self, bank: MemoryBank) -> Predictor:
        """This predictor (same models, settings and timer) with another bank of the same encoder; per-class
        thresholds of classes that bank lacks are dropped. Cheap: for re-matching cached pools."""
        bank.check_encoder(self.bank.encoder)
        other = copy.copy(self)
        kept = {k: v for k, v in self.cfg.segment.class_thresholds.items() if k in bank.class_names}
        other.cfg = derive(self.cfg, segment={"class_thresholds": kept})
        other._use_bank(bank)
        return other

    def _use_bank(self, bank: MemoryBank) -> None:
        """Everything that depends on the bank (and the settings' thresholds), on the device."""
        self.bank = bank
        self.prototypes = torch.from_numpy(bank.class_prototypes()).to(self.device)
        self.class_ids = torch.tensor(bank.class_ids, dtype=torch.int64)
        self.negatives = self._negatives()
        self.shots = _positive_shots(bank, self.device)
        self.class_thresh = self._class_thresholds()

    def _negatives(self) -> pp.Negatives | None:
        units, classes = self.bank.negative_prototypes()
        if not len(classes):
            return None  # scores exactly as without the feature
        as_tensor = lambda a: torch.from_numpy(a).to(self.device)  # noqa: E731
        return pp.Negatives(as_tensor(units), as_tensor(classes), self.cfg.segment.negative_sigma)

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
    def predict(
        self,
        images: Sequence[np.ndarray],
        prepared: Sequence[torch.Tensor] | None = None,
        points_chunk: int | None = None,
    ) -> list[Instances]:
        """Instances for RGB uint8 images (H, W, 3), run as one batch through the encoders: ``mask_pools`` then
        ``finish`` per image (their counts are kept in ``last_counts``).

        Args:
            prepared: the images already through ``prepare`` (a loader did it ahead), else done here.
            points_chunk: prompts per decoder call (default ``segment.points_batch_size``); no effect on results.
        """
        pools = self.mask_pools(images, prepared, points_chunk)
        done = [self.finish(pool, image.shape[:2]) for pool, image in zip(pools, images)]
        self.last_counts = [counts for _, counts in done]
        return [instances for instances, _ in done]

    @torch.no_grad()
    def mask_pools(
        self,
        images: Sequence[np.ndarray],
        prepared: Sequence[torch.Tensor] | None = None,
        points_chunk: int | None = None,
    ) -> list[MaskPool]:
        """encode -> propose -> pool_masks for a batch (arguments as ``predict``)."""
        if not images:
            return []
        if prepared is None:
            with self.timer("resize"):
                prepared = [self.prepare(img) for img in images]
        return self.pools_from(self.encode(prepared), points_chunk)

    @torch.no_grad()
    def pools_from(self, encoded: Encoded, points_chunk: int | None = None) -> list[MaskPool]:
        """propose -> pool_masks for a batch already through the encoders (none for a batch of no images)."""
        if not len(encoded):
            return []
        proposals = self.propose(encoded, points_chunk or self.cfg.segment.points_batch_size)
        return [self.pool_masks(props, tokens) for props, tokens in zip(proposals, encoded.tokens)]

    @torch.no_grad()
    def finish(self, pool: MaskPool, size: tuple[int, int]) -> tuple[Instances, dict[str, int]]:
        """match -> select for one image of (H, W) ``size``: its instances and how many candidates each filter left."""
        cand = self.match(pool)
        return self.select(cand, size), cand.counts

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """RGB uint8 (H, W, 3) -> float (3, S, S): SAM2's input (thread-safe: loaders call it ahead)."""
        return self.sam.prepare(image)

    def encode(self, prepared: Sequence[torch.Tensor]) -> Encoded:
        """Both encoders on a batch of prepared images (float (3, S, S) each); no images give
        ``Encoded.empty()``."""
        if not len(prepared):
            return Encoded.empty()
        sam_in = torch.stack(list(prepared)).to(self.device, non_blocking=True)
        with autocast(self.cfg.model):
            with self.timer("sam2_encoder"):
                feats = self.sam.encode(sam_in)
            with self.timer("dinov2"):
                tokens = self.dinov2(self.dinov2.resize(sam_in)).float()
        return Encoded(feats, tokens)

    def propose(self, encoded: Encoded, points_chunk: int) -> list[Proposals]:
        """SAM2 masks for every prompt of every image (grid, or DINOv2-guided points plus a coarse grid).

        Raises:
            DecoderOutOfMemory: the decoder ran out of memory (a smaller ``points_chunk`` may fit).
        """
        with self.timer("decoder"):
            prompts = [self._prompts(t) for t in encoded.tokens]  # fp32: guided prompts rank close similarities
            try:
                with autocast(self.cfg.model):
                    decoded = self.sam.decode_batch(encoded.features, prompts, points_chunk, self.cfg.model.compile)
            except torch.OutOfMemoryError as err:
                raise DecoderOutOfMemory(str(err)) from err
        return [Proposals(logits, iou) for logits, iou in decoded]

    def _prompts(self, tokens: torch.Tensor) -> torch.Tensor:
        seg = self.cfg.segment
        if seg.prompt_mode == "grid":
            return self.grid
        guided = guided_points(tokens, self.prototypes, seg.guided_points, self.sam.image_size)
        return guided if self.grid is None else torch.cat([guided, self.grid])

    def pool_masks(self, proposals: Proposals, tokens: torch.Tensor) -> MaskPool:
        """Keep one image's non-empty masks whose predicted IoU passes the filter, with their mask-pooled DINOv2
        features and boxes: everything the bank does not change. ``tokens``: float (g, g, D) of the image."""
        counts = {"prompts": len(proposals.iou)}
        self._warn_if_not_finite(proposals.iou)
        with self.timer("matching"):
            keep = proposals.iou > self.cfg.segment.pred_iou_thresh
            logits, iou = proposals.logits[keep].float(), proposals.iou[keep]
            counts["iou_filter"] = len(iou)
            masks = logits > 0
            nonempty = masks.flatten(1).any(1)
            logits, iou, masks = logits[nonempty], iou[nonempty], masks[nonempty]
            counts["nonempty"] = len(iou)
            embeddings = pp.pool_mask_features(masks, tokens)
        with self.timer("nms_merge"):
            boxes = mask_boxes(masks)
        return MaskPool(logits, iou, embeddings, boxes, counts)

    def _warn_if_not_finite(self, iou: torch.Tensor) -> None:
        """Warn once when SAM2's predicted IoUs (float (P,)) hold NaN / Inf: those masks fail every filter, so an
        image would get no detections with no word why. The IoU vector is a cheap proxy for the logits."""
        if self.warned_not_finite or bool(torch.isfinite(iou).all()):
            return
        self.warned_not_finite = True
        bad = int((~torch.isfinite(iou)).sum())
        log.warning(
            "SAM2 predicted non-finite (NaN or Inf) mask qualities for %d of %d prompts of an image: those masks are "
            "dropped, so images may get no detections. Broken SAM2 weights, or a numeric overflow (under bf16: try "
            "--dtype fp32)? Said once per run.",
            bad,
            len(iou),
        )

    def match(self, pool: MaskPool) -> Candidates:
        """Give each mask the class of its best-matching prototype and keep the best of overlapping same-class
        boxes (NMS, ranked by predicted IoU), then those with a positive score."""
        seg = self.cfg.segment
        with self.timer("matching"):
            scores, labels = pp.match_classes(pool.embeddings, self.prototypes, self.negatives)
        cand = Candidates(pool.logits, pool.iou, pool.embeddings, scores, labels, dict(pool.counts))
        with self.timer("nms_merge"):
            keep = pp.class_aware_nms(pool.boxes, pool.iou, labels, seg.nms_thresh, seg.nms_max_keep)
        cand = cand.take(keep)
        cand.counts["nms"] = len(keep)
        cand = cand.take(cand.scores > 0)
        cand.counts["positive_score"] = len(cand.scores)
        return cand

    def select(self, cand: Candidates, size: tuple[int, int]) -> Instances:
        """Soft-merge the scores, keep the best ``max_instances`` above the thresholds, and bring their masks to
        the image's (H, W) (cropped to their boxes)."""
        with self.timer("nms_merge"):
            cand, scores, keep = self._merge_and_select(cand, size)
        with self.timer("full_res_masks"):
            found = pp.logits_to_crops(cand.logits[keep], size)
        kept = [i for i, f in enumerate(found) if f is not None]
        keep = keep[kept]
        cand.counts["final"] = len(keep)
        chosen = cand.take(keep)
        return Instances(
            boxes=np.array([found[i][0] for i in kept], np.float32).reshape(-1, 4),
            crops=[found[i][1] for i in kept],
            scores=scores[keep].float().cpu().numpy().clip(0.0, 1.0),
            class_ids=self.class_ids[cand.labels[keep].cpu()].numpy(),
            image_size=(int(size[0]), int(size[1])),
            details=self.explain(chosen),
            embeddings=chosen.embeddings.float().cpu().numpy(),  # kept for maps and search (no extra pass)
        )

    def explain(self, cand: Candidates) -> dict[str, np.ndarray]:
        """Why each candidate has its class (``Instances.details``): its nearest positive shot of that class
        and the cosines behind the score."""
        emb, labels = cand.embeddings.float(), cand.labels
        rows = torch.arange(len(labels), device=labels.device)
        to_classes = (emb @ self.prototypes.T).clamp_min(0.0)
        won = to_classes[rows, labels]
        others = to_classes.scatter(1, labels[:, None], -1.0).amax(1).clamp_min(0.0) if to_classes.shape[1] > 1 else 0
        to_shots = (emb @ self.shots.units.T).masked_fill(self.shots.classes[None] != labels[:, None], -2.0)
        shot_cos, nearest = to_shots.max(1)  # every class has a positive shot
        negative = self.negatives.best(emb, len(self.prototypes))[rows, labels] if self.negatives else won * 0
        details = {
            "shot": self.shots.index[nearest],
            "shot_cosine": shot_cos,
            "class_cosine": won,
            "margin": won - others,
            "negative_cosine": negative,
            "sam_iou": cand.iou.float(),
        }
        return {k: v.cpu().numpy().astype(np.int64 if k == "shot" else np.float32) for k, v in details.items()}

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


@dataclass
class _Shots:
    """A bank's positive shots on the device: ``units`` float (S, D) unit-norm features, ``classes`` int64 (S,)
    class indices, ``index`` int64 (S,) positions in the bank's ``shots``."""

    units: torch.Tensor
    classes: torch.Tensor
    index: torch.Tensor


def _positive_shots(bank: MemoryBank, device: torch.device) -> _Shots:
    positive = np.flatnonzero(~bank.negative)
    feats = torch.from_numpy(bank.shot_features[positive]).to(device).float()
    order = {cid: i for i, cid in enumerate(bank.class_ids)}
    classes = torch.tensor([order[int(c)] for c in bank.shot_class_ids[positive]], dtype=torch.int64, device=device)
    return _Shots(F.normalize(feats, dim=1), classes, torch.from_numpy(positive).to(device))
