"""The CLI's reference-selection options: --split, comma-separated --classes, --shots checks."""

from __future__ import annotations

import pytest

from ntt.bank import sampling
from ntt.bank.memory import MemoryBank
from ntt.cli import build_parser, main, pipeline
from ntt.io.coco import load_json

SMOKE = ["--preset", "smoke", "--random-weights", "--device", "cpu"]


@pytest.fixture(scope="module")
def refs(coco128):
    return coco128 / "annotations" / "instances_train2017.json"


@pytest.mark.parametrize(
    "classes, expected",
    [
        (["boat,bird"], ["boat", "bird"]),
        (["boat", "bird"], ["boat", "bird"]),
        (["boat,bird", "dining table", "7"], ["boat", "bird", "dining table", "7"]),
    ],
)
@pytest.mark.parametrize("command", [["bank", "build", "r.json"], ["bank", "add", "b.safetensors", "r.json"]])
def test_classes_accept_spaces_commas_and_mixes(command, classes, expected):
    args = build_parser().parse_args(command + ["-o", "out.safetensors", "--classes", *classes])
    assert args.classes == expected and args.split is None


@pytest.mark.parametrize("command", [["bank", "build", "r.json"], ["bank", "add", "b.safetensors", "r.json"]])
def test_split_option(command):
    args = build_parser().parse_args(command + ["-o", "out.safetensors", "--split", "coco-novel"])
    assert args.split == "coco-novel" and args.classes is None


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--shots", "0"], "--shots: must be at least 1"),
        (["--shots", "-5"], "--shots: must be at least 1"),
        (["--shots", "ten"], "--shots: not a whole number"),
        (["--split", "coco-novel", "--classes", "dog"], "not allowed with argument"),
        (["--classes", "dog", "--split", "coco-novel"], "not allowed with argument"),
        (["--split", "voc-split7"], "invalid choice"),
        (["--classes", ","], "no class name given"),
    ],
)
def test_bad_reference_options_exit_2_with_an_error(refs, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["bank", "build", str(refs), "-o", str(tmp_path / "b.safetensors"), *extra, *SMOKE])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err
    assert not (tmp_path / "b.safetensors").exists()


def test_split_and_classes_together_are_refused_by_the_pipeline(refs, smoke_config):
    with pytest.raises(ValueError, match="either --split or --classes"):
        pipeline.bank_from_coco(refs, smoke_config, shots=1, classes=["bus"], split="voc-split1")


def _shot_ids(path):
    return [shot["annotation_id"] for shot in MemoryBank.load(path).shots]


def test_split_bank_holds_the_protocol_draw(refs, tmp_path, capsys):
    # voc-split1 in COCO names: bus, couch, cow, bird, motorcycle; COCO128 train has no valid couch and no cow.
    out = tmp_path / "split.safetensors"
    assert (
        main(
            ["bank", "build", str(refs), "-o", str(out), "--shots", "1", "--seed", "42", "--split", "voc-split1"]
            + SMOKE
        )
        == 0
    )
    data = load_json(refs)
    expected = sampling.sample_shots(data, sampling.split_category_ids(data, "voc-split1"), 1, 42, explicit=False)
    assert _shot_ids(out) == [a["id"] for a in expected]
    assert MemoryBank.load(out).shots_per_class() == {"motorcycle": 1, "bird": 1, "bus": 1}
    same = tmp_path / "classes.safetensors"
    classes = ["--classes", "bus,bird", "motorcycle"]
    assert main(["bank", "build", str(refs), "-o", str(same), "--shots", "1", "--seed", "42", *classes] + SMOKE) == 0
    assert _shot_ids(same) == _shot_ids(out)
