"""Benchmark: per-stage timings, throughput, memory and filter counts on real images; optionally a faithful
reference mode and the configured (fast) mode side by side on the same images, with their agreement."""

from __future__ import annotations

import resource
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ntt.bank.memory import MemoryBank
from ntt.config import NTTConfig, derive
from ntt.io import coco
from ntt.io.images import load_image
from ntt.models import encoder_identity, get_dinov2, resolve_device
from ntt.predict.segmenter import Segmenter
from ntt.timing import StageTimer
from ntt.types import Instances

STAGES = ("load", "resize", "sam2_encoder", "dinov2", "decoder", "matching", "nms_merge", "full_res_masks", "export")


@dataclass
class RunReport:
    """What one benchmark mode measured."""

    mode: str
    images: int
    seconds: float
    stage_ms: dict[str, float]
    counts: dict[str, float]
    peak_gpu_mb: float | None
    peak_host_mb: float
    batch_size: int = 1
    warmup_s: float = 0.0  # model loading (when not cached), warm-up images, compilation
    instances: list[Instances] = field(repr=False, default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "images": self.images,
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images_per_s, 3),
            "ms_per_image": {k: round(v, 1) for k, v in self.stage_ms.items()},
            "mean_candidates": {k: round(v, 1) for k, v in self.counts.items()},
            "peak_gpu_mb": self.peak_gpu_mb,
            "peak_host_mb": round(self.peak_host_mb, 1),
            "batch_size": self.batch_size,
            "warmup_s": round(self.warmup_s, 1),
        }


def random_bank(cfg: NTTConfig, classes: int = 20, seed: int = 0) -> MemoryBank:
    """A bank of random prototypes for the configured encoder: timing does not depend on its content."""
    enc = get_dinov2(cfg.model)
    rng = np.random.default_rng(seed)
    ids = list(range(1, classes + 1))
    return MemoryBank(
        classes=[{"id": i, "name": f"class_{i}"} for i in ids],
        shot_features=rng.standard_normal((classes, enc.dim)).astype(np.float32),
        shot_class_ids=np.array(ids),
        shots=[{"annotation_id": i} for i in ids],
        encoder=encoder_identity(enc, cfg.model),
    )


def force_candidates(cfg: NTTConfig) -> NTTConfig:
    """Worst case: every decoded mask passes the IoU filter and NMS (random weights filter differently)."""
    return derive(cfg, segment={"pred_iou_thresh": -1.0, "nms_thresh": 1.0})


def reference_config(cfg: NTTConfig) -> NTTConfig:
    """The research code's way of running: fp32, batch 1, prompts decoded 256 at a time, full-res merge,
    images loaded between batches, no compiler."""
    return derive(
        cfg,
        model={"dtype": "fp32", "compile": False},
        segment={"batch_size": 1, "points_batch_size": 256, "merge_resolution": "full", "loader_workers": 0},
    )


def run(cfg: NTTConfig, bank: MemoryBank, paths: list[Path], mode: str, warmup: bool = True, cache=None) -> RunReport:
    """Segment ``paths`` the way ``ntt segment`` does (batches, images loaded ahead, the candidate ``cache`` when
    given) and measure every stage."""
    device = resolve_device(cfg.model.device)
    cuda = device.type == "cuda"
    timer = StageTimer(sync=torch.cuda.synchronize if cuda else None)
    started = time.perf_counter()
    seg = Segmenter(bank, cfg, timer=timer, cache=cache)
    if warmup:  # model load, kernel selection, compilation, allocator; sizes an automatic batch
        first = load_image(paths[0])
        list(seg.run([first]))
        if seg.batch_size > 1:  # a full batch: chunks that span images compile their own graph
            list(seg.run([first] * min(seg.batch_size, len(paths))))
    warmup_s = time.perf_counter() - started
    timer.seconds.clear()
    counts: Counter[str] = Counter()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    instances: list[Instances] = []
    start = time.perf_counter()
    for k, res in enumerate(seg.run(paths)):
        if res.instances is None:
            raise ValueError(f"benchmark image {res.source} could not be segmented: {res.error}")
        counts.update(res.counts)
        with timer("export"):
            coco.instances_to_results(k, res.instances)
        instances.append(res.instances)
    seconds = time.perf_counter() - start
    n = len(paths)
    return RunReport(
        mode=mode,
        images=n,
        seconds=seconds,
        stage_ms={s: 1000 * timer.seconds.get(s, 0.0) / n for s in STAGES},
        counts={k: v / n for k, v in counts.items()},
        peak_gpu_mb=torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
        peak_host_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        batch_size=seg.batch_size,
        warmup_s=warmup_s,
        instances=instances,
    )


def resegment(cfg: NTTConfig, bank: MemoryBank, paths: list[Path], store) -> tuple[list[RunReport], dict[str, float]]:
    """What the candidate cache is worth: a fresh run without it, the run that fills ``store``, the same images
    from the cache with the same bank and after a bank change (a quarter of its classes removed), and a fresh run
    with the changed bank. Returns the reports and the summary: ms per image fresh and from the cache, their
    ratio, cache bytes per image, and the agreement of the cached runs with fresh ones (``agreement``)."""
    changed = bank.remove(class_names=bank.class_names[: max(1, len(bank.classes) // 4)])
    fresh = run(cfg, bank, paths, "fresh")
    filling = run(cfg, bank, paths, "fresh+fill", warmup=False, cache=store)
    same = run(cfg, bank, paths, "cache", warmup=False, cache=store)
    cached = run(cfg, changed, paths, "cache,new bank", warmup=False, cache=store)
    truth = run(cfg, changed, paths, "fresh,new bank", warmup=False)
    n = len(paths)
    summary = {
        "fresh_ms_per_image": 1000 * fresh.seconds / n,
        "fill_ms_per_image": 1000 * filling.seconds / n,
        "cached_ms_per_image": 1000 * cached.seconds / n,
        "speedup": fresh.seconds / max(cached.seconds, 1e-9),
        "cache_bytes_per_image": store.info()["bytes"] / n,
        "agreement_same_bank": agreement(same.instances, fresh.instances),
        "agreement_changed_bank": agreement(cached.instances, truth.instances),
    }
    return [fresh, filling, same, cached, truth], summary


def agreement(fast: list[Instances], ref: list[Instances], iou: float = 0.9) -> float:
    """Share of the reference detections matched by a fast detection of the same class with mask IoU >= iou
    (greedy, per image); 1.0 when the reference found nothing."""
    matched = total = 0
    for a, b in zip(fast, ref):
        total += len(b)
        used: set[int] = set()
        for j in range(len(b)):
            mask_b = b.mask(j)
            for i in range(len(a)):
                if i in used or a.class_ids[i] != b.class_ids[j]:
                    continue
                mask_a = a.mask(i)
                union = np.logical_or(mask_a, mask_b).sum()
                if union and np.logical_and(mask_a, mask_b).sum() / union >= iou:
                    used.add(i)
                    matched += 1
                    break
    return matched / total if total else 1.0


def format_report(reports: list[RunReport]) -> str:
    """A fixed-width table: one column per mode."""
    lines = [f"{'':22}" + "".join(f"{r.mode:>17}" for r in reports)]
    lines.append(f"{'images/s':22}" + "".join(f"{r.images_per_s:17.3f}" for r in reports))
    for stage in STAGES:
        lines.append(f"{stage + ' (ms/img)':22}" + "".join(f"{r.stage_ms[stage]:17.1f}" for r in reports))
    for key in ("prompts", "iou_filter", "nonempty", "nms", "positive_score", "final"):
        lines.append(f"{key + ' (mean)':22}" + "".join(f"{r.counts.get(key, 0):17.1f}" for r in reports))
    lines.append(f"{'batch size':22}" + "".join(f"{r.batch_size:17d}" for r in reports))
    lines.append(f"{'warm-up s':22}" + "".join(f"{r.warmup_s:17.1f}" for r in reports))
    gpu = ["-" if r.peak_gpu_mb is None else f"{r.peak_gpu_mb:.0f}" for r in reports]
    lines.append(f"{'peak GPU MB':22}" + "".join(f"{g:>17}" for g in gpu))
    lines.append(f"{'peak host MB':22}" + "".join(f"{r.peak_host_mb:17.0f}" for r in reports))
    return "\n".join(lines)
