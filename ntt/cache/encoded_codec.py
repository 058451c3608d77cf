"""One image's encoder outputs (``Encoded`` of a batch of one) as arrays for the candidate cache, and back.

For guided prompts, which depend on the bank: a hit skips both encoders, and the decoder runs on the new
bank's prompts. SAM2's features are kept as float16 (the decoder's inputs; the largest part), DINOv2's patch
tokens as float32 (guided prompts rank close similarities on them). About 6 MB per image with the lite models.
"""

from __future__ import annotations

import numpy as np
import torch

from ntt.stages import Encoded

FORMAT = "encoded-1"  # in every key: a new layout of the arrays is a miss, never a misread
FEATURE = "features."  # array names: "features.<name>" or "features.<name>.<i>" for a list, and "tokens"


def pack(encoded: Encoded) -> dict[str, np.ndarray]:
    """An ``Encoded`` of one image as arrays (SAM2 features float16 with their batch dim, tokens float32)."""
    arrays = {"tokens": encoded.tokens.float().cpu().numpy()}
    for name, value in encoded.features.items():
        if isinstance(value, torch.Tensor):
            arrays[FEATURE + name] = _half(value)
        else:
            arrays.update({f"{FEATURE}{name}.{i}": _half(item) for i, item in enumerate(value)})
    return arrays


def unpack(arrays: dict[str, np.ndarray], device: torch.device) -> Encoded:
    """The ``Encoded`` ``pack`` made, on ``device`` (features float32)."""
    features: dict = {}
    for key in sorted(k for k in arrays if k.startswith(FEATURE)):
        name, _, index = key[len(FEATURE) :].partition(".")
        tensor = torch.from_numpy(arrays[key].astype(np.float32)).to(device)
        if index:
            features.setdefault(name, []).append(tensor)  # sorted: .0 before .1 (at most 10 levels)
        else:
            features[name] = tensor
    return Encoded(features, torch.from_numpy(arrays["tokens"]).to(device))


def _half(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(torch.float16).cpu().numpy()
