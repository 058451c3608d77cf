"""FiftyOne test set-up: an isolated database, the plugin registered from this checkout, tmp bank dir.

The environment is set before fiftyone is imported anywhere in the test process.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_ROOT = Path(tempfile.mkdtemp(prefix="ntt-fo-tests-"))
_PLUGINS = _ROOT / "plugins"
_PLUGINS.mkdir()
(_PLUGINS / "ntt-plugin").symlink_to(REPO, target_is_directory=True)
os.environ.update(
    FIFTYONE_DATABASE_DIR=str(_ROOT / "db"),
    FIFTYONE_PLUGINS_DIR=str(_PLUGINS),
    FIFTYONE_DO_NOT_TRACK="true",
    FIFTYONE_DATABASE_VALIDATION="false",
    FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS="true",
    FIFTYONE_MODEL_ZOO_DIR=str(_ROOT / "zoo"),
    NTT_BANK_DIR=str(_ROOT / "banks"),
)

PLUGIN = "@ntt/ntt"


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.fiftyone)


@pytest.fixture(scope="session")
def coco_source(coco128):
    """COCO128 val (first 12 images) with instance masks in field ``gt``; never modified by tests."""
    import fiftyone as fo

    ds = fo.Dataset.from_dir(
        dataset_type=fo.types.COCODetectionDataset,
        data_path=str(coco128 / "images" / "val2017"),
        labels_path=str(coco128 / "annotations" / "instances_val2017.json"),
        label_types=["segmentations"],
        label_field="gt",
        max_samples=12,
    )
    yield ds
    ds.delete()


@pytest.fixture
def dataset(coco_source):
    """A fresh clone of the COCO128 dataset for one test."""
    ds = coco_source.clone()
    yield ds
    ds.delete()


@pytest.fixture
def random_config():
    """Tiny random-weight models; filters opened up so random proposals reach the output."""
    from ntt.config import get_config

    return get_config(
        "smoke",
        {"model": {"random_weights": True, "device": "cpu"}, "segment": {"pred_iou_thresh": 0.0, "nms_thresh": 1.0}},
    )
