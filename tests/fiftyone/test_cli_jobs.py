"""`ntt jobs submit` takes every option of the SDK's ``segment``, as `ntt segment` takes those that apply to files
(the CLI half of the one-word-per-idea enumeration; the parsing is in tests/test_cli_options.py)."""

from __future__ import annotations

import argparse
import inspect

import pytest

from ntt.cli import build_parser, main
from ntt.cli.segment_options import CONFIG_FLAGS, DATASET_ONLY, SEGMENT_OPTIONS


def _flags(*path: str) -> set[str]:
    parser = build_parser()
    for name in path:
        [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = sub.choices[name]
    return {s for a in parser._actions for s in a.option_strings}


def test_every_keyword_of_segment_has_its_flag():
    from ntt.fo.labelling.segment import segment_steps

    keywords = [k for k in inspect.signature(segment_steps).parameters if k not in ("coll", "bank")]
    assert sorted(keywords) == sorted(SEGMENT_OPTIONS), "SEGMENT_OPTIONS maps every keyword of segment"
    segment, submit = _flags("segment"), _flags("jobs", "submit")
    for keyword in keywords:
        flag = SEGMENT_OPTIONS[keyword]
        assert flag in submit, f"`ntt jobs submit` lacks {flag} ({keyword})"
        assert keyword in DATASET_ONLY or flag in segment, f"`ntt segment` lacks {flag} ({keyword})"
    assert set(CONFIG_FLAGS) <= submit & segment, "config: --config and the model flags, on both"


@pytest.fixture
def submitted(monkeypatch):
    """`ntt jobs submit` with the SDK's submit replaced: what it was called with (no dataset needed)."""
    from ntt.fo.jobs import commands, shards

    calls = []

    def submit(coll, bank, **kwargs):
        calls.append((coll, bank, kwargs))
        return {"job": "j1", "run": "j1", "samples": 9, "shards": 2, "delegation_target": kwargs["delegation_target"]}

    monkeypatch.setattr(shards, "submit_job", submit)
    monkeypatch.setattr(commands, "_dataset", lambda name: f"dataset {name}")
    return calls


def test_jobs_submit_passes_every_option(submitted, capsys):
    args = ["jobs", "submit", "ds", "--bank", "pets", "--shards", "2", "--target", "gpu", "--max-attempts", "4"]
    args += ["--label-field", "f", "--score-thresh", "0.3", "--class-thresholds", '{"dog": 0.5}']
    args += ["--max-instances", "7", "--batch-size", "2", "--device", "auto", "--preset", "fast", "--overwrite"]
    args += ["--no-exclude-references", "--tag", "refs", "--no-cache", "--thresholds", "calibrated", "--mask-dir", "m"]
    args += ["--no-keep-embeddings"]
    args += ["--dtype", "fp32", "--sam2", "sam2.1_hiera_t", "--dinov2", "dinov2_vits14", "--sam2-checkpoint", "s.pt"]
    args += ["--dinov2-checkpoint", "d.pth", "--random-weights", "--weights-seed", "3", "--no-compile"]
    args += ["--points-per-side", "16", "--prompt-mode", "guided", "--points-batch-size", "64"]
    args += ["--config", '{"segment": {"pred_iou_thresh": 0.7}}']
    assert main(args) == 0
    [(coll, bank, kwargs)] = submitted
    assert (coll, bank) == ("dataset ds", "pets")
    model = {"dtype": "fp32", "sam2": "sam2.1_hiera_t", "dinov2": "dinov2_vits14", "sam2_checkpoint": "s.pt"}
    model |= {"dinov2_checkpoint": "d.pth", "random_weights": True, "seed": 3, "compile": False}
    segment = {"pred_iou_thresh": 0.7, "points_per_side": 16, "prompt_mode": "guided", "points_batch_size": 64}
    assert kwargs == {
        "shards": 2,
        "shard_size": None,
        "delegation_target": "gpu",
        "max_attempts": 4,
        "label_field": "f",
        "score_thresh": 0.3,
        "class_thresholds": {"dog": 0.5},
        "max_instances": 7,
        "batch_size": 2,
        "device": "auto",
        "preset": "fast",
        "config": {"segment": segment, "model": model},
        "overwrite": True,
        "exclude_references": False,
        "tag": "refs",
        "cache": False,
        "thresholds": "calibrated",
        "mask_dir": "m",
        "keep_embeddings": False,
    }
    out = capsys.readouterr().out
    assert out.startswith("job j1: 9 samples in 2 shards queued for target 'gpu'")
    assert "follow with `ntt jobs status ds --job j1`" in out


def test_jobs_submit_defaults_and_old_words(submitted, capsys):
    """Nothing given: the bank's own settings, references left out; `ntt runs submit --field` still works."""
    assert main(["runs", "submit", "ds", "--bank", "pets", "--field", "old", "--skip-existing"]) == 0
    [(_, _, kwargs)] = submitted
    assert kwargs == {
        "shards": None,
        "shard_size": None,
        "delegation_target": "ntt",
        "max_attempts": 3,
        "label_field": "old",
        "skip_existing": True,
    }
    assert capsys.readouterr().err.splitlines() == [
        "`--field` is deprecated: use `--label-field`",
        "`ntt runs` is deprecated: use `ntt jobs`",
    ]
