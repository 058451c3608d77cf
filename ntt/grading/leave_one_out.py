"""Where a bank without one of its shots can predict that shot's class: a cheap test that never misses one.

Grading measures a shot k of class c by class c's AP50 with the bank minus k. On one image segmented with bank
B (in grading: the bank minus the image's own shots), the variant B' = B - k differs from B only in c's
prototype (or lacks c when k was its last positive shot). Only B''s class-c predictions there count for c's
AP50, so finishing the image with B' can be skipped where B' certainly predicts nothing of class c:

1. c has no positive shot left in B': there is no class c.
2. No mask can be labelled c with a score that passes c's threshold. B''s score for c is the mask's embedding
   against c's new prototype, decayed by c's negatives (as ``postprocess.match_classes`` does); it must reach
   the mask's best score for another class (those do not change: the other prototypes and all negatives are
   B's) and the threshold. NMS, the positive-score filter, the soft merge (which only lowers scores) and the
   selection can only remove more.

Scores are recomputed here in float32 as the predictor does, for all shots at once, with a margin ``EPS`` on
every comparison: a rounding difference can only turn "certainly nothing" into "maybe". A mask with an
all-zero embedding (no feature under it) scores exactly 0 for every class with any bank: never a candidate.
"""

from __future__ import annotations

import numpy as np
import torch

from ntt.bank.memory import MemoryBank
from ntt.predict import postprocess as pp
from ntt.predict.predictor import MaskPool, Predictor

EPS = 1e-3  # cosine units: far above float32 rounding (~1e-6), far below score differences that matter


@torch.no_grad()
def may_predict_own_class(predictor: Predictor, pool: MaskPool) -> np.ndarray:
    """Per shot of ``predictor.bank`` (B): whether B without that shot may predict the shot's class on the
    image of ``pool``.

    Returns:
        bool (S,) over B's shots; False for negative shots (they are not measured).
    """
    bank = predictor.bank
    out = np.zeros(len(bank.shots), bool)
    emb = pool.embeddings.float()
    protos = _variant_prototypes(bank)
    if not len(emb) or not protos:
        return out
    seg, negatives = predictor.cfg.segment, predictor.negatives
    scores = _class_scores(emb, predictor.prototypes, negatives)  # float (N, C) with B
    negative = negatives.best(emb, scores.shape[1]) if negatives is not None else None
    alive = emb.abs().amax(1) > 0
    index = {cid: i for i, cid in enumerate(bank.class_ids)}
    shots, others = list(protos), {}
    own_all = (emb @ torch.from_numpy(np.stack([protos[k] for k in shots])).to(emb.device).T).clamp_min(0.0)
    for column, k in enumerate(shots):
        c = index[int(bank.shot_class_ids[k])]
        own = own_all[:, column]
        if negative is not None:
            own = own * torch.exp(-(negative[:, c] - own).clamp_min(0.0) / negatives.sigma)
        thresh = float(predictor.class_thresh[c]) if predictor.class_thresh is not None else seg.score_thresh
        if c not in others:
            others[c] = _best_other(scores, c)
        reach = alive & (own + EPS >= others[c]) & (own + EPS >= thresh)
        out[k] = bool(reach.any())
    return out


def _class_scores(emb: torch.Tensor, prototypes: torch.Tensor, negatives: pp.Negatives | None) -> torch.Tensor:
    """float (N, C): every mask's score for every class, as ``postprocess.match_classes`` computes them."""
    sims = (emb @ prototypes.T).clamp_min(0.0)
    if negatives is not None and len(negatives.classes):
        sims = sims * torch.exp(-(negatives.best(emb, sims.shape[1]) - sims).clamp_min(0.0) / negatives.sigma)
    return sims


def _best_other(scores: torch.Tensor, c: int) -> torch.Tensor:
    """float (N,): each mask's best score for a class other than index ``c`` (-inf with one class)."""
    if scores.shape[1] == 1:
        return torch.full_like(scores[:, 0], -float("inf"))
    return torch.cat([scores[:, :c], scores[:, c + 1 :]], dim=1).amax(1)


def _variant_prototypes(bank: MemoryBank) -> dict[int, np.ndarray]:
    """Per positive shot k whose class keeps a positive shot without it: float32 (D,) unit-norm prototype of
    its class without k (``MemoryBank.class_prototypes`` of the bank without k, up to rounding)."""
    positive = ~bank.negative
    feats = bank.shot_features.astype(np.float64)
    out = {}
    for cid in np.unique(bank.shot_class_ids[positive]):
        members = np.flatnonzero(positive & (bank.shot_class_ids == cid))
        if len(members) < 2:
            continue
        total = feats[members].sum(0)
        for k in members:
            mean = (total - feats[k]) / (len(members) - 1)
            out[int(k)] = (mean / max(np.linalg.norm(mean), 1e-12)).astype(np.float32)
    return out
