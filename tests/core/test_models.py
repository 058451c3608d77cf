"""Model wrappers: Meta's checkpoint formats generated at test time, weight resolution, seeding, cache."""

from __future__ import annotations

import pickle
import time

import pytest
import timm
import torch
from safetensors.torch import save_file

from ntt.bank.memory import BankError, MemoryBank
from ntt.config import get_config
from ntt.models import clear_cache, encoder_identity, get_dinov2, get_sam2
from ntt.models.dinov2 import build_dinov2
from ntt.models.sam2 import build_sam2_model
from ntt.models.weights import CheckpointError, WeightsNotFoundError, read_state_dict, resolve_checkpoint


def _cfg(**model):
    base = {"device": "cpu", "sam2_image_size": 256, "dinov2_image_size": 224}
    return get_config("smoke", {"model": {**base, **model}})


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


@pytest.fixture(scope="module")
def sam2_ckpt(tmp_path_factory):
    """A SAM2 hiera-t checkpoint in Meta's format: {"model": state_dict}, saved with torch.save."""
    source = build_sam2_model("sam2_hiera_t", 256, None, seed=5)
    path = tmp_path_factory.mktemp("ckpt") / "sam2_hiera_tiny.pt"
    torch.save({"model": source.model.state_dict()}, path)
    return source, path


@pytest.fixture(scope="module")
def dinov2_ckpt(tmp_path_factory):
    """A DINOv2 ViT-S/14 checkpoint in Meta's format: plain state dict at 518 px with a mask_token."""
    with torch.random.fork_rng():
        torch.manual_seed(3)
        source = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=518, num_classes=0)
    state = dict(source.state_dict())
    state["mask_token"] = torch.zeros(1, source.embed_dim)
    assert state["pos_embed"].shape == (1, 37 * 37 + 1, 384)
    path = tmp_path_factory.mktemp("ckpt") / "dinov2_vits14_pretrain.pth"
    torch.save(state, path)
    return source.eval(), path


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("how", ["dir", "env", "explicit"])
def test_sam2_loads_meta_checkpoint(sam2_ckpt, monkeypatch, how):
    source, path = sam2_ckpt
    overrides = {}
    if how == "dir":
        monkeypatch.setenv("NTT_CHECKPOINT_DIR", str(path.parent))
    elif how == "env":
        monkeypatch.setenv("NTT_SAM2_CHECKPOINT", str(path))
    else:
        overrides["sam2_checkpoint"] = str(path)
    loaded = get_sam2(_cfg(sam2="sam2_hiera_t", **overrides).model)
    assert _same_weights(loaded.model, source.model)
    x = torch.rand(1, 3, 256, 256)
    a, b = loaded.encode(x), source.encode(x)
    assert torch.equal(a["image_embed"], b["image_embed"])


def test_sam2_rejects_checkpoint_of_another_variant(tmp_path):
    small = build_sam2_model("sam2_hiera_t", 256, None, seed=0)
    path = tmp_path / "sam2_hiera_small.pt"
    torch.save({"model": small.model.state_dict()}, path)
    with pytest.raises(CheckpointError, match="could not load SAM2 sam2_hiera_s"):
        get_sam2(_cfg(sam2="sam2_hiera_s", sam2_checkpoint=str(path)).model)


def test_dinov2_loads_meta_checkpoint_at_518(dinov2_ckpt):
    source, path = dinov2_ckpt
    loaded = build_dinov2("dinov2_vits14", 518, path)
    assert _same_weights(loaded.vit, source)
    x = torch.rand(1, 3, 518, 518)
    feats = loaded(x)
    assert feats.shape == (1, 37, 37, 384)
    norm = (x - loaded.mean) / loaded.std
    expected = source.forward_features(norm)[:, 1:].reshape(1, 37, 37, 384)
    torch.testing.assert_close(feats, expected)


def test_dinov2_meta_checkpoint_resamples_to_smaller_input(dinov2_ckpt, monkeypatch):
    source, path = dinov2_ckpt
    monkeypatch.setenv("NTT_DINOV2_CHECKPOINT", str(path))
    loaded = get_dinov2(_cfg(dinov2="dinov2_vits14", dinov2_image_size=224).model)
    assert loaded.vit.pos_embed.shape == (1, 16 * 16 + 1, 384)
    torch.testing.assert_close(loaded.vit.blocks[3].attn.qkv.weight, source.blocks[3].attn.qkv.weight)
    assert loaded(torch.rand(2, 3, 224, 224)).shape == (2, 16, 16, 384)


def test_dinov2_loads_timm_safetensors(dinov2_ckpt, tmp_path):
    source, _ = dinov2_ckpt
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    assert _same_weights(build_dinov2("dinov2_vits14", 518, path).vit, source)


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"weights": _Evil()}, f)
    with pytest.raises(CheckpointError, match="refused for safety") as err:
        read_state_dict(path)
    assert "weights_only=False" not in str(err.value)  # never suggest the unsafe way
    with pytest.raises(CheckpointError, match="refused for safety"):
        build_dinov2("dinov2_vits14", 224, path)
    with pytest.raises(CheckpointError, match="refused for safety"):
        build_sam2_model("sam2_hiera_t", 256, path)


@pytest.mark.parametrize("keep", [0.5, 0.1])
def test_truncated_checkpoint_is_one_clear_error(sam2_ckpt, tmp_path, keep):
    _, path = sam2_ckpt
    raw = path.read_bytes()
    cut = tmp_path / "sam2_hiera_tiny.pt"
    cut.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(CheckpointError, match=str(cut)):
        build_sam2_model("sam2_hiera_t", 256, cut)


def test_dinov2_checkpoint_of_another_size_is_one_clear_error(dinov2_ckpt):
    _, path = dinov2_ckpt
    with pytest.raises(CheckpointError, match="not a dinov2_vitb14 checkpoint"):
        build_dinov2("dinov2_vitb14", 224, path)


def test_same_weights_in_both_formats_share_a_fingerprint(dinov2_ckpt, tmp_path):
    # A bank built from Meta's .pth must be usable with the same weights loaded as timm's safetensors,
    # and a different file under the same name must be refused, naming both.
    source, meta_path = dinov2_ckpt
    timm_path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(timm_path))
    cfg = _cfg(dinov2="dinov2_vits14").model
    from_meta = encoder_identity(build_dinov2("dinov2_vits14", 224, meta_path), cfg)
    from_timm = encoder_identity(build_dinov2("dinov2_vits14", 224, timm_path), cfg)
    assert from_meta["fingerprint"] == from_timm["fingerprint"]
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    impostor = other_dir / meta_path.name
    torch.save({k: v + 0.01 for k, v in source.state_dict().items()}, impostor)
    other = encoder_identity(build_dinov2("dinov2_vits14", 224, impostor), cfg)
    assert other["fingerprint"] != from_meta["fingerprint"]
    bank = MemoryBank(
        classes=[{"id": 1, "name": "a"}],
        shot_features=torch.ones(1, 384).numpy(),  # a bank refuses all-zero features (a shot that matches nothing)
        shot_class_ids=[1],
        shots=[{"annotation_id": 1}],
        encoder=from_meta,
    )
    bank.check_encoder(from_timm)
    with pytest.raises(BankError, match=from_meta["fingerprint"][:12]) as err:
        bank.check_encoder(other)
    assert other["fingerprint"][:12] in str(err.value)


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_offline_miss_fails_fast_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv("NTT_CHECKPOINT_DIR", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_checkpoint("sam2", "sam2_hiera_large.pt", "facebook/sam2-hiera-large")
    assert time.perf_counter() - start < 1.0
    msg = str(err.value)
    assert "sam2_hiera_large.pt" in msg and str(tmp_path) in msg
    assert "NTT_SAM2_CHECKPOINT" in msg and "--random-weights" in msg


def test_explicit_missing_path_is_an_error(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        resolve_checkpoint("dinov2", "x.pth", "hub/x", explicit=str(tmp_path / "nope.pth"))


def test_random_weights_are_seeded():
    a = build_dinov2("dinov2_vits14", 224, None, seed=1)
    b = build_dinov2("dinov2_vits14", 224, None, seed=1)
    c = build_dinov2("dinov2_vits14", 224, None, seed=2)
    assert _same_weights(a, b)
    assert not _same_weights(a, c)
    s1 = build_sam2_model("sam2_hiera_t", 256, None, seed=1)
    s2 = build_sam2_model("sam2_hiera_t", 256, None, seed=1)
    assert _same_weights(s1, s2)


def test_random_weights_do_not_touch_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_dinov2("dinov2_vits14", 224, None, seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_models_are_cached_per_config():
    cfg = _cfg(random_weights=True)
    assert get_dinov2(cfg.model) is get_dinov2(cfg.model)
    assert get_sam2(cfg.model) is get_sam2(cfg.model)
    other = _cfg(random_weights=True, seed=4)
    assert get_dinov2(other.model) is not get_dinov2(cfg.model)
