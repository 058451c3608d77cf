"""End-to-end jobs on COCO files: build a bank, segment targets into COCO results, evaluate them."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import coco
from .atomic import write_bytes_atomic
from .bank import MemoryBank
from .config import DINOV2_MODELS, NTTConfig
from .evaluation import evaluate_results
from .references import build_bank
from .segmenter import ImageResult, Segmenter

log = logging.getLogger(__name__)


def bank_from_coco(
    refs_json: str | Path,
    cfg: NTTConfig,
    image_root: str | Path | None = None,
    shots: int | None = None,
    seed: int = 33,
    classes: list[str] | None = None,
    box_refs: bool = False,
    progress=None,
) -> MemoryBank:
    """Build a bank from a COCO instance JSON.

    With ``shots``, references are sampled by the paper's protocol (seeded); otherwise every non-crowd
    annotation of the chosen classes is a shot. ``box_refs`` ignores masks and prompts SAM2 with boxes.
    """
    data = coco.load_json(refs_json)
    root = coco.resolve_image_root(refs_json, image_root, data)
    cat_ids = coco.select_categories(data, classes)
    explicit = bool(classes)
    if shots is not None:
        anns = coco.sample_shots(data, cat_ids, shots, seed, explicit)
    else:
        anns = coco.all_annotations(data, cat_ids, explicit)
    refs = coco.references_from_coco(data, root, anns, box_refs)
    bank = build_bank(refs, cfg, progress=progress)
    bank.info.update({"source": str(refs_json), "shots_arg": shots, "seed": seed})
    return bank


def adopt_bank_encoder(cfg: NTTConfig, bank: MemoryBank, explicit_dinov2: bool = False) -> NTTConfig:
    """Use the bank's DINOv2 encoder and input size for targets (unless the user named one).

    A bank from a custom encoder (not a known DINOv2 name) leaves the config alone: the caller supplies
    that encoder."""
    if not explicit_dinov2 and bank.encoder["name"] in DINOV2_MODELS:
        cfg.model.dinov2 = bank.encoder["name"]
        cfg.model.dinov2_image_size = int(bank.encoder["image_size"])
    return cfg.validate()


def segment_targets(
    bank: MemoryBank,
    targets: Sequence[tuple[int, Path]],
    cfg: NTTConfig,
    output: str | Path,
    box_inclusive: bool = False,
    on_image: Callable[[ImageResult], None] | None = None,
    segmenter: Segmenter | None = None,
) -> dict[str, Any]:
    """Segment (image id, path) targets and write COCO results to ``output`` plus a sidecar
    ``<output stem>.meta.json`` (bank classes, segmented and skipped images, config).

    Unreadable images are skipped with their reason; the run goes on with the rest.
    Returns the sidecar's content.
    """
    segmenter = segmenter or Segmenter(bank, cfg)
    ids = {str(path): image_id for image_id, path in targets}
    done, skipped, count = [], [], 0
    output = Path(output)
    with JsonListWriter(output) as writer:  # streamed: memory does not grow with the number of images
        for res in segmenter.predict_files([p for _, p in targets]):
            image_id = ids[str(res.source)]
            if res.instances is None:
                skipped.append({"image_id": image_id, "path": str(res.source), "reason": res.error})
            else:
                done.append(image_id)
                for item in coco.instances_to_results(image_id, res.instances, box_inclusive):
                    writer.write(item)
                    count += 1
            if on_image:
                on_image(res)
    meta = {
        "bank": bank.info.get("path"),
        "category_ids": bank.class_ids,
        "classes": bank.classes,
        "image_ids": done,
        "skipped": skipped,
        "detections": count,
        "config": cfg.to_dict(),
    }
    write_json_atomic(sidecar_path(output), meta)
    return meta


def sidecar_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.stem + ".meta.json")


def evaluate_files(
    gt_json: str | Path,
    preds_json: str | Path,
    cat_ids: list[int] | None = None,
) -> dict[str, dict[str, float]]:
    """bbox and segm AP of a results file; restricted to the bank's classes and the segmented images
    recorded in the results' sidecar when present (``cat_ids`` overrides the classes)."""
    gt = coco.load_json(gt_json)
    try:
        results = json.loads(Path(preds_json).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{preds_json}: file not found") from None
    if not isinstance(results, list):
        raise ValueError(f"{preds_json}: a COCO results file is a JSON list")
    img_ids = None
    meta_path = sidecar_path(preds_json)
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        img_ids = meta.get("image_ids")
        cat_ids = cat_ids if cat_ids is not None else meta.get("category_ids")
    if cat_ids is None:
        cat_ids = sorted({r["category_id"] for r in results})
        log.warning("no bank classes known (no sidecar, no --bank): evaluating the predicted classes only")
    return evaluate_results(gt, results, cat_ids=cat_ids, img_ids=img_ids)


class JsonListWriter:
    """Writes a JSON list item by item into a temp file, renamed over ``path`` only when complete."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        self.file = os.fdopen(fd, "w")
        self.first = True

    def write(self, item: Any) -> None:
        self.file.write(("[" if self.first else ",") + json.dumps(item))
        self.first = False

    def __enter__(self) -> JsonListWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.file.write("[]" if self.first else "]")
            self.file.close()
            if exc_type is None:
                os.replace(self.tmp, self.path)
        finally:
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temp file and a rename, so a crash never leaves half a file."""
    write_bytes_atomic(path, json.dumps(data).encode())
