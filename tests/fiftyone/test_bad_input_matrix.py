"""Unreadable files on every path a user can take: the CLI, ``nfo.segment``, ``apply_model`` and a sharded run,
crossed with the presets, prompt modes, candidate-cache states, batch sizes and where the bad files sit.

The full product does not fit CI's time, so ``ROWS`` is a pairwise covering array (every pair of values of any
two dimensions is in some row; ``test_the_rows_cover_every_pair`` checks it), seeded with the rows that broke:
a trailing unreadable file after a full batch with guided prompts and the cache on (``Encoded.join([])``), and a
run where every file is unreadable. Each row runs the same good images without and with the bad files, through
the same entry point and settings: the run must end without a traceback, every good image must get exactly the
detections of the clean run, and every bad file must be named with its reason. Sizes are reduced (SAM2 at 256 px,
DINOv2 at 224 px, small copies of real COCO images, few prompts) so that ``paper`` and ``fast`` fit on a CPU.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from pathlib import Path

import pytest
from PIL import Image

import ntt.fo as nfo

pytestmark = pytest.mark.slow

DIMENSIONS = {
    "entry": ("cli", "sdk", "apply"),
    "preset": ("paper", "fast", "lite", "smoke"),
    "prompt": ("grid", "guided"),
    "cache": ("off", "fill", "hit"),
    "batch": (1, 2, 3),
    "bad": ("first", "middle", "last", "whole_batch", "all"),
}
# (entry, preset, prompt mode, cache, batch size, where the unreadable files are)
ROWS = [
    ("cli", "lite", "guided", "fill", 1, "last"),  # the report: `ntt segment --preset lite`, a bad file last
    ("sdk", "lite", "guided", "hit", 3, "last"),
    ("apply", "smoke", "guided", "hit", 2, "whole_batch"),
    ("cli", "fast", "guided", "hit", 1, "all"),
    ("sdk", "smoke", "grid", "off", 1, "middle"),
    ("apply", "fast", "grid", "fill", 3, "first"),
    ("cli", "paper", "grid", "off", 2, "last"),
    ("sdk", "lite", "grid", "fill", 2, "all"),
    ("apply", "paper", "guided", "off", 3, "all"),
    ("cli", "smoke", "grid", "fill", 3, "whole_batch"),
    ("sdk", "paper", "grid", "hit", 1, "first"),
    ("apply", "lite", "guided", "hit", 2, "middle"),
    ("cli", "lite", "guided", "off", 2, "first"),
    ("sdk", "fast", "grid", "off", 1, "whole_batch"),
    ("cli", "paper", "grid", "fill", 3, "middle"),
    ("apply", "smoke", "grid", "off", 1, "last"),
    ("cli", "fast", "grid", "off", 2, "middle"),
    ("cli", "smoke", "guided", "off", 2, "first"),
    ("sdk", "lite", "guided", "off", 2, "whole_batch"),
    ("apply", "smoke", "guided", "off", 2, "all"),
    ("apply", "fast", "guided", "hit", 2, "last"),
    ("cli", "paper", "grid", "hit", 3, "whole_batch"),
]
GOOD = 3  # good images per run
KINDS = ("empty", "truncated", "text", "folder", "loop")
REASONS = {
    "empty": "empty file",
    "truncated": "not a readable image",
    "text": "not a readable image",
    "folder": "a directory, not an image file",
    "loop": "symlink loop",
}
BANK_FOR = {"smoke": "small", "lite": "small", "paper": "large", "fast": "large"}  # by the preset's DINOv2


def layout(bad: str, batch: int) -> list[str]:
    """The run's files in order: "G" good, "B" unreadable."""
    good = ["G"] * GOOD
    if bad == "first":
        return ["B", *good]
    if bad == "middle":
        return ["G", "B", "G", "G"]
    if bad == "last":
        return [*good, "B"]
    if bad == "whole_batch":  # a batch of only bad files, on a batch boundary (FiftyOne's loader batches too)
        head = min(batch, GOOD)
        return [*good[:head], *["B"] * batch, *good[head:]]
    return ["B"] * GOOD  # all


def settings(preset: str, prompt: str) -> dict:
    """The preset's own settings at reduced sizes, filters opened so random weights give detections."""
    return {
        "model": {
            "random_weights": True,
            "device": "cpu",
            "sam2_image_size": 256,
            "dinov2_image_size": 224,
            "compile": False,  # torch.compile has its own tests (test_decoder): here it would only cost minutes
        },
        "segment": {
            "prompt_mode": prompt,
            "points_per_side": 4,
            "guided_points": 8,
            "pred_iou_thresh": 0.0,
            "nms_thresh": 1.0,
            "max_instances": 20,
        },
    }


@pytest.fixture(scope="module")
def world(coco128, tmp_path_factory):
    """A dataset with two reference samples and two banks (DINOv2 ViT-S and ViT-L, random weights), the banks
    also as files for the CLI, and small copies of three other real images."""
    import fiftyone as fo

    root = tmp_path_factory.mktemp("matrix")
    images = coco128 / "images" / "val2017"
    ds = fo.Dataset()
    gt = fo.Dataset.from_dir(
        dataset_type=fo.types.COCODetectionDataset,
        data_path=str(images),
        labels_path=str(coco128 / "annotations" / "instances_val2017.json"),
        label_types=["segmentations"],
        label_field="gt",
        max_samples=2,
    )
    ds.add_samples(gt)
    gt.delete()
    nfo.mark_references(ds)
    banks = {}
    for name, preset in (("small", "smoke"), ("large", "paper")):
        nfo.build_bank(ds, name, label_field="gt", preset=preset, config=settings(preset, "grid"))
        banks[name] = nfo.load_bank(ds, name).save(root / f"{name}.safetensors")
    good = []
    for i, src in enumerate(sorted(images.glob("*.jpg"))[5 : 5 + GOOD]):
        with Image.open(src) as img:
            img.thumbnail((192, 192))
            good.append(root / f"good{i}.jpg")
            img.save(good[-1], quality=90)
    yield {"dataset": ds, "root": root, "banks": banks, "good": good}
    ds.delete()


def make_bad(path: Path, kind: str, source: Path) -> Path:
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = source.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path.write_text("this is not an image\n")
    elif kind == "folder":
        path.mkdir()
    else:  # a symlink to itself
        path.symlink_to(path.name)
    return path


class Files:
    """One row's files: a folder per run, named so that sorting keeps the layout's order."""

    def __init__(self, world, folder: Path, row_index: int, order: list[str]):
        self.clean, self.dirty, self.bad, self.order = folder / "clean", folder / "dirty", {}, order
        self.clean.mkdir(parents=True)
        self.dirty.mkdir()
        good = iter(world["good"])
        for pos, slot in enumerate(order):
            name = f"{pos:02d}_{slot}.jpg"
            if slot == "G":
                src = next(good)
                for run in (self.clean, self.dirty):
                    (run / name).symlink_to(src)
            else:
                kind = KINDS[(row_index + pos) % len(KINDS)]
                self.bad[make_bad(self.dirty / name, kind, world["good"][0]).name] = kind

    def paths(self, run: Path) -> list[str]:
        return [str(p) for p in sorted(run.iterdir())]


def check_reasons(named: dict[str, str], files: Files) -> None:
    """Every bad file, and only they, named (path -> reason) with its reason."""
    by_name = {Path(path).name: reason for path, reason in named.items()}
    assert set(by_name) == set(files.bad), (named, files.bad)
    for name, reason in by_name.items():
        assert REASONS[files.bad[name]] in reason and name in reason, (name, reason)


def cache_state(monkeypatch, cache: str, root: Path) -> tuple[Path, Path]:
    """The cache folders of the clean and the dirty run (a hit reads what the clean run stored)."""
    clean, dirty = root / "cache-clean", root / ("cache-clean" if cache == "hit" else "cache-dirty")
    monkeypatch.setenv("NTT_CACHE_DIR", str(clean))
    return clean, dirty


def expected_reuse(cache: str, good: int) -> tuple[int, int]:
    """(reused, computed) of the dirty run."""
    return {"off": (0, 0), "fill": (0, good), "hit": (good, 0)}[cache]


# --- entry points: each returns (good file name -> its detections, bad path -> reason, (reused, computed))


def via_cli(world, row, files: Files, run: Path, out: Path, capsys):
    from ntt.cli import main

    entry, preset, prompt, cache, batch, _ = row
    argv = ["segment", "--bank", str(world["banks"][BANK_FOR[preset]]), "--images", str(run), "-o", str(out)]
    argv += ["--preset", preset, "--random-weights", "--batch-size", str(batch), "--prompt-mode", prompt]
    argv += ["--cache" if cache != "off" else "--no-cache", "--config", json.dumps(settings(preset, prompt))]
    code = main(argv)
    printed = capsys.readouterr()
    lines = re.findall(r"^skipped ((\S+?): .+)$", printed.out, re.MULTILINE)  # told to the user
    said = {path: line for line, path in lines}
    if all(slot == "B" for slot in files.order):  # nothing readable: nothing written, an error that says so
        assert code == 2 and "none of the" in printed.err and not out.exists(), printed.err
        return {}, said, (0, 0)
    assert code == 0 and "Traceback" not in printed.err, printed.err
    meta = json.loads(out.with_name(out.stem + ".meta.json").read_text())
    names = {image_id: Path(path).name for path, image_id in meta["files"].items()}
    found = {names[i]: [] for i in meta["image_ids"]}
    for item in json.loads(out.read_text()):  # the ids of files not named by a number follow the listing
        found[names[item.pop("image_id")]].append(item)
    recorded = {item["path"]: item["reason"] for item in meta["skipped"]}
    assert recorded.keys() == said.keys(), (recorded, said)  # the sidecar records what was said
    reuse = re.search(r"candidate cache: (\d+) image\(s\) reused, (\d+) computed", printed.out)
    return found, recorded, tuple(int(n) for n in reuse.groups()) if reuse else (0, 0)


def _add_samples(world, paths: list[str], tag: str):
    import fiftyone as fo

    ds = world["dataset"]
    ds.add_samples([fo.Sample(filepath=p, tags=[tag]) for p in paths])
    return ds.match_tags(tag)


def _labels(view, field: str) -> dict[str, list]:
    out = {}
    for path, dets in zip(*view.values(["filepath", field])):
        if dets is not None:
            out[Path(path).name] = [
                (d.label, d.confidence, tuple(d.bounding_box), d.mask.tobytes(), d["shot_label_id"])
                for d in dets.detections
            ]
    return out


def via_sdk(world, row, files: Files, run: Path, tag: str, caplog):
    _, preset, prompt, cache, batch, _ = row
    view = _add_samples(world, files.paths(run), tag)
    summary = nfo.segment(
        view,
        BANK_FOR[preset],
        label_field="matrix",
        preset=preset,
        config=settings(preset, prompt),
        batch_size=batch,
        cache=cache != "off",
        overwrite=True,
    )
    skipped = {item["filepath"]: item["reason"] for item in summary["skipped"]}
    reused = summary["reused"]
    return _labels(view, "matrix"), skipped, (reused, summary["labelled"] - reused if cache != "off" else 0)


def via_apply_model(world, row, files: Files, run: Path, tag: str, caplog):
    _, preset, prompt, cache, batch, _ = row
    view = _add_samples(world, files.paths(run), tag)
    config = settings(preset, prompt)
    config["segment"]["batch_size"] = batch
    model = nfo.load_model(view, BANK_FOR[preset], preset=preset, config=config, cache=cache != "off")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        view.apply_model(model, label_field="matrix", batch_size=batch)
    skipped = {}
    for record in caplog.records:
        said = re.match(r"ntt: (.+?) not segmented: (.+)$", record.getMessage())
        if said:
            skipped[said.group(1)] = said.group(2)
    store = model.segmenter.cache
    return _labels(view, "matrix"), skipped, (store.hits, store.misses) if store else (0, 0)


ENTRIES = {"cli": via_cli, "sdk": via_sdk, "apply": via_apply_model}


@pytest.mark.parametrize("row", ROWS, ids=["-".join(map(str, r)) for r in ROWS])
def test_bad_files_leave_the_good_images_detections_unchanged(row, world, tmp_path, monkeypatch, capsys, caplog):
    entry, preset, prompt, cache, batch, bad = row
    index = ROWS.index(row)
    files = Files(world, tmp_path / "files", index, layout(bad, batch))
    clean_cache, dirty_cache = cache_state(monkeypatch, cache, tmp_path)

    def run(which: Path, name: str):
        if entry == "cli":
            return via_cli(world, row, files, which, tmp_path / f"{name}.json", capsys)
        return ENTRIES[entry](world, row, files, which, f"matrix-{index}-{name}", caplog)

    clean, clean_skipped, _ = run(files.clean, "clean") if bad != "all" else ({}, {}, None)
    assert not clean_skipped and len(clean) == (0 if bad == "all" else GOOD)
    assert bad == "all" or sum(map(len, clean.values())) > 0, "the clean run finds something to compare"
    monkeypatch.setenv("NTT_CACHE_DIR", str(dirty_cache))
    dirty, skipped, reuse = run(files.dirty, "dirty")
    assert dirty == clean, "the good images get exactly the clean run's detections"
    check_reasons(skipped, files)
    assert reuse == expected_reuse(cache, len(clean)), reuse
    assert clean_cache.exists() == (cache != "off" and bad != "all"), "the cache is used exactly when asked"


def test_the_rows_cover_every_pair():
    names = list(DIMENSIONS)
    for (i, a), (j, b) in itertools.combinations(enumerate(names), 2):
        seen = {(row[i], row[j]) for row in ROWS}
        missing = set(itertools.product(DIMENSIONS[a], DIMENSIONS[b])) - seen
        assert not missing, f"{a} x {b}: {sorted(missing)}"


def test_a_sharded_run_names_bad_files_and_labels_the_rest_as_one_process(world, tmp_path, monkeypatch):
    """Shards through the segment operator and FiftyOne's executor (as a worker runs them): a shard of only bad
    files, a shard ending in one, a batch of one with guided prompts and the cache filling."""
    from fiftyone.operators.delegated import DelegatedOperationService

    monkeypatch.setenv("NTT_CACHE_DIR", str(tmp_path / "cache"))
    order = ["G", "G", "B", "B", "G", "B"]  # shards of 2: [G G] [B B] [G B]
    files = Files(world, tmp_path / "files", 0, order)
    args = dict(preset="lite", config=settings("lite", "guided"), batch_size=1, cache=True)
    clean = _add_samples(world, files.paths(files.clean), "shard-clean")
    nfo.segment(clean, "small", label_field="sharded", **args)
    view = _add_samples(world, files.paths(files.dirty), "shard-dirty")
    queued = nfo.submit_job(view, "small", label_field="sharded", shard_size=2, **args)
    assert queued["shards"] == 3
    DelegatedOperationService().execute_queued_operations(dataset_name=world["dataset"].name, delegation_target="ntt")
    status = nfo.get_job_status(queued["run"])
    assert status["state"] == "completed" and status["summary"]["failed_shards"] == [], status
    check_reasons({s["filepath"]: s["reason"] for s in status["summary"]["skipped"]}, files)
    assert _labels(view, "sharded") == _labels(clean, "sharded") != {}
