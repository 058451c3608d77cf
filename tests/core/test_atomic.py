"""Files ntt writes: atomic, with the permissions a plain open() gives, and no leftovers of killed runs."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest

from ntt.io.atomic import AtomicWriter, remove_stale_temps, write_bytes_atomic


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_new_file_gets_the_mode_a_plain_open_gives(tmp_path, umask_022):
    # mkstemp's 0600 made banks unreadable for a background worker running as another user.
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    path = write_bytes_atomic(tmp_path / "bank.safetensors", b"data")
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o644


def test_overwritten_file_keeps_its_mode(tmp_path, umask_022):
    path = tmp_path / "bank.safetensors"
    path.write_bytes(b"old")
    os.chmod(path, 0o640)
    write_bytes_atomic(path, b"new")
    assert path.read_bytes() == b"new" and path.stat().st_mode & 0o777 == 0o640


def test_temp_files_of_killed_runs_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "preds.json"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    leftover = tmp_path / f".preds.json.{dead_pid}.abcd1234.tmp"
    leftover.write_text("[1, 2")
    live = tmp_path / f".preds.json.{os.getpid()}.ffff0000.tmp"  # a run still writing: left alone
    live.write_text("[")
    other = tmp_path / f".other.json.{dead_pid}.abcd1234.tmp"  # another file's: not ours to judge here
    other.write_text("[")
    write_bytes_atomic(target, b"[]")
    assert not leftover.exists() and live.exists() and other.exists()
    remove_stale_temps(tmp_path / "other.json")
    assert not other.exists()


def test_sha256_is_of_the_bytes_written(tmp_path):
    import hashlib

    with AtomicWriter(tmp_path / "a.bin") as out:
        out.write(b"abc")
        out.write(b"def")
    assert out.sha256 == hashlib.sha256(b"abcdef").hexdigest()


def test_disk_full_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    import ntt.io.atomic as atomic

    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"old": 1}))

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "write", full)
    with pytest.raises(OSError, match="the disk is full") as err:
        write_bytes_atomic(path, b"{}")
    assert err.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
