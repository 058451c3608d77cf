"""What each CLI subcommand does (argument handling and printing around ``ntt.cli.pipeline``)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tqdm import tqdm

from ntt.bank.file import update_bank_file
from ntt.bank.memory import MemoryBank
from ntt.cli import pipeline
from ntt.config import NTTConfig
from ntt.io import coco
from ntt.io.evaluation import format_metrics
from ntt.io.outputs import check_output
from ntt.models import describe_checkpoint, ensure_weights


def bank_build(args: argparse.Namespace, cfg: NTTConfig) -> int:
    start = time.perf_counter()
    bank = _bank_from_args(args, cfg)
    check_output(args.output, _shot_images(bank), "bank file")  # never over a reference image
    path = bank.save(args.output)
    size = path.stat().st_size
    print(f"wrote {path}: {len(bank.classes)} classes, {len(bank.shots)} shots, {size / 1e6:.2f} MB ({elapsed(start)})")
    return 0


def bank_add(args: argparse.Namespace, cfg: NTTConfig) -> int:
    """``ntt bank add``: the file's shots added to the bank (``MemoryBank.add``): labels it holds already as that
    kind of shot are skipped (a shot is its file's sha256, image id and annotation id, so a second file numbered
    from 1 adds all its shots), classes merge by name, and each class numbered otherwise in the file and each shot
    replaced by the newer verdict is printed."""
    start = time.perf_counter()
    bank = MemoryBank.load(args.bank)
    cfg = pipeline.adopt_bank_encoder(cfg, bank.encoder, explicit_dinov2=args.dinov2 is not None)
    new = _bank_from_args(args, cfg)
    check_output(args.output or args.bank, _shot_images(new), "bank file")
    new = new.as_negatives() if args.negative else new
    counts, notes = {}, []

    def add(current: MemoryBank) -> MemoryBank:  # the bank as it is now: another add meanwhile is kept
        counts["added"] = sum(not current.holds(shot, bool(neg)) for shot, neg in zip(new.shots, new.negative))
        notes.clear()
        return current.add(new, say=notes.append)

    merged = update_bank_file(args.bank, add, output=args.output)
    path = Path(args.output or args.bank)
    for note in notes:
        print(note)
    added = counts["added"]
    total = f"{len(merged.classes)} classes, {len(merged.shots)} shots ({int(merged.negative.sum())} negative)"
    kind = "negative shots" if args.negative else "shots"
    print(f"wrote {path}: {added} {kind} added, {total} ({elapsed(start)})")
    return 0


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _shot_images(bank: MemoryBank) -> list[str]:
    return sorted({s["image_path"] for s in bank.shots if s.get("image_path")})


def bank_grade(args: argparse.Namespace, cfg: NTTConfig) -> int:
    """``ntt bank grade``: leave-one-out over the references' own images; with --calibrate, store thresholds."""
    from ntt.grading.report import grade

    start = time.perf_counter()
    bank = MemoryBank.load(args.bank)
    cfg = pipeline.adopt_bank_encoder(cfg, bank.encoder, explicit_dinov2=args.dinov2 is not None)
    images = pipeline.labelled_references(bank, args.refs, args.images)
    ensure_weights(cfg.model)
    from ntt.cache.store import CandidateStore

    store = CandidateStore() if cfg.segment.cache else None
    bar = tqdm(total=1.0, desc="grading", unit="", bar_format="{desc}: {percentage:3.0f}% {elapsed}")

    def progress(fraction: float, _label: str) -> None:
        bar.n = fraction
        bar.refresh()

    try:
        report = grade(bank, images, cfg, cache=store, target_precision=args.target_precision, progress=progress)
    finally:
        bar.close()
    print(report.table())
    if args.json_out:
        pipeline.write_json_atomic(Path(args.json_out), report.to_dict())
    if args.calibrate:  # only onto the bank that was graded: refused if another command changed it meanwhile
        calibrated = lambda current: current.with_info(calibration=report.calibration)  # noqa: E731
        update_bank_file(args.bank, calibrated, read_digest=bank.file_digest, output=args.output)
        path = Path(args.output or args.bank)
        calibration = report.calibration
        print(f"wrote {path}: calibrated thresholds for {len(calibration['classes'])} of {len(bank.classes)} classes")
        for name, fit in calibration["classes"].items():
            low, high = fit["precision_interval"] or (0.0, 1.0)
            print(f"  {name}: {fit['threshold']:.3f} (precision {_share(fit['precision'])} [{low:.2f}-{high:.2f}])")
        for name, why in calibration["left_out"].items():
            print(f"  {name}: keeps the global threshold ({why})")
        print(f"  note: {calibration['caveat']}")
    print(f"graded {len(images) - len(report.skipped)} reference image(s) ({elapsed(start)})")
    return 0


def cache(action: str) -> int:
    """``ntt cache info`` / ``ntt cache clear``: the candidate cache's place, entries, bytes and limit."""
    from ntt.cache.store import CandidateStore

    store = CandidateStore()
    print_json(store.info() if action == "info" else {"root": str(store.root), "freed": store.clear()})
    return 0


def weights(cfg: NTTConfig) -> int:
    """Where each checkpoint of the config resolves; every missing one named at once (exit 2), none downloaded."""
    ensure_weights(cfg.model)
    if cfg.model.random_weights:
        print("random weights: no checkpoint needed (predictions are meaningless)")
        return 0
    for kind, name in (("sam2", cfg.model.sam2), ("dinov2", cfg.model.dinov2)):  # found, not read: a job reads them
        print(f"{kind} {name}: {describe_checkpoint(cfg.model, kind)}")
    return 0


def bank_remove(args: argparse.Namespace) -> int:
    before = {}

    def remove(current: MemoryBank) -> MemoryBank:  # checked on the bank as it is now
        unknown = set(args.classes) - set(current.class_names)
        if unknown:
            raise ValueError(f"classes not in the bank: {sorted(unknown)}")
        smaller = current.remove(annotation_ids=args.annotations, class_names=args.classes)
        if len(smaller.shots) == len(current.shots):
            raise ValueError("nothing to remove: no shot has these annotation ids or classes")
        before["shots"] = len(current.shots)
        return smaller

    smaller = update_bank_file(args.bank, remove, output=args.output)
    path = Path(args.output or args.bank)
    removed = before["shots"] - len(smaller.shots)
    print(f"wrote {path}: {removed} shots removed, {len(smaller.classes)} classes, {len(smaller.shots)} shots")
    return 0


def _bank_from_args(args: argparse.Namespace, cfg: NTTConfig) -> MemoryBank:
    ensure_weights(cfg.model, ("dinov2", "sam2") if args.box_refs else ("dinov2",))
    bars = []  # opened at the first progress call: input errors come before it, on a clean line

    def progress(fraction: float, _label: str) -> None:
        if not bars:
            bars.append(tqdm(total=1.0, desc="references", unit="", bar_format="{desc}: {percentage:3.0f}% {elapsed}"))
        bars[0].n = fraction
        bars[0].refresh()

    try:
        return pipeline.bank_from_coco(
            args.refs,
            cfg,
            image_root=args.images,
            shots=args.shots,
            seed=args.seed,
            classes=args.classes,
            box_refs=args.box_refs,
            progress=progress,
            split=args.split,
        )
    finally:  # on an error or Ctrl-C too: the message that follows starts its own line
        for bar in bars:
            bar.close()


def bank_info(args: argparse.Namespace) -> int:
    bank = MemoryBank.load(args.bank)
    info = bank.summary()
    info["file"] = str(args.bank)
    info["size_bytes"] = Path(args.bank).stat().st_size
    info["class_ids"] = {c["name"]: c["id"] for c in bank.classes}
    print_json(info)
    return 0


def segment(args: argparse.Namespace, cfg: NTTConfig) -> int:
    start = time.perf_counter()
    bank = MemoryBank.load(args.bank)
    bank.info["path"] = str(args.bank)
    cfg = pipeline.adopt_bank_encoder(cfg, bank.encoder, explicit_dinov2=args.dinov2 is not None)
    given = cfg.segment.class_thresholds  # --class-thresholds: only the bank's classes, checked before any work
    unknown = sorted(set(given) - set(bank.class_names))
    if unknown:
        raise ValueError(
            f"--class-thresholds names classes the bank does not have: {unknown} (it has: {bank.class_names})"
        )
    if args.thresholds == "calibrated":
        from ntt.config import derive
        from ntt.grading.calibration import calibrated_thresholds

        calibrated = calibrated_thresholds(bank, cfg)  # stale: refused
        cfg = derive(cfg, segment={"class_thresholds": {**calibrated, **given}})  # the ones given win, as in the SDK
    targets = _targets(args.images, args.image_root)  # checked before the weights: the cheaper mistake first
    if args.max_images is not None:
        targets = targets[: args.max_images]
    if not targets:
        raise ValueError(f"no target images found in {args.images}")
    results = [args.output, pipeline.sidecar_path(args.output)]
    for out, what in zip(results, ("results file", "results sidecar")):
        check_output(out, [path for _, path in targets], what)  # an output must never replace a target image
    ensure_weights(cfg.model)
    from ntt.cache.store import CandidateStore
    from ntt.predict.segmenter import Segmenter

    segmenter = Segmenter(bank, cfg, cache=CandidateStore() if cfg.segment.cache else None)
    try:
        with tqdm(total=len(targets), desc="segmenting", unit="img") as bar:  # closed on Ctrl-C: messages start a line
            meta = pipeline.segment_targets(
                bank,
                targets,
                cfg,
                args.output,
                args.box_inclusive,
                on_image=lambda _res: bar.update(1),
                segmenter=segmenter,
            )
    except pipeline.NothingSegmented as err:
        _print_skipped(err.skipped)
        raise
    if segmenter.cache is not None:
        cache = segmenter.cache
        stored = (
            f"{cache.misses} computed and stored"
            if not cache.unstored
            else f"{cache.misses} computed, {cache.misses - cache.unstored} stored (see the warnings)"
        )
        print(f"candidate cache: {cache.hits} image(s) reused, {stored} ({cache.store.root})")
    n_done, n_skip = len(meta["image_ids"]), len(meta["skipped"])
    print(f"wrote {args.output}: {meta['detections']} detections on {n_done} images ({elapsed(start)})")
    _print_skipped(meta["skipped"])
    if n_skip:
        print(f"{n_skip} image(s) skipped")
    return 0


def _print_skipped(skipped: list[dict]) -> None:
    for item in skipped:
        reason = item["reason"]  # names the file when the loader refused it
        print(f"skipped {reason}" if reason.startswith(item["path"]) else f"skipped {item['path']}: {reason}")


def _targets(images: str, image_root: str | None) -> list[tuple[int, Path]]:
    if not images.strip():  # Path("") is the current folder: never segment it by accident
        raise ValueError("--images is empty: give a folder of images or a COCO JSON listing them")
    path = Path(images)
    if path.is_dir():
        return coco.targets_from_dir(path)
    if path.suffix.lower() == ".json":
        data = coco.load_json(path, kind="targets")
        return coco.targets_from_json(data, coco.resolve_image_root(path, image_root, data, flag="--image-root"))
    raise FileNotFoundError(f"{images}: neither a folder of images nor a COCO JSON")


def evaluate(args: argparse.Namespace) -> int:
    cat_ids = None
    if args.bank:
        cat_ids = MemoryBank.load(args.bank).class_ids
    if args.classes:
        cat_ids = coco.select_categories(coco.load_json(args.gt, kind="ground truth"), args.classes)
    metrics = pipeline.evaluate_files(args.gt, args.preds, cat_ids)
    print(format_metrics(metrics))
    if args.json_out:
        pipeline.write_json_atomic(Path(args.json_out), metrics)
    return 0


def benchmark(args: argparse.Namespace, cfg: NTTConfig) -> int:
    from ntt.cli import benchmark as bench
    from ntt.io.images import list_images

    folder = Path(args.images) if args.images else _default_benchmark_images()
    paths = _readable(list_images(folder))[: args.max_images]
    if not paths:
        raise ValueError(f"no images in {folder}")
    ensure_weights(cfg.model)
    bank = bench.random_bank(cfg, classes=args.classes)
    modes = []
    if args.compare_reference:
        modes.append(("reference", bench.reference_config(cfg)))
    modes.append(("fast", cfg))
    if args.force_candidates:
        modes += [(f"{name}+forced", bench.force_candidates(c)) for name, c in list(modes)]
    print(f"{len(paths)} images from {folder}; preset {args.preset}, device {cfg.model.device}, {cfg.model.dtype}")
    if args.resegment:
        return _benchmark_resegment(args, cfg, bank, paths)
    reports = [bench.run(c, bank, paths, name) for name, c in modes]
    print(bench.format_report(reports))
    out = {"reports": [r.to_dict() for r in reports], "config": cfg.to_dict()}
    by_mode = {r.mode: r for r in reports}
    if "reference" in by_mode:
        ratio = by_mode["fast"].images_per_s / max(by_mode["reference"].images_per_s, 1e-9)
        agree = bench.agreement(by_mode["fast"].instances, by_mode["reference"].instances)
        out.update(speedup=round(ratio, 2), agreement=round(agree, 4))
        print(
            f"fast / reference: {ratio:.2f}x; reference detections matched by fast (same class, IoU>=0.9): {agree:.1%}"
        )
    if args.json_out:
        pipeline.write_json_atomic(Path(args.json_out), out)
    return 0


def _readable(paths: list[Path]) -> list[Path]:
    """The images whose header reads (a benchmark times images, not failures); the others are named."""
    from ntt.io.images import ImageLoadError, image_size

    out = []
    for path in paths:
        try:
            image_size(path)
            out.append(path)
        except ImageLoadError as err:
            print(f"skipped {err}")
    return out


def _benchmark_resegment(args: argparse.Namespace, cfg: NTTConfig, bank, paths) -> int:
    import tempfile

    from ntt.cache.store import CandidateStore
    from ntt.cli import benchmark as bench

    with tempfile.TemporaryDirectory(prefix="ntt-resegment-") as folder:  # a fresh cache: nothing pre-filled
        reports, summary = bench.resegment(cfg, bank, paths, CandidateStore(folder))
    print(bench.format_report(reports))
    print(
        f"re-segmenting from the cache: {summary['fresh_ms_per_image']:.0f} -> {summary['cached_ms_per_image']:.0f} "
        f"ms/image ({summary['speedup']:.1f}x; filling it: {summary['fill_ms_per_image']:.0f} ms/image), "
        f"{summary['cache_bytes_per_image'] / 1e6:.2f} MB/image; fresh detections matched from the cache "
        f"(same class, IoU>=0.9): {summary['agreement_same_bank']:.1%} same bank, "
        f"{summary['agreement_changed_bank']:.1%} changed bank"
    )
    if args.json_out:
        out = {"reports": [r.to_dict() for r in reports], "resegment": summary, "config": cfg.to_dict()}
        pipeline.write_json_atomic(Path(args.json_out), out)
    return 0


def _default_benchmark_images() -> Path:
    here = Path(__file__).resolve().parents[1]
    return here.parent / "shared" / "data" / "coco128-seg" / "images" / "val2017"


def print_json(data) -> None:
    print(json.dumps(data, indent=2, default=str))


def elapsed(start: float) -> str:
    return f"{time.perf_counter() - start:.1f} s"
