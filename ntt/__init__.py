"""No Time to Train (NTT): training-free, reference-based instance segmentation.

Public API (imported lazily so ``import ntt`` stays cheap)::

    from ntt import MemoryBank, Predictor, Segmenter, build_bank, get_config, load_image

The layout, each part importing only the ones above it:

- base modules: ``config`` (settings, presets), ``types`` (one prediction type, one reference type), ``stages``
  (what each stage of the prediction hands the next), ``geometry``, ``steps`` (progress steps), ``timing``,
  ``time_left``;
- ``ntt.io``: files in and out, checked (images, COCO, evaluation, atomic writes, input and output paths);
- ``ntt.models``: the frozen networks (SAM2, DINOv2), their checkpoints, the device;
- ``ntt.bank``: the memory bank, built from references, taught new shots, the paper's shot sampling;
- ``ntt.cache``: the candidate cache (each image's bank-independent work);
- ``ntt.predict``: the prediction, stage by stage, and many images at a time;
- ``ntt.grading``: leave-one-out grading of a bank's references, and calibrated thresholds;
- ``ntt.cli``: the ``ntt`` command;
- ``ntt.fo``: the FiftyOne SDK, the only part that imports fiftyone (nothing above imports it, but the CLI's
  commands on datasets, lazily).
"""

from __future__ import annotations

import importlib

from ntt import _moved

_moved.install()  # the module paths of the previous release (ntt.predictor, ...) still import, with a warning

__version__ = "0.1.0"

_EXPORTS = {
    "get_config": "ntt.config",
    "NTTConfig": "ntt.config",
    "ModelConfig": "ntt.config",
    "SegmentConfig": "ntt.config",
    "BankConfig": "ntt.config",
    "Instances": "ntt.types",
    "Reference": "ntt.types",
    "MemoryBank": "ntt.bank.memory",
    "BankError": "ntt.bank.checks",
    "build_bank": "ntt.bank.encoder",
    "build_bank_steps": "ntt.bank.encoder",
    "Step": "ntt.steps",
    "InvalidReferenceError": "ntt.types",
    "Segmenter": "ntt.predict.segmenter",
    "ImageResult": "ntt.predict.segmenter",
    "Predictor": "ntt.predict.predictor",
    "load_image": "ntt.io.images",
    "ImageLoadError": "ntt.io.images",
    "evaluate_results": "ntt.io.evaluation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ntt' has no attribute {name!r}")
