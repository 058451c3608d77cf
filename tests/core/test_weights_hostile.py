"""Broken checkpoints and broken weights: one error naming the file (the CLI's one-line ``error:``, exit 2), or a
warning, never a traceback nor a bank of NaN features or a run with no detections and no word why."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest
import timm
import torch
from oracle_scenes import DOG, LookEncoder, OracleProposer, look_scene
from safetensors.torch import save_file

from ntt.bank.encoder import InvalidReferenceError, build_bank
from ntt.bank.memory import MemoryBank
from ntt.cli import main
from ntt.config import get_config
from ntt.models import clear_cache, get_dinov2, get_sam2
from ntt.models.dinov2 import build_dinov2
from ntt.models.sam2 import build_sam2_model
from ntt.models.weights import CheckpointError, WeightsNotFoundError, local_checkpoint, read_state_dict
from ntt.predict.predictor import Predictor
from ntt.types import Reference

SMOKE = ["--preset", "smoke", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


@pytest.fixture(scope="module")
def dinov2_state():
    """A DINOv2 ViT-S/14 state dict (timm's layout, 518 px), random but finite."""
    with torch.random.fork_rng():
        torch.manual_seed(3)
        vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=518, num_classes=0)
    return {k: v.contiguous() for k, v in vit.state_dict().items()}


@pytest.fixture(scope="module")
def dinov2_safetensors(dinov2_state, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_file(dinov2_state, str(path))
    return path


@pytest.fixture(scope="module")
def sam2_state():
    return build_sam2_model("sam2_hiera_t", 256, None, seed=5).model.state_dict()


def _garbage(folder: Path) -> Path:
    path = folder / "garbage.safetensors"
    path.write_bytes(b"\x10\0\0\0\0\0\0\0{not json}")
    return path


def _truncated(source: Path, folder: Path) -> Path:
    path = folder / "truncated.safetensors"
    path.write_bytes(source.read_bytes()[:-50])
    return path


# ---- unreadable files ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", ["garbage", "truncated"])
def test_a_corrupted_safetensors_checkpoint_is_one_error_naming_it(dinov2_safetensors, tmp_path, make):
    path = _garbage(tmp_path) if make == "garbage" else _truncated(dinov2_safetensors, tmp_path)
    for load in (
        lambda: read_state_dict(path),
        lambda: build_dinov2("dinov2_vits14", 224, path),
        lambda: build_sam2_model("sam2_hiera_t", 256, path),
    ):
        with pytest.raises(CheckpointError, match="unreadable checkpoint, truncated or corrupted") as err:
            load()
        assert str(err.value).startswith(f"{path}: ")


@pytest.mark.parametrize(
    "content, message",
    [
        pytest.param(
            {"model": "hello"},
            "not a checkpoint of tensors (entry 'model' is not a tensor but a str)",
            id="model-string",
        ),
        pytest.param({"a": 1, "b": torch.zeros(2)}, "entry 'a' is not a tensor but a int", id="number-entry"),
        pytest.param({"state_dict": {"x": [1.0, 2.0]}}, "entry 'x' is not a tensor but a list", id="nested-list"),
        pytest.param({}, "it holds none", id="empty"),
        pytest.param([torch.zeros(2)], "not a checkpoint of tensors", id="list"),
    ],
)
def test_a_checkpoint_of_something_else_than_tensors_is_refused(tmp_path, content, message):
    path = tmp_path / "odd.pth"
    torch.save(content, path)
    with pytest.raises(CheckpointError) as err:
        build_dinov2("dinov2_vits14", 224, path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_a_sam2_checkpoint_without_its_model_entry_is_refused(tmp_path):
    path = tmp_path / "sam2_hiera_tiny.pt"
    torch.save({"model": "hello"}, path)
    with pytest.raises(CheckpointError, match="no 'model' entry of tensors"):
        build_sam2_model("sam2_hiera_t", 256, path)


def test_odd_tensor_shapes_in_a_dinov2_checkpoint_are_one_error(dinov2_state, tmp_path):
    # timm's checkpoint filter resamples the position embedding: a 1-D one failed inside it with an IndexError.
    path = tmp_path / "odd.safetensors"
    save_file({**dinov2_state, "pos_embed": torch.zeros(5)}, str(path))
    with pytest.raises(CheckpointError, match="not a dinov2_vits14 checkpoint"):
        build_dinov2("dinov2_vits14", 224, path)


def _in_thread(action) -> BaseException | None:
    """``action``'s error, failing when it blocks (reading a FIFO waits for a writer forever)."""
    found = []

    def run():
        try:
            action()
        except BaseException as err:  # noqa: BLE001 - handed to the test
            found.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "reading the checkpoint blocked"
    return found[0] if found else None


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "link-to-dev-zero", "folder"])
def test_only_regular_files_are_read_as_checkpoints(tmp_path, kind):
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path = Path("/dev/zero")
    elif kind == "link-to-dev-zero":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()
    for action in (
        lambda: read_state_dict(path),
        lambda: local_checkpoint("dinov2", "dinov2_vits14_pretrain.pth", str(path)),
        lambda: get_dinov2(get_config("smoke", {"model": {"device": "cpu", "dinov2_checkpoint": str(path)}}).model),
    ):
        err = _in_thread(action)
        assert isinstance(err, CheckpointError) and str(path) in str(err) and "not a" in str(err), err


def test_a_missing_explicit_checkpoint_is_still_not_found(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        local_checkpoint("dinov2", "x.pth", str(tmp_path / "nope.pth"))


# ---- non-finite weights ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["all-nan", "one-inf"])
def test_dinov2_weights_that_are_not_finite_are_refused(dinov2_state, tmp_path, how):
    if how == "all-nan":
        state = {k: torch.full_like(v, float("nan")) for k, v in dinov2_state.items()}
    else:
        state = dict(dinov2_state)
        state["blocks.3.mlp.fc1.weight"] = state["blocks.3.mlp.fc1.weight"].clone()
        state["blocks.3.mlp.fc1.weight"][7, 5] = float("inf")
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="NaN or Inf weights") as err:
        build_dinov2("dinov2_vits14", 224, path)
    assert str(path) in str(err.value)
    if how == "one-inf":
        assert "1 of" in str(err.value) and "blocks.3.mlp.fc1.weight" in str(err.value)


def test_sam2_weights_that_are_not_finite_are_refused(sam2_state, tmp_path):
    nan = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in sam2_state.items()}
    path = tmp_path / "sam2_hiera_tiny.pt"
    torch.save({"model": nan}, path)
    with pytest.raises(CheckpointError, match="NaN or Inf weights"):
        get_sam2(get_config("smoke", {"model": {"device": "cpu", "sam2_checkpoint": str(path)}}).model)


def test_finite_weights_still_load_exactly(dinov2_state, dinov2_safetensors):
    loaded = read_state_dict(dinov2_safetensors)
    assert loaded.keys() == dinov2_state.keys() and all(torch.equal(loaded[k], dinov2_state[k]) for k in loaded)


# ---- through the CLI -------------------------------------------------------------------------------------------


def _refs_json(coco128) -> str:
    return str(coco128 / "annotations" / "instances_train2017.json")


@pytest.mark.parametrize("make", ["garbage", "truncated", "nan", "model-string", "fifo"])
def test_bank_build_with_a_broken_dinov2_checkpoint_exits_2(
    coco128, dinov2_safetensors, dinov2_state, tmp_path, capsys, make
):
    if make == "garbage":
        path = _garbage(tmp_path)
    elif make == "truncated":
        path = _truncated(dinov2_safetensors, tmp_path)
    elif make == "fifo":
        path = tmp_path / "fifo.pth"
        os.mkfifo(path)
    else:
        path = tmp_path / f"{make}.pth"
        nan = {k: torch.full_like(v, float("nan")) for k, v in dinov2_state.items()}
        torch.save(nan if make == "nan" else {"model": "hello"}, path)
    out = tmp_path / "b.safetensors"
    argv = ["bank", "build", _refs_json(coco128), "-o", str(out), "--shots", "1", "--classes", "dog"]
    code = main(argv + SMOKE + ["--dinov2-checkpoint", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith(f"error: {path}: ") and "Traceback" not in "\n".join(err), err
    assert not out.exists(), "no bank of broken features"


def test_segment_with_a_broken_sam2_checkpoint_exits_2(coco128, dinov2_safetensors, tmp_path, capsys):
    bank = tmp_path / "b.safetensors"
    build = ["bank", "build", _refs_json(coco128), "-o", str(bank), "--shots", "1", "--classes", "dog"]
    assert main(build + SMOKE + ["--dinov2-checkpoint", str(dinov2_safetensors)]) == 0
    capsys.readouterr()
    targets = coco128 / "annotations" / "instances_val2017.json"
    argv = ["segment", "--bank", str(bank), "--images", str(targets), "-o", str(tmp_path / "p.json")]
    argv += ["--max-images", "1", "--dinov2-checkpoint", str(dinov2_safetensors)]
    garbage = _garbage(tmp_path)
    assert main(argv + SMOKE + ["--sam2-checkpoint", str(garbage)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {garbage}: unreadable checkpoint"), err


@pytest.mark.parametrize(
    "flags, message",
    [
        pytest.param(
            ["--weights-seed", str(2**70)], "seed (--weights-seed) must be an integer in [0, 2**63 - 1]", id="seed"
        ),
        pytest.param(["--weights-seed", "-1"], "seed (--weights-seed) must be an integer in [0, 2**63 - 1]", id="neg"),
        pytest.param(["--dinov2-checkpoint", "x.pth"], "would ignore --dinov2-checkpoint", id="random-and-dinov2"),
        pytest.param(["--sam2-checkpoint", "x.pt"], "would ignore --sam2-checkpoint", id="random-and-sam2"),
        pytest.param(["--points-per-side", "1000"], "points_per_side must be <= 128", id="points-per-side"),
    ],
)
def test_settings_that_would_misuse_the_models_are_refused_before_they_load(coco128, tmp_path, capsys, flags, message):
    targets = coco128 / "annotations" / "instances_val2017.json"
    argv = [
        "segment",
        "--bank",
        str(tmp_path / "missing.safetensors"),
        "--images",
        str(targets),
        "-o",
        str(tmp_path / "p.json"),
    ]
    assert main(argv + SMOKE + ["--random-weights", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err, err


# ---- broken weights at run time: features and predicted IoUs ---------------------------------------------------


class _BrokenEncoder(LookEncoder):
    """DINOv2 with broken weights: NaN patch features (or all-zero ones)."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.full_like(super().__call__(images), self.value)


@pytest.mark.parametrize(
    "value, message", [(float("nan"), "not finite"), (float("inf"), "not finite"), (0.0, "all zero")]
)
def test_building_refuses_reference_features_that_are_not_finite(value, message):
    image, masks = look_scene([(60, 0, 0)])
    ref = Reference(image, DOG, "dog", masks[0], image_id="img", annotation_id=7)
    cfg = get_config("paper", {"model": {"device": "cpu"}})
    with pytest.raises(InvalidReferenceError, match=f"annotation 7.*reference features are {message}.*DINOv2 weights"):
        build_bank([ref], cfg, encoder=_BrokenEncoder(value))


class _NanIouProposer(OracleProposer):
    """SAM2 with broken weights: the oracle's masks, with NaN predicted IoUs."""

    def decode_points(self, feats, index, coords, chunk):
        logits, iou = super().decode_points(feats, index, coords, chunk)
        return logits, torch.full_like(iou, float("nan"))


def _dog_bank(cfg) -> MemoryBank:
    image, masks = look_scene([(60, 0, 0), (60, 2, 2)])
    refs = [Reference(image, DOG, "dog", m, image_id="ref", annotation_id=k) for k, m in enumerate(masks)]
    return build_bank(refs, cfg, encoder=LookEncoder())


def test_non_finite_predicted_ious_are_reported_once(caplog):
    cfg = get_config("paper", {"model": {"device": "cpu"}})
    bank = _dog_bank(cfg)
    target, _ = look_scene([(60, 1, 1), (60, 3, 0)])
    broken = Predictor(bank, cfg, proposer=_NanIouProposer(image_size=256), encoder=LookEncoder())
    with caplog.at_level(logging.WARNING, logger="ntt.predict.predictor"):
        found = broken.predict([target, target])
        broken.predict([target])
    warnings = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    assert len(warnings) == 1 and "Broken SAM2 weights" in warnings[0], warnings
    assert all(len(f) == 0 for f in found)
    caplog.clear()
    fine = Predictor(bank, cfg, proposer=OracleProposer(image_size=256), encoder=LookEncoder())
    with caplog.at_level(logging.WARNING, logger="ntt.predict.predictor"):
        assert len(fine.predict([target])[0]) > 0
    assert not [r for r in caplog.records if "non-finite" in r.getMessage()]
