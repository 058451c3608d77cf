"""Download a small COCO 2017 subset through FiftyOne's dataset zoo, exported in the demo's COCO layout.

Usage: python scripts/demo_data.py OUT_DIR [N_TRAIN] [N_VAL]
Writes OUT_DIR/annotations/instances_{train,val}2017.json and OUT_DIR/images/{train,val}2017/.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> int:
    out = Path(sys.argv[1])
    n_train = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    n_val = int(sys.argv[3]) if len(sys.argv) > 3 else 50
    if (out / "annotations" / "instances_val2017.json").is_file():
        return 0
    import fiftyone as fo
    import fiftyone.zoo as foz

    for split, n in (("train", n_train), ("validation", n_val)):
        name = "train2017" if split == "train" else "val2017"
        ds = foz.load_zoo_dataset("coco-2017", split=split, label_types=["segmentations"], max_samples=n, shuffle=False)
        ds.export(
            export_dir=str(out),
            dataset_type=fo.types.COCODetectionDataset,
            data_path=f"images/{name}",
            labels_path=f"annotations/instances_{name}.json",
            label_field="segmentations",
            export_media="symlink",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
