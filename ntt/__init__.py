"""No Time to Train (NTT): training-free, reference-based instance segmentation.

Public API (imported lazily so ``import ntt`` stays cheap)::

    from ntt import MemoryBank, Predictor, Segmenter, build_bank, get_config, load_image
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "get_config": "ntt.config",
    "NTTConfig": "ntt.config",
    "ModelConfig": "ntt.config",
    "SegmentConfig": "ntt.config",
    "BankConfig": "ntt.config",
    "Instances": "ntt.types",
    "Reference": "ntt.types",
    "MemoryBank": "ntt.bank",
    "BankError": "ntt.bank",
    "build_bank": "ntt.bank_encoder",
    "build_bank_steps": "ntt.bank_encoder",
    "Step": "ntt.steps",
    "InvalidReferenceError": "ntt.bank_encoder",
    "Segmenter": "ntt.segmenter",
    "ImageResult": "ntt.segmenter",
    "Predictor": "ntt.predictor",
    "load_image": "ntt.images",
    "ImageLoadError": "ntt.images",
    "evaluate_results": "ntt.evaluation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ntt' has no attribute {name!r}")
