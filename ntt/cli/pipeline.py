"""End-to-end jobs on COCO files: build a bank, segment targets into COCO results, evaluate them."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ntt.bank import sampling
from ntt.bank.encoder import build_bank
from ntt.bank.memory import MemoryBank
from ntt.config import DINOV2_MODELS, NTTConfig, derive
from ntt.io import coco
from ntt.io.atomic import AtomicWriter, file_sha256, write_bytes_atomic
from ntt.io.evaluation import evaluate_results
from ntt.predict.segmenter import ImageResult, Segmenter

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
    split: str | None = None,
) -> MemoryBank:
    """Build a bank from a COCO instance JSON.

    With ``shots``, references are sampled by the paper's protocol (``ntt.bank.sampling``, seeded); otherwise
    every non-crowd annotation of the chosen classes is a shot. Classes: ``classes`` (names or ids, comma
    lists expanded) or a named ``split`` (``ntt.bank.sampling.SPLITS``), not both; default all. ``box_refs``
    ignores masks and prompts SAM2 with boxes.

    Each shot's ``source`` is the file's sha256 (``references_digest``): its image and annotation ids are this
    file's, which another file may repeat (``MemoryBank.holds``).
    """
    data = coco.load_json(refs_json, kind="references")
    source = references_digest(refs_json)  # after the read: a missing or unreadable file is named by it
    root = coco.resolve_image_root(refs_json, image_root, data)
    cat_ids, explicit = _chosen_categories(data, classes, split)
    if shots is not None:
        anns = sampling.sample_shots(data, cat_ids, shots, seed, explicit)
    else:
        anns = sampling.all_annotations(data, cat_ids, explicit)
    refs = coco.references_from_coco(data, root, anns, box_refs)
    for ref in refs:
        ref.extra["source"] = source
    bank = build_bank(refs, cfg, progress=progress)
    bank.info.update({"source": str(refs_json), "shots_arg": shots, "seed": seed, "split": split})
    return bank


def references_digest(refs_json: str | Path) -> str:
    """The ``source`` of shots from a COCO references file: the sha256 (hex) of its bytes. A changed file is
    another source (its ids may name other labels now)."""
    return file_sha256(Path(refs_json))


def _chosen_categories(data: dict, classes: list[str] | None, split: str | None) -> tuple[list[int], bool]:
    """Category ids to build from, and whether the user named them (then a class without any valid
    reference is an error; a split's or the default's empty classes are only warned about)."""
    classes = sampling.parse_class_list(classes)
    if split and classes:
        raise ValueError("give either --split or --classes, not both")
    if split:
        return sampling.split_category_ids(data, split), False
    return coco.select_categories(data, classes), bool(classes)


def adopt_bank_encoder(cfg: NTTConfig, encoder: dict, explicit_dinov2: bool = False) -> NTTConfig:
    """Use the bank's DINOv2 encoder (``bank.encoder``: its name and input size) for targets (unless the user
    named one).

    A bank from a custom encoder (not a known DINOv2 name) leaves the config alone: the caller supplies
    that encoder."""
    if not explicit_dinov2 and encoder["name"] in DINOV2_MODELS:
        return derive(cfg, model={"dinov2": encoder["name"], "dinov2_image_size": int(encoder["image_size"])})
    return cfg.validate()


class NothingSegmented(ValueError):
    """No target could be read: nothing is written (an earlier results file is kept). ``skipped``: each image's
    ``{"image_id", "path", "reason"}``."""

    def __init__(self, output: Path, skipped: list[dict]):
        self.skipped = skipped
        super().__init__(
            f"none of the {len(skipped)} image(s) could be read, so nothing was written (an earlier {output.name} "
            f"is as it was); the first: {skipped[0]['reason']}"
        )


def segment_targets(
    bank: MemoryBank,
    targets: Iterable[tuple[int, Path]],
    cfg: NTTConfig,
    output: str | Path,
    box_inclusive: bool = False,
    on_image: Callable[[ImageResult], None] | None = None,
    segmenter: Segmenter | None = None,
) -> dict[str, Any]:
    """Segment (image id, path) targets and write COCO results to ``output`` plus a sidecar
    ``<output stem>.meta.json`` (bank classes, segmented and skipped images, file -> image id map, config,
    and the sha256 of the results it describes, so a results file is never paired with another run's sidecar).

    Unreadable images are skipped with their reason; the run goes on with the rest. Both files are complete on
    disk before either replaces its earlier version, so running out of space leaves the earlier pair as it was.
    Returns the sidecar's content.

    Raises:
        NothingSegmented: every target was unreadable (nothing is written).
    """
    targets = list(targets)  # read twice: the paths to load, then each result's id (by position: paths can repeat)
    segmenter = segmenter or Segmenter(bank, cfg)
    done, skipped, count = [], [], 0
    output = Path(output)
    results = JsonListWriter(output)  # streamed: memory does not grow with the number of images
    sidecar = None
    try:
        for (image_id, _), res in zip(targets, segmenter.run([p for _, p in targets]), strict=True):
            if res.instances is None:
                skipped.append({"image_id": image_id, "path": str(res.source), "reason": res.error})
            else:
                done.append(image_id)
                for item in coco.instances_to_results(image_id, res.instances, box_inclusive, bank.shots):
                    results.write(item)
                    count += 1
            if on_image:
                on_image(res)
        if skipped and not done:
            raise NothingSegmented(output, skipped)
        results.finish()
        meta = {
            "bank": bank.info.get("path"),
            "bank_fingerprint": bank.fingerprint,
            "category_ids": bank.class_ids,
            "classes": bank.classes,
            "image_ids": done,
            "files": {str(path): image_id for image_id, path in targets},
            "skipped": skipped,
            "detections": count,
            "results_sha256": results.sha256,
            "config": cfg.to_dict(),
        }
        sidecar = AtomicWriter(sidecar_path(output))
        sidecar.write(json.dumps(meta).encode())
        sidecar.flush()
    except BaseException:
        results.abort()
        if sidecar is not None:
            sidecar.abort()
        raise
    results.commit()  # a crash between the two renames pairs new results with the old sidecar: their sha256s differ,
    sidecar.commit()  # and ``ntt evaluate`` says so instead of mixing them
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
    recorded in the results' sidecar when present (``cat_ids`` overrides the classes).

    Images segmented from a folder are matched to the ground truth by file name (the sidecar's file -> id
    map), so a folder whose file names are not COCO ids is still evaluated against the right images.
    """
    gt = coco.load_json(gt_json, kind="ground truth")
    results = coco.load_results(preds_json)
    meta = _sidecar_for(preds_json)
    img_ids = None
    if meta is not None:
        remap = _ids_by_file_name(meta.get("files") or {}, gt)
        results = [{**r, "image_id": remap.get(r["image_id"], r["image_id"])} for r in results]
        img_ids = [remap.get(i, i) for i in meta.get("image_ids", [])]
        cat_ids = cat_ids if cat_ids is not None else meta.get("category_ids")
    _check_mask_sizes(results, gt, preds_json)
    if cat_ids is None:
        cat_ids = sorted({r["category_id"] for r in results})
        log.warning("no bank classes known (no sidecar, no --bank): evaluating the predicted classes only")
    return evaluate_results(gt, results, cat_ids=cat_ids, img_ids=img_ids)


def _sidecar_for(preds_json: str | Path) -> dict | None:
    """The results' sidecar, checked to describe exactly these results; None when there is none."""
    path = sidecar_path(preds_json)
    if not path.is_file():
        return None
    meta = coco.load_json_file(path)
    want = meta.get("results_sha256") if isinstance(meta, dict) else None
    if not isinstance(meta, dict) or (want and want != file_sha256(Path(preds_json))):
        raise ValueError(
            f"{path} does not describe {preds_json} (a run was stopped while writing them, or one of them was "
            "replaced): run `ntt segment` again, or move the sidecar away to evaluate without it"
        )
    _check_sidecar(meta, path)
    return meta


def _check_sidecar(meta: dict, path: Path) -> None:
    """The parts of a sidecar ``evaluate_files`` reads: ``files`` {path: image id}, ``image_ids`` and
    ``category_ids`` lists of ids (a hand-edited or foreign file is named, not crashed on)."""
    files = meta.get("files", {})
    if not isinstance(files, dict) or not _ids(list(files.values())):
        problem = "'files' must map file paths to image ids"
    elif not _ids(meta.get("image_ids", [])):
        problem = "'image_ids' must be a list of image ids"
    elif meta.get("category_ids") is not None and not _ids(meta["category_ids"]):
        problem = "'category_ids' must be a list of category ids"
    else:
        return
    raise ValueError(f"{path}: not a sidecar written by `ntt segment` ({problem}): move it away to evaluate without it")


def _ids(values) -> bool:
    return isinstance(values, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def _check_mask_sizes(results: list[dict], gt: dict, where: str | Path) -> None:
    """A result's RLE must have its ground-truth image's size (pycocotools would silently score it as a miss)."""
    sizes = {img["id"]: [img["height"], img["width"]] for img in gt["images"]}
    for i, res in enumerate(results):
        seg = res.get("segmentation")
        want = sizes.get(res["image_id"])
        if isinstance(seg, dict) and want is not None and list(seg["size"]) != want:
            raise ValueError(
                f"{where}: results[{i}] (image {res['image_id']}): segmentation size {seg['size']} is not its "
                f"image's [height, width] {want} in the ground truth"
            )


def _ids_by_file_name(files: dict[str, int], gt: dict) -> dict[int, int]:
    """Sidecar image id -> ground-truth image id, for files whose name is one (unique) GT ``file_name``."""
    by_name: dict[str, list[int]] = {}
    for img in gt["images"]:
        by_name.setdefault(Path(img["file_name"]).name, []).append(img["id"])
    remap = {}
    for path, image_id in files.items():
        found = by_name.get(Path(path).name, [])
        if len(found) == 1:
            remap[image_id] = found[0]
    return remap


class JsonListWriter:
    """Writes a JSON list item by item into a temp file, renamed over ``path`` only when complete: as a ``with``
    block (committed on a clean exit), or by ``finish`` then ``commit`` (or ``abort``).

    ``sha256`` is the digest of the file as written."""

    def __init__(self, path: Path):
        self._out = AtomicWriter(path)
        self.first = True

    @property
    def sha256(self) -> str:
        return self._out.sha256

    def write(self, item: Any) -> None:
        self._out.write((("[" if self.first else ",") + json.dumps(item)).encode())
        self.first = False

    def finish(self) -> None:
        """Close the list and make it durable, still under its temp name."""
        self._out.write(b"[]" if self.first else b"]")
        self._out.flush()

    def commit(self) -> None:
        self._out.commit()

    def abort(self) -> None:
        self._out.abort()

    def __enter__(self) -> JsonListWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
            return
        self.finish()
        self.commit()


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temp file and a rename, so a crash never leaves half a file."""
    write_bytes_atomic(path, json.dumps(data).encode())


def labelled_references(bank: MemoryBank, refs_json: str | Path, image_root: str | Path | None = None) -> list:
    """The bank's reference images in a COCO instance JSON, each with its labelled instances of the bank's
    classes (crowd regions left out): the ground truth ``grading.grade`` measures the shots against. A
    box-only annotation's instance is its box, filled (as a box-only reference's in FiftyOne).

    Only the images whose shots came from this file are taken (``ntt.bank.memory.on_image``: by the shots' ``source``,
    the file's sha256; a shot without one, from an older bank, by image id alone), each with ``origin`` the file's
    sha256. The file's categories map to the bank's classes by name (``MemoryBank.add`` merged them so)."""
    from ntt.grading.report import LabelledImage

    data = coco.load_json(refs_json, kind="references")  # the file the shots came from, read as it was then
    origin = references_digest(refs_json)
    root = coco.resolve_image_root(refs_json, image_root, data)
    wanted = {str(s.get("image_id")) for s in bank.shots if s.get("source") in (None, origin)}  # on_image's rule
    class_of = _bank_class_ids(bank, data)
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        if int(ann["category_id"]) in class_of and not ann.get("iscrowd"):
            by_image.setdefault(ann["image_id"], []).append(ann)
    images = [img for img in data["images"] if str(img["id"]) in wanted]
    if not images:
        raise ValueError(
            f"{refs_json}: none of the bank's reference images came from this file (shots record the sha256 of the "
            "file they came from: a file changed since is another one)"
        )
    return [
        LabelledImage(
            img["id"],
            root / img["file_name"],
            [coco.instance_mask(a, img) for a in by_image.get(img["id"], [])],
            [class_of[int(a["category_id"])] for a in by_image.get(img["id"], [])],
            origin=origin,
        )
        for img in images
    ]


def _bank_class_ids(bank: MemoryBank, data: dict) -> dict[int, int]:
    """The file's category id -> the bank's class id, for the categories named as a bank class."""
    ours = {c["name"]: c["id"] for c in bank.classes}
    return {cid: ours[name] for cid, name in coco.category_names(data).items() if name in ours}
