"""Finishing an image again with a bank that differs in one class's shots: only the classes that changed are
soft-merged again.

``Predictor.finish`` is match (each mask's best class and score, NMS within each class ranked by SAM's IoU,
positive scores) then select (the soft merge within each class at full resolution, the best ``max_instances``
over the thresholds, their masks at full resolution). Grading finishes a reference image with its bank B and
then many times with B minus one shot. Matching again is cheap; the soft merge is not, and a class whose
candidates (pool indices in rank order) are the same under both banks has the same soft-merge decays as long
as the merge runs at the same resolution (it depends on the number of candidates). So the decays of unchanged
classes are kept from B, the changed classes are merged again, and the selection runs over all candidates.

Every number comes from the predictor's own functions (``postprocess``) on the same inputs, in the same
shapes where rounding could depend on them, and pixel counts are exact integers whichever masks they were
counted with, so the result is the predictor's, not an approximation (tests compare them on random pools).
In case ``Predictor`` changes without this module following it, ``Refinisher(..., verify=True)`` compares
its finish with bank B with ``Predictor.finish``'s; if they differ it uses ``Predictor.finish`` throughout.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from ntt.predict import postprocess as pp
from ntt.predict.predictor import MaskPool, Predictor
from ntt.types import Instances

log = logging.getLogger(__name__)

CROPS_BUDGET = 128 * 2**20  # bytes of full-resolution crops kept for an image's next variants
MASKS_BUDGET = 128 * 2**20  # bytes of soft-merge masks kept for an image's next variants


@dataclass
class _Candidates:
    """An image's candidates under one bank, as ``Predictor.match`` leaves them: ``index`` int64 (n,) pool
    indices in rank order, ``labels`` int64 (n,) class indices, ``scores`` float (n,)."""

    index: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor


@dataclass
class _Merged:
    """One class's soft merge: its candidates' pool indices in rank order (``given``), those left once masks
    empty at full resolution are dropped (``kept``) and their decays (float (k,))."""

    given: torch.Tensor
    kept: torch.Tensor
    decay: torch.Tensor


class Refinisher:
    """An image's pool finished with a bank B (``found``: its instances, as ``Predictor.finish`` gives them), to
    finish again with banks that differ from B in one class.

    Args:
        predictor: the predictor with bank B; ``pool`` the image's mask pool; ``size`` its (H, W).
        verify: also finish with ``Predictor.finish`` and compare (``trusted``: they agree).
    """

    @torch.no_grad()
    def __init__(self, predictor: Predictor, pool: MaskPool, size: tuple[int, int], verify: bool = True):
        self.pool, self.size = pool, (int(size[0]), int(size[1]))
        self.crops: dict[int, tuple | None] = {}  # pool index -> its full-resolution box and crop (or None)
        self.crop_bytes = 0
        self.class_ids = list(predictor.bank.class_ids)
        self.cand = _candidates(predictor, pool)
        self.overlaps = _Overlaps(pool, _merge_at(predictor, len(self.cand.index), self.size))
        self.merge_at = self.overlaps.merge_at
        self.merged = {
            label: _merge(predictor, self.overlaps, label, self.cand.index[self.cand.labels == label], self.size)
            for label in self.cand.labels.unique().tolist()
        }
        self.found, self.trusted = self._select(predictor, self.cand, self.merged, None), True
        if verify:
            theirs = predictor.finish(pool, self.size)[0]
            self.trusted = same_instances(self.found, theirs)
            if not self.trusted:
                log.warning("grading: finishing every bank variant in full (Predictor.finish not reproduced here)")
                self.found = theirs

    @torch.no_grad()
    def finish(self, predictor: Predictor, class_id: int) -> Instances:
        """The image's instances of ``class_id`` (a bank class id) as ``predictor.finish`` gives them;
        ``predictor``'s bank has B's classes, in B's order, and differs from B in ``class_id``'s shots only."""
        if not self.trusted or list(predictor.bank.class_ids) != self.class_ids:
            found = predictor.finish(self.pool, self.size)[0]
            return found[found.class_ids == class_id]
        cand = _candidates(predictor, self.pool)
        merge_at = _merge_at(predictor, len(cand.index), self.size)
        if merge_at != self.overlaps.merge_at:  # another resolution: other masks and counts
            self.overlaps = _Overlaps(self.pool, merge_at)
        merged = {}
        for label in cand.labels.unique().tolist():
            given = cand.index[cand.labels == label]
            before = self.merged.get(label)
            same = before is not None and merge_at == self.merge_at and torch.equal(before.given, given)
            merged[label] = before if same else _merge(predictor, self.overlaps, label, given, self.size)
        return self._select(predictor, cand, merged, self.class_ids.index(class_id))

    def _crops(self, index: list[int]) -> list:
        """``postprocess.logits_to_crops`` of these pool masks (each mask's own: the same in any batch), kept
        for the next variants while they fit in ``CROPS_BUDGET`` bytes."""
        missing = [i for i in dict.fromkeys(index) if i not in self.crops]
        made = dict(zip(missing, pp.logits_to_crops(self.pool.logits[missing], self.size))) if missing else {}
        for i, found in made.items():
            size = 0 if found is None else found[1].nbytes
            if self.crop_bytes + size <= CROPS_BUDGET:
                self.crops[i], self.crop_bytes = found, self.crop_bytes + size
        return [made[i] if i in made else self.crops[i] for i in index]

    def _select(self, predictor: Predictor, cand: _Candidates, merged: dict, only: int | None) -> Instances:
        """``Predictor.select`` over the candidates with these merges: instances of class index ``only`` (all
        with None)."""
        seg = predictor.cfg.segment
        n = len(self.pool.iou)
        alive = torch.zeros(n, dtype=torch.bool, device=cand.index.device)
        decay = torch.zeros(n, dtype=cand.scores.dtype, device=cand.index.device)
        for m in merged.values():
            alive[m.kept] = True
            decay[m.kept] = m.decay
        live = alive[cand.index]  # Predictor drops masks empty at full resolution before it selects
        index, labels, scores = cand.index[live], cand.labels[live], cand.scores[live]
        if seg.soft_merge and len(scores):
            scores = pp.apply_decay(scores, decay[index], seg.soft_merge_exponent)  # all at once, as select
        keep = pp.select_top(scores, labels, seg.max_instances, seg.score_thresh, predictor.class_thresh)
        if only is not None:
            keep = keep[labels[keep] == only]
        found = self._crops(index[keep].tolist())
        kept = [i for i, f in enumerate(found) if f is not None]
        keep = keep[kept]
        return Instances(
            boxes=np.array([found[i][0] for i in kept], np.float32).reshape(-1, 4),
            crops=[found[i][1] for i in kept],
            scores=scores[keep].float().cpu().numpy().clip(0.0, 1.0),
            class_ids=predictor.class_ids[labels[keep].cpu()].numpy(),
            image_size=self.size,
        )


def _candidates(predictor: Predictor, pool: MaskPool) -> _Candidates:
    """``Predictor.match``'s candidates, with their pool indices."""
    seg = predictor.cfg.segment
    scores, labels = pp.match_classes(pool.embeddings, predictor.prototypes, predictor.negatives)
    keep = pp.class_aware_nms(pool.boxes, pool.iou, labels, seg.nms_thresh, seg.nms_max_keep)
    keep = keep[scores[keep] > 0]
    return _Candidates(keep, labels[keep], scores[keep])


def _merge_at(predictor: Predictor, candidates: int, size: tuple[int, int]) -> tuple[int, int] | None:
    """The soft merge's mask resolution for this many candidates (None: the low-res logits' own grid)."""
    if predictor.cfg.segment.merge_resolution == "full" and candidates:
        return pp.merge_size(candidates, size)
    return None


class _Overlaps:
    """An image's soft-merge masks at one resolution (``merge_at``; None: the low-res grid) and their pixel
    counts, kept across bank variants: each pair's intersection once computed (exact integers; int64 (N, N)
    over the pool, -1 where not yet), and the masks while they fit in ``MASKS_BUDGET`` bytes."""

    def __init__(self, pool: MaskPool, merge_at: tuple[int, int] | None):
        self.pool, self.merge_at = pool, merge_at
        n = len(pool.iou)
        self.inter = torch.full((n, n), -1, dtype=torch.int64, device=pool.iou.device)
        self.masks: dict[int, torch.Tensor] = {}
        self.bytes = 0

    def areas(self, index: torch.Tensor) -> torch.Tensor:
        """int64 (k,): the pixel counts of these pool masks."""
        diagonal = self.inter[index, index]
        unknown = index[diagonal < 0]
        if len(unknown):
            self._count(unknown, unknown)
        return self.inter[index, index]

    def counts(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``postprocess.mask_intersections`` of these pool masks (in this order): float (k, k), float (k,)."""
        block = self.inter[index][:, index]
        fresh = index[(block < 0).any(1)]
        if len(fresh):
            self._count(fresh, index)
            block = self.inter[index][:, index]
        return block.double().float(), torch.diagonal(block).double().float()

    def _count(self, rows: torch.Tensor, cols: torch.Tensor, chunk: int = 1 << 16) -> None:
        """Intersections of masks ``rows`` with masks ``cols``, as ``mask_intersections`` counts them."""
        a, b = self._masks(rows.tolist()).flatten(1), self._masks(cols.tolist()).flatten(1)
        inter = torch.zeros(len(a), len(b), dtype=torch.float64, device=a.device)
        for start in range(0, a.shape[1], chunk):
            inter += (a[:, start : start + chunk].float() @ b[:, start : start + chunk].float().T).double()
        counts = inter.round().long()
        self.inter[rows[:, None], cols[None, :]] = counts
        self.inter[cols[:, None], rows[None, :]] = counts.T

    def _masks(self, index: list[int]) -> torch.Tensor:
        """bool (k, h, w): the merge masks of these pool masks, as ``Predictor`` makes them (each on its own)."""
        missing = [i for i in dict.fromkeys(index) if i not in self.masks]
        made = {}
        if missing:
            logits = self.pool.logits[missing]
            masks = logits > 0 if self.merge_at is None else pp.upsample_logits(logits, self.merge_at)
            made = dict(zip(missing, masks))
            for i, mask in made.items():
                if self.bytes + mask.numel() <= MASKS_BUDGET:
                    self.masks[i], self.bytes = mask, self.bytes + mask.numel()
        return torch.stack([made[i] if i in made else self.masks[i] for i in index])


def _merge(predictor: Predictor, overlaps: _Overlaps, label: int, given: torch.Tensor, size) -> _Merged:
    """The soft merge of class index ``label``'s candidates (pool indices ``given``, in rank order), as
    ``Predictor._merge_and_select`` and ``_decay`` do it for that class."""
    kept = given
    if overlaps.merge_at == size:  # truly empty at full resolution: dropped before the selection
        kept = given[overlaps.areas(given) > 0]
    decay = torch.zeros(len(kept), dtype=torch.float32, device=given.device)
    if predictor.cfg.segment.soft_merge and len(kept):
        inter, areas = overlaps.counts(kept)
        labels = torch.full((len(kept),), label, dtype=torch.int64, device=given.device)
        decay = pp.soft_merge_decay(inter, areas, labels, overlaps.pool.embeddings[kept])
    return _Merged(given, kept, decay)


def same_instances(a: Instances, b: Instances) -> bool:
    """Whether two images' instances are identical (boxes, masks, scores, classes), bit for bit."""
    return (
        len(a) == len(b)
        and np.array_equal(a.boxes, b.boxes)
        and np.array_equal(a.scores, b.scores)
        and np.array_equal(a.class_ids, b.class_ids)
        and all(np.array_equal(x, y) for x, y in zip(a.crops, b.crops))
    )
