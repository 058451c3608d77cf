"""The ``ntt`` command as a user runs it, in its own process: unreadable files among the targets, Ctrl-C and
SIGTERM in the middle of the work. No traceback, one line that says what happened, and no file lost or
half-written (a stopped run leaves the previous output as it was and no temp file behind)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
NTT = [sys.executable, "-m", "ntt.cli"]
SMOKE = ["--random-weights", "--device", "cpu"]


@pytest.fixture(scope="module")
def lite_bank(coco128, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bank") / "bank.safetensors"
    refs = coco128 / "annotations" / "instances_train2017.json"
    args = ["bank", "build", str(refs), "--shots", "1", "--classes", "person", "dog", "-o", str(out)]
    proc = _run([*args, "--preset", "lite", *SMOKE], {})
    assert proc.returncode == 0, proc.stderr
    return out


def _run(args: list[str], env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "NTT_OFFLINE": "1", "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run([*NTT, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("bad", [b"", b"\xff\xd8\xff\xe0 truncated jpeg", b"hello, I am text\n"])
def test_the_cpu_default_survives_a_trailing_unreadable_file(bad, lite_bank, small_images, tmp_path):
    """The report: `ntt segment --preset lite` (guided prompts, cache on) with an unreadable file sorting last,
    after a full batch, died in ``Encoded.join([])`` and lost every result."""
    folder = tmp_path / "targets"
    folder.mkdir()
    for img in small_images[:3]:
        (folder / img.name).symlink_to(img)
    (folder / "zzz_bad.jpg").write_bytes(bad)
    out = tmp_path / "preds.json"
    args = ["segment", "--bank", str(lite_bank), "--images", str(folder), "-o", str(out), "--preset", "lite"]
    smaller = ["--config", '{"model": {"sam2_image_size": 256}}']  # lite's own settings, a quarter of the pixels
    proc = _run([*args, *SMOKE, *smaller], {"NTT_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    meta = json.loads((tmp_path / "preds.meta.json").read_text())
    assert len(meta["image_ids"]) == 3 and [Path(s["path"]).name for s in meta["skipped"]] == ["zzz_bad.jpg"]
    assert "skipped " in proc.stdout and "zzz_bad.jpg" in proc.stdout and isinstance(json.loads(out.read_text()), list)


def _default_signals() -> None:
    """In the child: Ctrl-C as in a terminal, even when the tests run where SIGINT is ignored (a background job)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def _wait_for(proc: subprocess.Popen, needle: str, timeout: float) -> str:
    """Read the process's stderr until ``needle`` appears (tqdm writes progress there); returns what was read."""
    seen: list[str] = []

    def pump():
        for chunk in iter(lambda: proc.stderr.read(1), ""):
            seen.append(chunk)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    end = time.monotonic() + timeout
    while needle not in "".join(seen):
        assert proc.poll() is None, f"ended before {needle!r}: {''.join(seen)}"
        assert time.monotonic() < end, f"no {needle!r} in {timeout} s: {''.join(seen)}"
        time.sleep(0.1)
    proc._ntt_seen, proc._ntt_reader = seen, reader
    return "".join(seen)


INTERRUPT = (signal.SIGINT, 130, "interrupted")
TERMINATE = (signal.SIGTERM, 143, "terminated (SIGTERM)")
HANG_UP = (signal.SIGHUP, 129, "terminated (SIGHUP)")  # the terminal or ssh session closed


@pytest.mark.parametrize(
    ("command", "sig", "code", "word"),
    [("segment", *INTERRUPT), ("segment", *TERMINATE), ("segment", *HANG_UP), ("bank build", *TERMINATE)],
)
def test_a_signal_mid_run_keeps_the_old_output_and_leaves_no_temp_file(
    command, sig, code, word, coco128, small_images, tmp_path
):
    out = tmp_path / ("old.safetensors" if command == "bank build" else "old.json")
    out.write_bytes(b"the previous output, which must survive")
    if command == "segment":
        folder = tmp_path / "targets"
        folder.mkdir()
        for i in range(40):  # long enough to be stopped in the middle
            (folder / f"{i:03d}.jpg").symlink_to(small_images[i % len(small_images)])
        bank = tmp_path / "bank.safetensors"
        refs = coco128 / "annotations" / "instances_train2017.json"
        built = _run(
            [
                "bank",
                "build",
                str(refs),
                "--shots",
                "1",
                "--classes",
                "person",
                "-o",
                str(bank),
                "--preset",
                "smoke",
                *SMOKE,
            ],
            {},
        )
        assert built.returncode == 0, built.stderr
        args = ["segment", "--bank", str(bank), "--images", str(folder), "-o", str(out), "--preset", "smoke"]
        progress = "segmenting:"
    else:
        refs = coco128 / "annotations" / "instances_train2017.json"
        args = ["bank", "build", str(refs), "--shots", "5", "-o", str(out), "--preset", "smoke"]
        progress = "references:"
    env = {**os.environ, "NTT_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "NTT_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen(
        [*NTT, *args, *SMOKE],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_signals,
    )
    try:
        _wait_for(proc, progress, timeout=300)
        time.sleep(1.0)  # well inside the work
        proc.send_signal(sig)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    proc._ntt_reader.join(timeout=10)
    err = "".join(proc._ntt_seen)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    last = [line for line in err.replace("\r", "\n").splitlines() if line.strip()][-1]
    assert last.startswith(f"{word}: "), err
    assert out.read_bytes() == b"the previous output, which must survive"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


def test_two_bank_adds_at_once_both_land(coco128, refs, tmp_path):
    """Two `ntt bank add` on one bank at the same time, each with a class of its own: the bank ends with both
    (each read-change-write is serialised on the bank's lock, the second applied to the first's result)."""
    train = coco128 / "annotations" / "instances_train2017.json"
    bank = tmp_path / "bank.safetensors"
    base = ["--preset", "smoke", *SMOKE]
    built = _run(["bank", "build", str(train), "--shots", "1", "--classes", "person", "-o", str(bank), *base], {})
    assert built.returncode == 0, built.stderr
    env = {**os.environ, "NTT_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    adds = [
        subprocess.Popen(
            [*NTT, "bank", "add", str(bank), str(train), "--shots", "1", "--classes", name, *base],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("dog", "car")
    ]
    for proc in adds:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    from ntt.bank.memory import MemoryBank

    assert sorted(MemoryBank.load(bank).class_names) == ["car", "dog", "person"]
