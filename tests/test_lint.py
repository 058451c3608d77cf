"""The project's own lint (ruff, configured in pyproject.toml) is part of the test suite."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_ruff_is_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent))
    if ruff is None:
        pytest.skip("ruff is not installed in this environment (scripts/setup.sh installs it)")
    paths = [p for p in ("ntt", "tests", "scripts", "plugin") if (REPO / p).exists()]
    out = subprocess.run([ruff, "check", *paths], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-4000:]
