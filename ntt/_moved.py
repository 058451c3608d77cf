"""The module paths of the previous release (``ntt.predictor``, ``ntt.coco``, ...), from before the core was grouped
into subpackages: importing one still works for one release and gives the module at its new path (the same
object), with a ``DeprecationWarning`` that names it. ``ntt.bank``, ``ntt.cache``, ``ntt.grading``, ``ntt.cli``
and ``ntt.fo.jobs`` are packages now; each still exports the names their modules were imported for.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "ntt.atomic": "ntt.io.atomic",
    "ntt.inputs": "ntt.io.inputs",
    "ntt.outputs": "ntt.io.outputs",
    "ntt.images": "ntt.io.images",
    "ntt.rle": "ntt.io.rle",
    "ntt.coco_check": "ntt.io.coco_check",
    "ntt.coco": "ntt.io.coco",
    "ntt.evaluation": "ntt.io.evaluation",
    "ntt.weights": "ntt.models.weights",
    "ntt.devices": "ntt.models.devices",
    "ntt.bank_checks": "ntt.bank.checks",
    "ntt.bank_file": "ntt.bank.file",
    "ntt.bank_encoder": "ntt.bank.encoder",
    "ntt.teach": "ntt.bank.teach",
    "ntt.sampling": "ntt.bank.sampling",
    "ntt.stage_cache": "ntt.cache.stages",
    "ntt.pool_codec": "ntt.cache.pool_codec",
    "ntt.encoded_codec": "ntt.cache.encoded_codec",
    "ntt.predictor": "ntt.predict.predictor",
    "ntt.postprocess": "ntt.predict.postprocess",
    "ntt.prompts": "ntt.predict.prompts",
    "ntt.segmenter": "ntt.predict.segmenter",
    "ntt.loader": "ntt.predict.loader",
    "ntt.leave_one_out": "ntt.grading.leave_one_out",
    "ntt.refinish": "ntt.grading.refinish",
    "ntt.ap50": "ntt.grading.ap50",
    "ntt.calibration": "ntt.grading.calibration",
    "ntt.commands": "ntt.cli.commands",
    "ntt.pipeline": "ntt.cli.pipeline",
    "ntt.segment_options": "ntt.cli.segment_options",
    "ntt.benchmark": "ntt.cli.benchmark",
    "ntt.fo.feedback": "ntt.fo.review.feedback",
    "ntt.fo.corrections": "ntt.fo.review.corrections",
    "ntt.fo.grades": "ntt.fo.review.grades",
    "ntt.fo.segment": "ntt.fo.labelling.segment",
    "ntt.fo.provenance": "ntt.fo.labelling.provenance",
    "ntt.fo.writes": "ntt.fo.labelling.writes",
    "ntt.fo.model": "ntt.fo.labelling.model",
    "ntt.fo.evaluate": "ntt.fo.labelling.evaluate",
    "ntt.fo.runs": "ntt.fo.jobs.follow",
    "ntt.fo.run_states": "ntt.fo.jobs.states",
    "ntt.fo.shards": "ntt.fo.jobs.shards",
    "ntt.fo.shard_status": "ntt.fo.jobs.status",
    "ntt.fo.reaper": "ntt.fo.jobs.reaper",
    "ntt.fo.workers": "ntt.fo.jobs.workers",
    "ntt.fo.commands": "ntt.fo.jobs.commands",
}


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path and loads it as the module at its new path."""

    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def create_module(self, spec):
        new = MOVED[spec.name]
        warnings.warn(
            f"{spec.name} moved to {new}: import it from there (the old path goes in the next release)",
            DeprecationWarning,
            stacklevel=2,
        )
        module = importlib.import_module(new)
        spec.loader_state = module.__spec__  # the import system sets the alias's spec on it: put the real one back
        return module

    def exec_module(self, module):
        module.__spec__ = module.__spec__.loader_state


def install() -> None:
    """Let the old paths import (once per process)."""
    if not any(isinstance(finder, _OldPaths) for finder in sys.meta_path):
        sys.meta_path.append(_OldPaths())
