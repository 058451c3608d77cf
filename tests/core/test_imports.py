"""The core library never imports FiftyOne (it is an optional extra)."""

from __future__ import annotations

import subprocess
import sys

MODULES = [
    "ntt.config",
    "ntt.bank.memory",
    "ntt.geometry",
    "ntt.predict.postprocess",
    "ntt.predict.predictor",
    "ntt.predict.segmenter",
    "ntt.bank.encoder",
    "ntt.io.coco",
    "ntt.bank.sampling",
    "ntt.io.evaluation",
    "ntt.cli.pipeline",
    "ntt.cli",
    "ntt.cli.commands",
]


def test_core_modules_do_not_import_fiftyone():
    code = (
        "import importlib, sys\n"
        f"for name in {MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "loaded = sorted(m for m in sys.modules if m == 'fiftyone' or m.startswith('fiftyone.'))\n"
        "assert not loaded, loaded\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
