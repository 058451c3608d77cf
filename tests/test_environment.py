"""The set-up installs a FiftyOne whose database really starts here (Debian 12 needs an OpenSSL 3 mongod)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.fiftyone
def test_fiftyone_database_starts(tmp_path):
    code = (
        "import fiftyone as fo\n"
        "ds = fo.Dataset()\n"
        "ds.add_sample(fo.Sample(filepath='/tmp/none.jpg'))\n"
        "print('samples', len(ds))\n"
    )
    env = dict(os.environ, FIFTYONE_DATABASE_DIR=str(tmp_path / "db"), FIFTYONE_DO_NOT_TRACK="true")
    env["FIFTYONE_DATABASE_VALIDATION"] = "false"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "samples 1" in out.stdout
