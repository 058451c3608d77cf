"""Building a memory bank from reference instances (NTT's "fill memory" + "postprocess memory")."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ntt.bank.memory import MemoryBank
from ntt.config import NTTConfig
from ntt.geometry import context_crop_box, mask_tight_box_xywh, upsample_logits
from ntt.io.images import ImageLoadError, load_image
from ntt.models import autocast, encoder_identity, get_dinov2, get_sam2, resolve_device
from ntt.steps import Step, Steps, drive
from ntt.types import InvalidReferenceError, Progress, Reference

log = logging.getLogger(__name__)


def build_bank(
    references: Sequence[Reference],
    cfg: NTTConfig,
    progress: Progress | None = None,
    chunk: int = 8,
    encoder=None,
    proposer=None,
) -> MemoryBank:
    """Encode references into a memory bank (in memory: ``bank.save(path)`` writes it; ``ntt bank build`` does both
    from a COCO file, and ``ntt.fo.build_bank`` builds one from a dataset's references and stores it by name).

    Per shot: the square crop with ``cfg.bank.context_ratio`` context around its box, resized to the
    DINOv2 input size (image bicubic, mask bilinear, so the mask is soft), DINOv2 patch tokens, and the
    mean of the tokens weighted by the soft mask resized (nearest) to the patch grid. Box-only references
    (``mask=None``) get their mask from SAM2 prompted with the box.

    ``encoder`` / ``proposer`` replace the configured DINOv2 / SAM2 (same interfaces). ``progress(fraction,
    label)`` is called after each reference image (``build_bank_steps`` is the generator form).

    Raises:
        InvalidReferenceError: an unreadable image, an empty mask, a mask whose size differs from its
            image, or features that are not finite (broken weights); the message names the annotation.
    """
    return drive(build_bank_steps(references, cfg, chunk, encoder, proposer), progress)


def build_bank_steps(
    references: Sequence[Reference], cfg: NTTConfig, chunk: int = 8, encoder=None, proposer=None
) -> Steps[MemoryBank]:
    """``build_bank`` as a generator: yields a ``Step`` after each reference image, returns the bank."""
    if not references:
        raise InvalidReferenceError("no references given")
    check_class_names(references)
    cfg.validate()
    encoder = encoder if encoder is not None else get_dinov2(cfg.model)
    feats: list[np.ndarray] = []
    by_image = _group_by_image(references)
    done = 0
    for refs in by_image:
        image = _load(refs[0])
        masks = _reference_masks(refs, image, cfg, proposer)
        for start in range(0, len(refs), chunk):
            part = list(zip(refs[start : start + chunk], masks[start : start + chunk]))
            feats.extend(_encode_shots(part, image, encoder, cfg))
        done += len(refs)
        yield Step(done / len(references), "Encoding references")
    ordered = [r for refs in by_image for r in refs]
    return _assemble(ordered, np.stack(feats), cfg, encoder)


def _group_by_image(references: Sequence[Reference]) -> list[list[Reference]]:
    groups: dict[object, list[Reference]] = defaultdict(list)
    for ref in references:
        key = id(ref.image) if isinstance(ref.image, np.ndarray) else str(ref.image)
        groups[key].append(ref)
    return list(groups.values())


def _load(ref: Reference) -> np.ndarray:
    if isinstance(ref.image, np.ndarray):
        return ref.image
    try:
        return load_image(ref.image)
    except ImageLoadError as err:
        raise InvalidReferenceError(f"{ref.describe()}: {err}") from err


def _reference_masks(refs: list[Reference], image: np.ndarray, cfg: NTTConfig, proposer) -> list[np.ndarray]:
    h, w = image.shape[:2]
    masks: list[np.ndarray | None] = [None if r.mask is None else np.asarray(r.mask) > 0 for r in refs]
    box_only = [i for i, m in enumerate(masks) if m is None]
    if box_only:
        boxes = []
        for i in box_only:
            box = clip_box(refs[i].box, (h, w))
            if box is None:
                raise InvalidReferenceError(f"{refs[i].describe()}: box {refs[i].box} has no area inside the image")
            boxes.append(box)
        for i, mask in zip(box_only, masks_from_boxes(image, boxes, cfg, proposer)):
            masks[i] = mask
    for ref, mask in zip(refs, masks):
        if mask.shape != (h, w):
            raise InvalidReferenceError(
                f"{ref.describe()}: mask is {mask.shape[1]}x{mask.shape[0]} but the image is {w}x{h}"
            )
        if not mask.any():
            raise InvalidReferenceError(f"{ref.describe()}: mask is empty")
    return masks


def masks_from_boxes(
    image: np.ndarray, boxes_xywh: list[list[float]], cfg: NTTConfig, proposer=None
) -> list[np.ndarray]:
    """Full-resolution bool masks (H, W) for pixel xywh boxes, from SAM2 prompted with each box."""
    sam = proposer if proposer is not None else get_sam2(cfg.model, cfg.segment.add_no_mem_embed)
    device = resolve_device(cfg.model.device)
    h, w = image.shape[:2]
    s = sam.image_size
    xyxy = torch.tensor([[x, y, x + bw, y + bh] for x, y, bw, bh in boxes_xywh], dtype=torch.float32)
    xyxy = (xyxy * torch.tensor([s / w, s / h, s / w, s / h])).to(device)
    with autocast(cfg.model):
        feats = sam.encode(sam.prepare(image)[None].to(device))
        logits = sam.decode_boxes(feats, 0, xyxy)
    return list(upsample_logits(logits, (h, w)).cpu().numpy())


def _encode_shots(part, image: np.ndarray, encoder, cfg: NTTConfig) -> list[np.ndarray]:
    device = resolve_device(cfg.model.device)
    size = encoder.image_size
    crops, weights = [], []
    for ref, mask in part:
        # The mask is authoritative: a missing or broken box falls back to the mask's tight box.
        box = clip_box(ref.box, mask.shape) or mask_tight_box_xywh(mask)
        x1, y1, x2, y2 = context_crop_box(box, mask.shape, cfg.bank.context_ratio)
        crop = torch.tensor(image[y1:y2, x1:x2]).permute(2, 0, 1)[None].float() / 255.0
        crops.append(F.interpolate(crop, size=(size, size), mode="bicubic", align_corners=False))
        soft = torch.tensor(mask[y1:y2, x1:x2]).float()[None, None]
        soft = F.interpolate(soft, size=(size, size), mode="bilinear", align_corners=False)
        weights.append(patch_weights(soft, encoder.grid, ref))
    with autocast(cfg.model):
        tokens = encoder(torch.cat(crops).to(device)).float().cpu()  # (B, g, g, D)
    out = []
    for (ref, _), t, wgt in zip(part, tokens, weights):
        flat_w = wgt.reshape(-1, 1)
        out.append(_checked_feature(((t.reshape(-1, t.shape[-1]) * flat_w).sum(0) / flat_w.sum()).numpy(), ref))
    return out


def _checked_feature(feature: np.ndarray, ref: Reference) -> np.ndarray:
    """A shot prototype (float32 (D,)) that can be matched: finite and not all zero; a broken encoder (NaN weights,
    an overflow) must not make a bank that silently finds nothing."""
    if not np.isfinite(feature).all():
        raise InvalidReferenceError(f"{ref.describe()}: reference features are not finite: broken DINOv2 weights?")
    if not np.any(feature):
        raise InvalidReferenceError(f"{ref.describe()}: reference features are all zero: broken DINOv2 weights?")
    return feature


def patch_weights(soft_mask: torch.Tensor, grid: int, ref: Reference | None = None) -> torch.Tensor:
    """Patch-grid weights of a soft crop mask (1, 1, S, S): nearest resize to (grid, grid), as NTT.

    A mask so thin that nearest sampling misses it falls back to area averaging, so no shot ever gets
    zero total weight.
    """
    wgt = F.interpolate(soft_mask, size=(grid, grid), mode="nearest")[0, 0]
    if wgt.sum() <= 0:
        wgt = F.adaptive_avg_pool2d(soft_mask, (grid, grid))[0, 0]
        log.warning("%s: mask misses the patch grid's sample points; using area weights", _name(ref))
    if wgt.sum() <= 0:
        raise InvalidReferenceError(f"{_name(ref)}: mask is empty after cropping")
    return wgt


def clip_box(box, image_size: tuple[int, int]) -> list[float] | None:
    """A pixel xywh box clipped to the image; None when missing, not finite, or without area inside."""
    if box is None or len(box) != 4 or not np.all(np.isfinite(np.asarray(box, dtype=float))):
        return None
    h, w = image_size
    x1, y1 = max(0.0, float(box[0])), max(0.0, float(box[1]))
    x2, y2 = min(float(w), float(box[0]) + float(box[2])), min(float(h), float(box[1]) + float(box[3]))
    if x2 - x1 < 1 or y2 - y1 < 1:
        return None
    return [x1, y1, x2 - x1, y2 - y1]


def check_class_names(references: Sequence[Reference]) -> None:
    """One name per class id, and no two class names that differ only in case or spaces."""
    names: dict[int, str] = {}
    ids: dict[str, int] = {}
    spelled: dict[str, str] = {}
    for ref in references:
        cid, name = int(ref.class_id), ref.class_name
        if names.setdefault(cid, name) != name:
            raise InvalidReferenceError(f"class id {cid} is named both {names[cid]!r} and {name!r}")
        key = " ".join(str(name).split()).lower()
        if ids.setdefault(name, cid) != cid:
            raise InvalidReferenceError(f"class {name!r} has two ids, {ids[name]} and {cid}")
        if spelled.setdefault(key, name) != name:
            raise InvalidReferenceError(
                f"class names {spelled[key]!r} and {name!r} differ only in case or spaces: use one spelling"
            )


def _name(ref: Reference | None) -> str:
    return ref.describe() if ref is not None else "reference"


def _assemble(refs: list[Reference], feats: np.ndarray, cfg: NTTConfig, encoder) -> MemoryBank:
    classes: dict[int, str] = {}
    for ref in refs:
        classes.setdefault(int(ref.class_id), ref.class_name)
    return MemoryBank(
        classes=[{"id": cid, "name": classes[cid]} for cid in sorted(classes)],
        shot_features=feats,
        shot_class_ids=np.array([int(r.class_id) for r in refs], dtype=np.int64),
        shots=[ref.provenance() for ref in refs],
        encoder={**encoder_identity(encoder, cfg.model), "context_ratio": cfg.bank.context_ratio},
    )
