"""The candidate cache: each image's bank-independent work kept on disk, so re-segmenting after a bank change
skips the encoders (``store``: entries, limit, checksums, ``ntt cache info|clear``; ``stages``: its use per image;
``pool_codec`` / ``encoded_codec``: a mask pool (grid prompts) or encoder outputs (guided prompts) packed for it).

May import: the base modules (``ntt.stages`` for what it packs), ``ntt.io``, ``ntt.models``.
"""

from ntt.cache.store import CandidateStore, cache_root, entry_key, image_digest

__all__ = ["CandidateStore", "cache_root", "entry_key", "image_digest"]
