"""Shared test set-up: no network, isolated caches, paths to the shared real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Never touch the network, never read a user's checkpoint cache.
os.environ["NTT_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.pop("NTT_CHECKPOINT_DIR", None)
os.environ.pop("NTT_SAM2_CHECKPOINT", None)
os.environ.pop("NTT_DINOV2_CHECKPOINT", None)

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("NTT_TEST_DATA", REPO.parent / "shared" / "data"))
COCO128 = DATA / "coco128-seg"
FSS = DATA / "fss1000-mini"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("NTT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "ntt-cache"))


@pytest.fixture(scope="session")
def coco128() -> Path:
    if not (COCO128 / "annotations" / "instances_val2017.json").is_file():
        pytest.fail(f"shared test data missing at {COCO128} (set NTT_TEST_DATA)")
    return COCO128


@pytest.fixture(scope="session")
def fss() -> Path:
    if not (FSS / "images").is_dir():
        pytest.fail(f"shared test data missing at {FSS} (set NTT_TEST_DATA)")
    return FSS


@pytest.fixture
def smoke_config():
    """Tiny random-weight models on the CPU (SAM2 hiera-t at 256 px, DINOv2 ViT-S at 224 px, 16 prompts)."""
    from ntt.config import get_config

    return get_config("smoke", {"model": {"random_weights": True, "device": "cpu"}})


@pytest.fixture(scope="session")
def refs(coco128) -> dict:
    """A small valid reference file's content: the first 6 COCO128 train images with their annotations (tests
    edit copies of it)."""
    import json

    data = json.loads((coco128 / "annotations" / "instances_train2017.json").read_text())
    images = data["images"][:6]
    ids = {img["id"] for img in images}
    anns = [a for a in data["annotations"] if a["image_id"] in ids]
    return {"images": images, "annotations": anns, "categories": data["categories"]}


@pytest.fixture(scope="session")
def small_images(coco128, tmp_path_factory) -> list[Path]:
    """Copies of the first four COCO128 val images at most 192 px wide: real pictures, fast command runs."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("small-images")
    out = []
    for src in sorted((coco128 / "images" / "val2017").glob("*.jpg"))[:4]:
        with Image.open(src) as img:
            img.thumbnail((192, 192))
            out.append(folder / src.name)
            img.save(out[-1], quality=90)
    return out
