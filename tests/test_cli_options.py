"""The options of segmenting are defined once (``ntt.cli.segment_options``): `ntt segment` and
`ntt jobs submit` take the same flags and turn them into the same settings; old words still work and say so.
Parsing only: no model, no FiftyOne (the SDK half of the enumeration and the submit call are in
tests/fiftyone/test_cli_jobs.py)."""

from __future__ import annotations

import argparse
import json

import pytest

from ntt.cli import build_parser, main
from ntt.cli import entry as cli
from ntt.cli.entry import _config
from ntt.cli.segment_options import CONFIG_FLAGS, DATASET_ONLY, FILES_ONLY, SEGMENT_OPTIONS, dataset_keywords

SEGMENT = ["segment", "--bank", "b.safetensors", "--images", "imgs", "-o", "out.json"]
SUBMIT = ["jobs", "submit", "ds", "--bank", "pets"]


def subparser(*path: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = sub.choices[name]
    return parser


def flags(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings if s.startswith("--")} - {"--help"}


def test_one_definition_of_the_segment_options():
    """Every flag of `ntt segment` is one of `ntt jobs submit` (but the COCO files'), every SDK keyword has its flag
    on submit, and on segment unless it only means something on a dataset."""
    segment, submit = flags(subparser("segment")), flags(subparser("jobs", "submit"))
    assert set(FILES_ONLY) <= segment and not set(FILES_ONLY) & submit
    assert segment - set(FILES_ONLY) <= submit, sorted(segment - set(FILES_ONLY) - submit)
    for keyword, flag in SEGMENT_OPTIONS.items():
        assert flag in submit, keyword
        assert (flag in segment) == (keyword not in DATASET_ONLY), keyword
    assert set(CONFIG_FLAGS) <= segment and set(CONFIG_FLAGS) <= submit
    assert flags(subparser("runs", "submit")) == submit, "the old name is the same command"
    assert flags(subparser("bank", "report")) == flags(subparser("bank", "grade"))


def test_every_segment_option_reaches_the_settings(tmp_path):
    thresholds = tmp_path / "thresholds.json"
    thresholds.write_text(json.dumps({"dog": 0.5, "cat": 1}))
    args = build_parser().parse_args(
        [*SEGMENT, "--score-thresh", "0.2", "--class-thresholds", str(thresholds), "--max-instances", "7"]
        + ["--points-per-side", "16", "--prompt-mode", "guided", "--no-cache", "--batch-size", "2", "--device", "cpu"]
        + ["--dtype", "fp32", "--points-batch-size", "64", "--compile", "--sam2", "sam2.1_hiera_t"]
        + ["--random-weights", "--weights-seed", "3", "--config", '{"segment": {"pred_iou_thresh": 0.7}}']
    )
    cfg = _config(args)
    seg, model = cfg.segment, cfg.model
    assert (seg.score_thresh, seg.class_thresholds, seg.max_instances) == (0.2, {"dog": 0.5, "cat": 1.0}, 7)
    assert (seg.points_per_side, seg.prompt_mode, seg.cache, seg.batch_size) == (16, "guided", False, 2)
    assert (seg.points_batch_size, seg.pred_iou_thresh) == (64, 0.7)
    assert (model.device, model.dtype, model.compile, model.sam2) == ("cpu", "fp32", True, "sam2.1_hiera_t")
    assert (model.random_weights, model.seed) == (True, 3)


def test_jobs_submit_flags_become_the_sdk_keywords():
    """The model flags and --config become the SDK's ``config`` (overrides of the bank's settings); the others are
    its keywords; a flag not given is not passed (the SDK's default)."""
    args = build_parser().parse_args(
        [*SUBMIT, "--label-field", "f", "--score-thresh", "0.3", "--class-thresholds", '{"dog": 0.5}']
        + ["--max-instances", "7", "--batch-size", "2", "--device", "auto", "--preset", "fast", "--overwrite"]
        + ["--no-exclude-references", "--tag", "refs", "--no-cache", "--thresholds", "calibrated", "--mask-dir", "m"]
        + ["--no-keep-embeddings"]
        + ["--dtype", "fp32", "--points-per-side", "16", "--random-weights", "--config", '{"model": {"seed": 1}}']
    )
    assert dataset_keywords(args) == {
        "label_field": "f",
        "score_thresh": 0.3,
        "class_thresholds": {"dog": 0.5},
        "max_instances": 7,
        "batch_size": 2,
        "device": "auto",
        "preset": "fast",
        "config": {"model": {"seed": 1, "dtype": "fp32", "random_weights": True}, "segment": {"points_per_side": 16}},
        "overwrite": True,
        "exclude_references": False,
        "tag": "refs",
        "cache": False,
        "thresholds": "calibrated",
        "mask_dir": "m",
        "keep_embeddings": False,
    }
    plain = build_parser().parse_args(SUBMIT)
    assert dataset_keywords(plain) == {"label_field": "ntt"}, "the bank's own settings, references left out"
    assert plain.preset is None and build_parser().parse_args(SEGMENT).preset == "paper"


@pytest.mark.parametrize("command", [SEGMENT, SUBMIT])
@pytest.mark.parametrize(
    "value, why",
    [
        ('{"dog": 2}', "the threshold of 'dog' must be a number in [0, 1], got 2"),
        ('{"dog": "high"}', "the threshold of 'dog' must be a number in [0, 1], got 'high'"),
        ('{"dog": NaN}', "must be a number in [0, 1], got nan"),
        ('{"dog": true}', "must be a number in [0, 1], got True"),
        ('{"": 0.5}', "a class name is empty"),
        ("[0.5]", "give an object of class name -> threshold"),
        ("{dog: 0.5}", "not valid JSON"),
        ("no_such_file.json", "no_such_file.json: JSON file not found"),
    ],
)
def test_bad_class_thresholds_are_one_line_and_exit_2(command, value, why, capsys):
    with pytest.raises(SystemExit) as stop:
        main([*command, "--class-thresholds", value])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: ntt {command[0]}") and "argument --class-thresholds: " in err and why in err, err


def test_old_words_still_work_and_say_so(capsys):
    """`ntt runs`, `ntt bank report`, `--field` and `--run` work one more release, each with one line on stderr."""
    parse = build_parser().parse_args
    args = parse(["runs", "status", "ds", "--run", "abc"])
    cli._new_words(args)
    assert (args.command, args.jobs_cmd, args.job) == ("jobs", "status", "abc")
    assert capsys.readouterr().err.splitlines() == [
        "`--run` is deprecated: use `--job`",
        "`ntt runs` is deprecated: use `ntt jobs`",
    ]
    args = parse(["runs", "submit", "ds", "--bank", "pets", "--field", "old"])
    assert args.label_field == "old" and "`--field` is deprecated: use `--label-field`" in capsys.readouterr().err
    args = parse(["bank", "report", "b", "refs.json"])
    cli._new_words(args)
    assert args.bank_cmd == "grade"
    assert capsys.readouterr().err == "`ntt bank report` is deprecated: use `ntt bank grade`\n"
    args = parse(["jobs", "status", "ds", "--job", "abc"])
    cli._new_words(args)
    assert args.job == "abc" and capsys.readouterr().err == "", "the new words say nothing"
    usage = build_parser().format_help()
    assert "jobs" in usage and "runs" not in usage
    assert "report" not in subparser("bank").format_help()
    assert "--field" not in subparser("jobs", "submit").format_help()
