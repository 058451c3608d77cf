"""SAM2 through Meta's official ``sam2`` package, driven the way NTT drives it.

The image encoder runs once per image; the prompt encoder and mask decoder are called directly with the
high-resolution features from ``forward_image`` and, by default, *without* adding ``no_mem_embed`` to the
image embedding (NTT's behaviour; the stock ``SAM2ImagePredictor`` adds it).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ntt.config import SAM2_MODELS
from ntt.models.dinov2 import IMAGENET_MEAN, IMAGENET_STD
from ntt.models.weights import CheckpointError, read_state_dict

log = logging.getLogger(__name__)


class SAM2Proposer(torch.nn.Module):
    """Frozen SAM2 image encoder + prompt encoder + mask decoder.

    Features for a batch are a dict with ``image_embed`` (B, 256, S/16, S/16) and ``high_res``
    [(B, 32, S/4, S/4), (B, 64, S/8, S/8)], S = ``image_size``. Low-resolution mask logits are
    (S/4, S/4) (256x256 for S = 1024).
    """

    def __init__(self, model: torch.nn.Module, name: str, add_no_mem_embed: bool = False):
        super().__init__()
        self.model = model
        self.name = name
        self.image_size = int(model.image_size)
        self.mask_size = self.image_size // 4
        self.add_no_mem_embed = add_no_mem_embed
        self.compile_backend = "inductor"  # tests use "eager": same graph capture, no code generation
        self._compiled = None
        self._fingerprint: str | None = None
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def fingerprint(self) -> str:
        """A short sha256 of the weights as loaded (the first, middle and last tensors, and every shape): what a
        cache of this model's outputs is keyed by. Computed once."""
        if self._fingerprint is None:
            state = self.model.state_dict()
            names = sorted(state)
            digest = hashlib.sha256(repr([(k, tuple(state[k].shape)) for k in names]).encode())
            for key in names[:3] + names[len(names) // 2 : len(names) // 2 + 2] + names[-3:]:
                digest.update(state[key].detach().float().cpu().contiguous().numpy().tobytes())
            self._fingerprint = "sha256:" + digest.hexdigest()[:16]
        return self._fingerprint

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """RGB uint8 (H, W, 3) -> float (3, S, S) in [0, 1]: a square stretch with PIL bicubic, as NTT."""
        size = (self.image_size, self.image_size)
        resized = np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC), dtype=np.float32)
        return torch.from_numpy(resized / 255.0).permute(2, 0, 1)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> dict:
        """Run the image encoder on (B, 3, S, S) images in [0, 1]."""
        out = self.model.forward_image((images - self.mean) / self.std)
        embed = out["vision_features"]
        if self.add_no_mem_embed:
            embed = embed + self.model.no_mem_embed.view(1, -1, 1, 1)
        return {"image_embed": embed, "high_res": [out["backbone_fpn"][0], out["backbone_fpn"][1]]}

    @torch.no_grad()
    def decode_batch(self, feats: dict, prompts: list[torch.Tensor], chunk: int, compiled: bool = False):
        """Decode single positive point prompts on every image of a feature batch, best of 3 masks.

        The prompts of all images are decoded together, ``chunk`` at a time (a chunk may span images),
        so a batch of images with few prompts each still fills the decoder.

        Args:
            prompts: per image of the batch, float (P_i, 2) of (x, y) in S-pixel coordinates.
            chunk: prompts per decoder call; every prompt is decoded.
            compiled: run the decoder through ``torch.compile`` (static shapes: a chunk is padded to the
                next power of two); falls back to eager, with a warning, if compiling fails.
        Returns:
            per image, (logits, iou): (P_i, S/4, S/4) mask logits of the mask with the highest predicted IoU
            among the 3 multimask outputs (bf16 under bf16 autocast: half the memory for a whole batch's
            masks; float32 otherwise), and float32 (P_i,) that predicted IoU.
        """
        counts = [len(p) for p in prompts]
        coords = torch.cat(prompts)
        owner = torch.repeat_interleave(torch.arange(len(prompts)), torch.tensor(counts))  # on the CPU: no syncs
        logits, ious = [], []
        for start in range(0, len(coords), chunk):
            pts, idx = coords[start : start + chunk], owner[start : start + chunk]
            masks, iou = self._decode_chunk(feats, pts, idx, _padded_size(len(pts)) if compiled else 0)
            logits.append(masks)
            ious.append(iou)
        if not logits:
            empty = torch.zeros(0, self.mask_size, self.mask_size, device=coords.device)
            return [(empty, empty[:, 0, 0])] * len(prompts)
        return list(zip(torch.cat(logits).split(counts), torch.cat(ious).split(counts)))

    def _decode_chunk(self, feats: dict, pts: torch.Tensor, owner: torch.Tensor, pad_to: int):
        """Best-of-3 masks for one chunk of points; ``owner`` (CPU int64 (n,)) says whose image each point is on."""
        n = len(pts)
        if n < pad_to:  # one static shape for the compiled graph
            pts = torch.cat([pts, pts[-1:].expand(pad_to - n, 2)])
            owner = torch.cat([owner, owner[-1:].expand(pad_to - n)])
        first = int(owner[0])
        single = bool((owner == first).all())
        if single:  # the decoder broadcasts one image's features over all prompts: no copies
            embed = feats["image_embed"][first : first + 1]
            high_res = [f[first : first + 1] for f in feats["high_res"]]
        else:
            index = owner.to(pts.device)
            embed = feats["image_embed"].index_select(0, index)
            high_res = [f.index_select(0, index) for f in feats["high_res"]]
        fn = self._compiled_best_of_3() if pad_to else _best_of_3
        try:
            masks, iou = fn(self.model, embed, high_res, pts[:, None, :], single)
        except torch.OutOfMemoryError:
            raise
        except Exception as err:  # a compiler failure must not stop the job: eager gives the same masks
            if fn is _best_of_3:
                raise
            log.warning("torch.compile of the SAM2 decoder failed (%s); decoding without it", err)
            self._compiled = _best_of_3
            masks, iou = _best_of_3(self.model, embed, high_res, pts[:, None, :], single)
        return masks[:n], iou[:n].float()

    def _compiled_best_of_3(self):
        if self._compiled is None:
            self._compiled = torch.compile(_best_of_3, fullgraph=True, dynamic=False, backend=self.compile_backend)
        return self._compiled

    @torch.no_grad()
    def decode_boxes(self, feats: dict, index: int, boxes: torch.Tensor) -> torch.Tensor:
        """One mask per box prompt (single-mask output) on image ``index``.

        Args:
            boxes: float (K, 4) pixel xyxy in S-pixel coordinates.
        Returns:
            float (K, S/4, S/4) mask logits.
        """
        pts = boxes.reshape(-1, 2, 2)
        labels = torch.tensor([[2, 3]], dtype=torch.int, device=boxes.device).expand(len(boxes), 2)
        embed = feats["image_embed"][index : index + 1]
        high_res = [f[index : index + 1] for f in feats["high_res"]]
        masks, _ = _run_decoder(self.model, embed, high_res, pts, labels, multimask=False, repeat=True)
        return masks[:, 0].float()


def _padded_size(n: int) -> int:
    """The next power of two: a compiled decoder sees a few static shapes, and pads at most 2x."""
    return 1 << max(0, n - 1).bit_length()


def _run_decoder(model, embed, high_res, points, labels, multimask: bool, repeat: bool):
    """SAM2's prompt encoder + mask decoder. ``repeat``: one image's features (batch 1) for every prompt;
    otherwise the features are already per prompt."""
    sparse, dense = model.sam_prompt_encoder(points=(points, labels), boxes=None, masks=None)
    masks, iou, _, _ = model.sam_mask_decoder(
        image_embeddings=embed,
        image_pe=model.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
        repeat_image=repeat,
        high_res_features=high_res,
    )
    return masks, iou


def _best_of_3(model, embed, high_res, points, repeat: bool):
    """Single positive points (n, 1, 2) -> the multimask output with the highest predicted IoU:
    logits (n, S/4, S/4) and IoU (n,)."""
    labels = torch.ones(points.shape[:2], dtype=torch.int, device=points.device)
    masks, iou = _run_decoder(model, embed, high_res, points, labels, multimask=True, repeat=repeat)
    best = iou.argmax(dim=1, keepdim=True)
    picked = masks.gather(1, best[:, :, None, None].expand(-1, -1, *masks.shape[2:]))[:, 0]
    return picked, iou.gather(1, best)[:, 0]


def build_sam2_model(
    name: str,
    image_size: int,
    checkpoint: Path | None,
    seed: int = 0,
    add_no_mem_embed: bool = False,
) -> SAM2Proposer:
    """Build SAM2 on the CPU in eval mode.

    Args:
        name: ``SAM2_MODELS`` key (SAM2.0 or SAM2.1 config, hiera t/s/b+/l).
        image_size: input side (1024 for the released weights; smaller sizes for fast tests).
        checkpoint: Meta's ``.pt`` file (``{"model": state_dict}``, read without unpickling code);
            None builds a random-init model seeded with ``seed``.
    Raises:
        CheckpointError: the checkpoint is unsafe, corrupted, or of another SAM2 variant.
    """
    from sam2.build_sam import build_sam2

    config = SAM2_MODELS[name][0]
    overrides = [] if image_size == 1024 else [f"++model.image_size={image_size}"]
    state = read_state_dict(checkpoint, key="model") if checkpoint else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_sam2(
            config, ckpt_path=None, device="cpu", apply_postprocessing=False, hydra_overrides_extra=overrides
        )
    if state is not None:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise CheckpointError(f"could not load SAM2 {name} from {checkpoint}: {_mismatch(err)}") from err
    return SAM2Proposer(model.eval(), name, add_no_mem_embed).eval()


def _mismatch(err: RuntimeError) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return "its tensors do not fit this model (another SAM2 variant?): " + (lines[1][:200] if len(lines) > 1 else "")
