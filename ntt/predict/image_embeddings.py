"""One DINOv2 vector per image, the mean of its patch tokens, cached on disk: what choosing which images to label
next compares (``ntt.grading.suggest``).

A vector depends on the image's bytes and on the encoder (its weights' fingerprint, input size and numerics), so it
is kept in a ``CandidateStore`` of its own (``embeddings_root()``, beside the candidate cache) under a key made of
exactly those: a second call over the same images does not run the encoder. An image that cannot be read is
skipped with the reason; it never stops the others.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ntt.cache.store import CandidateStore, cache_root, entry_key, image_digest
from ntt.config import NTTConfig
from ntt.io.images import ImageLoadError, image_size, load_image
from ntt.models import autocast, encoder_identity, get_dinov2, resolve_device
from ntt.steps import Step, Steps, drive
from ntt.types import Progress

log = logging.getLogger(__name__)

BATCH_SIZE = 16  # images per encoder call: at most 16 x 3 x S x S floats on the device
KIND = "image-embedding"  # the entry kind in the key: never mistaken for another store's entry


def embeddings_root() -> Path:
    """``$NTT_CACHE_DIR/image_embeddings`` (default ``~/.cache/ntt/image_embeddings``), beside the candidates."""
    return cache_root().parent / "image_embeddings"


@dataclass
class ImageEmbeddings:
    """The vectors of a list of images, and the images that could not be read.

    Attributes:
        vectors: float32 (M, D), each row unit-norm: row ``k`` is the image ``indices[k]`` of the input list.
        indices: M input positions, ascending.
        skipped: ``(input position, reason)`` of each image that could not be read, ascending.
        encoded: how many of the M images went through the encoder (the others came from the cache).
    """

    vectors: np.ndarray
    indices: list[int]
    skipped: list[tuple[int, str]]
    encoded: int


def image_embeddings_steps(
    paths: Sequence[str | Path],
    cfg: NTTConfig,
    store: CandidateStore | None = None,
    batch_size: int = BATCH_SIZE,
) -> Steps[ImageEmbeddings]:
    """``image_embeddings`` as a generator: yields a ``Step`` after each batch encoded, returns the vectors."""
    encoder = get_dinov2(cfg.model)
    store = store if store is not None else CandidateStore(embeddings_root())
    parts = _key_parts(encoder, cfg)
    found: dict[int, np.ndarray] = {}
    keys: dict[int, str] = {}
    skipped: list[tuple[int, str]] = []
    for i, path in enumerate(paths):
        try:
            keys[i] = _entry_key(path, parts)
        except ImageLoadError as err:
            skipped.append((i, str(err)))
            continue
        cached = store.get(keys[i])
        if cached is not None:
            found[i] = cached["vector"]
    missing = [i for i in keys if i not in found]
    for start in range(0, len(missing), batch_size):
        batch = missing[start : start + batch_size]
        images, readable = _load(paths, batch, skipped)
        for i, vector in zip(readable, embed_images(images, encoder, cfg) if images else []):
            found[i] = vector
            _remember(store, keys[i], vector)
        done = start + len(batch)
        yield Step(done / len(missing), f"Encoding images {done}/{len(missing)}")
    return _collected(found, skipped, encoded=len(found) - (len(keys) - len(missing)), dim=int(encoder.dim))


def image_embeddings(
    paths: Sequence[str | Path],
    cfg: NTTConfig,
    store: CandidateStore | None = None,
    batch_size: int = BATCH_SIZE,
    progress: Progress | None = None,
) -> ImageEmbeddings:
    """One unit-norm DINOv2 vector per image: the mean of the encoder's patch tokens of the whole image, resized
    (bicubic, not keeping the aspect) to the encoder's square input.

    Args:
        paths: image files.
        cfg: the settings whose DINOv2 (``cfg.model``) encodes them, on its device.
        store: where vectors are cached (default: a ``CandidateStore`` at ``embeddings_root()``).
        batch_size: images per encoder call.
        progress: ``progress(fraction, label)`` after each batch.
    Returns:
        ``ImageEmbeddings``: float32 (M, D) vectors of the M readable images, and the others with why.
    """
    return drive(image_embeddings_steps(paths, cfg, store, batch_size), progress)


@torch.no_grad()
def embed_images(images: Sequence[np.ndarray], encoder, cfg: NTTConfig) -> np.ndarray:
    """float32 (B, D), unit-norm rows: per RGB uint8 (H, W, 3) image, the mean of its (g x g) patch tokens."""
    resized = [encoder.resize(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0) for image in images]
    with autocast(cfg.model):
        tokens = encoder(torch.cat(resized).to(resolve_device(cfg.model.device))).float()  # (B, g, g, D)
    return F.normalize(tokens.flatten(1, 2).mean(dim=1), dim=1).cpu().numpy().astype(np.float32)


def _key_parts(encoder, cfg: NTTConfig) -> dict:
    """What a vector depends on besides the image: the encoder (weights' fingerprint), its size and numerics."""
    return {
        "kind": KIND,
        "encoder": encoder_identity(encoder, cfg.model),
        "size": int(encoder.image_size),
        "numerics": [cfg.model.dtype, resolve_device(cfg.model.device).type],
    }


def _entry_key(path: str | Path, parts: dict) -> str:
    """The entry key of an image file, from its bytes.

    Raises:
        ImageLoadError: not a readable image file (its header is read first: a pipe or a folder is never opened
            for hashing), with why.
    """
    image_size(path)
    try:
        digest = image_digest(path)
    except OSError as err:  # removed or made unreadable since its header was read
        raise ImageLoadError(f"{path}: not readable ({err.strerror or err})") from err
    return entry_key(image=digest, **parts)


def _load(paths: Sequence[str | Path], batch: list[int], skipped: list) -> tuple[list[np.ndarray], list[int]]:
    """The images of ``batch`` that decode, with their positions; the others are added to ``skipped``."""
    images, readable = [], []
    for i in batch:
        try:
            images.append(load_image(paths[i]))
        except ImageLoadError as err:
            skipped.append((i, str(err)))
            continue
        readable.append(i)
    return images, readable


def _remember(store: CandidateStore, key: str, vector: np.ndarray) -> None:
    """Cache a vector; a store that cannot be written (a full disk) only costs the next call its encoding."""
    try:
        store.put(key, {"vector": vector})
    except OSError as err:
        log.warning("image embeddings: not cached (%s)", err)


def _collected(found: dict[int, np.ndarray], skipped: list, encoded: int, dim: int) -> ImageEmbeddings:
    indices = sorted(found)
    vectors = np.stack([found[i] for i in indices]).astype(np.float32) if indices else np.zeros((0, dim), np.float32)
    return ImageEmbeddings(vectors, indices, sorted(skipped), encoded)
