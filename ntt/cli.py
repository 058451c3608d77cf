"""The ``ntt`` command line: arguments, input checks and exit codes; ``commands`` does each subcommand's work
(imported lazily: ``ntt.cli`` starts without torch, and the two modules import in one direction only)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading

from .config import PRESETS, ConfigError, NTTConfig, get_config
from .sampling import SPLITS, parse_class_list

log = logging.getLogger("ntt")


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models and runtime")
    g.add_argument("--preset", default="paper", choices=sorted(PRESETS), help="settings preset (default: paper)")
    g.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    g.add_argument("--dtype", default=None, choices=["fp32", "bf16"], help="network precision")
    g.add_argument("--batch-size", type=int, default=None, help="images per encoder batch (0: fit to GPU memory)")
    g.add_argument(
        "--points-batch-size", type=int, default=None, help="prompts per SAM2 decoder call (default 256; fast: 1024)"
    )
    g.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile the SAM2 decoder"
    )
    g.add_argument("--sam2", default=None, help="SAM2 variant, e.g. sam2_hiera_l, sam2.1_hiera_t")
    g.add_argument("--dinov2", default=None, help="DINOv2 variant, e.g. dinov2_vitl14")
    g.add_argument("--sam2-checkpoint", default=None, help="path of a SAM2 .pt checkpoint")
    g.add_argument("--dinov2-checkpoint", default=None, help="path of a DINOv2 .pth/.safetensors checkpoint")
    g.add_argument(
        "--random-weights",
        action="store_true",
        help="random-init models (seeded): smoke runs/tests only, predictions are meaningless",
    )
    g.add_argument("--weights-seed", type=int, default=None, help="seed of --random-weights (default 0)")
    g.add_argument(
        "--config",
        default=None,
        help="settings the flags do not cover, layered on the preset (flags given win): a JSON file or an inline "
        """JSON object of sections, e.g. '{"segment": {"pred_iou_thresh": 0.7}, "model": {"sam2_image_size": 512}}'""",
    )


def _config(args: argparse.Namespace, segment: dict | None = None) -> NTTConfig:
    """The preset with the flags given on top; the device is checked to exist before any work starts."""
    cfg = _flags_config(args, segment)
    from .devices import resolve_device

    resolve_device(cfg.model.device)
    return cfg


def _flags_config(args: argparse.Namespace, segment: dict | None = None) -> NTTConfig:
    model = {
        "device": args.device,
        "dtype": args.dtype,
        "sam2": args.sam2,
        "dinov2": args.dinov2,
        "sam2_checkpoint": args.sam2_checkpoint,
        "dinov2_checkpoint": args.dinov2_checkpoint,
        "random_weights": True if args.random_weights else None,
        "seed": args.weights_seed,
        "compile": args.compile,
    }
    seg = {"batch_size": args.batch_size, "points_batch_size": args.points_batch_size, **(segment or {})}
    given = _config_file(args.config)
    for section, values in (("model", model), ("segment", seg)):
        given[section] = {**given.get(section, {}), **{k: v for k, v in values.items() if v is not None}}
    return get_config(args.preset, given)


def _config_file(text: str | None) -> dict:
    """--config: an inline JSON object or a JSON file of per-section settings (checked by ``get_config``)."""
    if text is None:
        return {}
    from .coco_check import read_json

    try:
        data = json.loads(text) if text.lstrip().startswith("{") else read_json(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"--config: not a valid JSON object ({err})") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError('--config: give an object of sections, e.g. {"segment": {"pred_iou_thresh": 0.7}}')
    return {section: dict(values) for section, values in data.items()}


def _positive_int(text: str) -> int:
    """argparse type of counts (--shots, --max-images, ...): a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


def _fraction(text: str) -> float:
    """argparse type of a precision: a number in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 1:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


class _ClassList(argparse.Action):
    """--classes: names or ids, space- and/or comma-separated (``boat,bird``, ``boat bird``, ``"dining table"``)."""

    def __call__(self, parser, namespace, values, option_string=None):
        names = parse_class_list(values)
        if not names:
            parser.error(f"argument {option_string}: no class name given")
        setattr(namespace, self.dest, names)


def _reference_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("refs", help="COCO instance JSON with the reference annotations")
    p.add_argument("--images", default=None, help="folder of the reference images (default: found from the JSON)")
    p.add_argument("--shots", type=_positive_int, default=None, help="sample N shots per class (paper protocol)")
    p.add_argument("--seed", type=int, default=33, help="sampling seed for --shots (default 33, as the paper)")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--classes",
        nargs="+",
        action=_ClassList,
        default=None,
        help="class names or ids to include, space- or comma-separated (default: all)",
    )
    which.add_argument(
        "--split",
        default=None,
        choices=sorted(SPLITS),
        help="a named class split: coco-novel (COCO-FSOD's 20 VOC classes) or the PASCAL VOC novel splits",
    )
    p.add_argument("--box-refs", action="store_true", help="ignore masks: get them from SAM2 box prompts")
    _model_args(p)


class _Parser(argparse.ArgumentParser):
    """A wrong argument is one `error:` line (as every other bad input), not the usage and then the error."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ntt", description="Training-free reference-based instance segmentation")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    bank = sub.add_parser("bank", help="build and inspect memory banks").add_subparsers(dest="bank_cmd", required=True)
    b = bank.add_parser("build", help="build a bank from a COCO instance JSON of references")
    _reference_args(b)
    b.add_argument("-o", "--output", required=True, help="bank file to write (.safetensors)")
    info = bank.add_parser("info", help="print a bank's classes, shots, encoder and size")
    info.add_argument("bank")
    a = bank.add_parser("add", help="add references from a COCO JSON to a bank (other shots are kept as is)")
    a.add_argument("bank", help="bank file to extend")
    _reference_args(a)
    a.add_argument("-o", "--output", default=None, help="write here instead of updating the bank in place")
    a.add_argument(
        "--negative",
        action="store_true",
        help="add them as negative shots of their classes (the bank must have those classes): things that look "
        "like the class but are not, e.g. false positives; they push down masks that look more like them",
    )
    g = bank.add_parser(
        "report",
        help="grade a bank's references by leave-one-out on their own images (per class and per shot, most "
        "harmful first); --calibrate stores per-class score thresholds in the bank",
    )
    g.add_argument("bank", help="bank file")
    g.add_argument("refs", help="COCO instance JSON of the references: their labelled instances are the ground truth")
    g.add_argument("--images", default=None, help="folder of the reference images (default: found from the JSON)")
    g.add_argument("--calibrate", action="store_true", help="store the calibrated thresholds in the bank")
    g.add_argument(
        "--target-precision",
        type=_fraction,
        default=None,
        help="calibrate to this precision, in (0, 1] (default: best F1)",
    )
    g.add_argument("-o", "--output", default=None, help="with --calibrate: write the bank here, not in place")
    g.add_argument("--json", dest="json_out", default=None, help="also write the report to this JSON file")
    _model_args(g)
    r = bank.add_parser("remove", help="remove shots (by annotation id) or whole classes from a bank")
    r.add_argument("bank", help="bank file")
    r.add_argument("--annotations", nargs="+", default=(), help="annotation ids of the shots to remove")
    r.add_argument("--classes", nargs="+", action=_ClassList, default=(), help="class names to remove")
    r.add_argument("-o", "--output", default=None, help="write here instead of updating the bank in place")

    s = sub.add_parser("segment", help="segment target images with a bank; writes COCO results JSON")
    s.add_argument("--bank", required=True, help="bank file")
    s.add_argument("--images", required=True, help="folder of images, or a COCO JSON listing the targets")
    s.add_argument("--image-root", default=None, help="folder of the JSON's images (default: found from the JSON)")
    s.add_argument("-o", "--output", required=True, help="COCO results JSON to write")
    s.add_argument("--max-images", type=_positive_int, default=None, help="only the first N targets")
    s.add_argument("--score-thresh", type=float, default=None, help="drop detections below this score")
    s.add_argument("--max-instances", type=int, default=None, help="detections per image (default 100)")
    s.add_argument("--points-per-side", type=int, default=None, help="prompt grid side (default 32)")
    s.add_argument("--prompt-mode", default=None, choices=["grid", "guided"], help="dense grid or DINOv2-guided")
    s.add_argument("--box-inclusive", action="store_true", help="research code's 1-px-short COCO boxes")
    s.add_argument(
        "--thresholds",
        choices=["calibrated"],
        default=None,
        help="per-class score thresholds: 'calibrated' takes those `ntt bank report --calibrate` stored in the bank",
    )
    s.add_argument(
        "--cache",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="read and fill the candidate cache: re-segmenting after a bank change skips the encoders (and with grid "
        "prompts the decoder) (default: the preset's: on in fast and lite, off in the faithful paper preset)",
    )
    _model_args(s)

    k = sub.add_parser("benchmark", help="time every stage on real images (optionally vs the faithful mode)")
    k.add_argument("--images", default=None, help="folder of images (default: COCO128 val of the shared data)")
    k.add_argument("--max-images", type=_positive_int, default=10, help="images to time (default 10)")
    k.add_argument("--classes", type=_positive_int, default=20, help="classes in the (random) bank (default 20)")
    k.add_argument("--points-per-side", type=int, default=None, help="prompt grid side")
    k.add_argument("--prompt-mode", default=None, choices=["grid", "guided"], help="dense grid or DINOv2-guided")
    k.add_argument("--force-candidates", action="store_true", help="also run the worst case: every mask kept")
    k.add_argument("--compare-reference", action="store_true", help="also run the faithful reference mode")
    k.add_argument(
        "--resegment",
        action="store_true",
        help="measure the candidate cache: fresh runs vs re-segmenting from it after a bank change",
    )
    k.add_argument("--json", dest="json_out", default=None, help="write the numbers to this JSON file")
    _model_args(k)

    c = sub.add_parser("cache", help="the candidate cache (bank-independent work per image): show or free it")
    c.add_argument("cache_cmd", choices=["info", "clear"], help="info: where, entries, bytes, limit; clear: free it")

    w = sub.add_parser("weights", help="check that the checkpoints a preset needs are here (or say where they go)")
    _model_args(w)

    _worker_args(sub)
    _runs_args(sub)

    e = sub.add_parser("evaluate", help="COCO bbox and segm AP of a results JSON")
    e.add_argument("gt", help="ground-truth COCO instance JSON")
    e.add_argument("preds", help="results JSON written by `ntt segment`")
    e.add_argument("--bank", default=None, help="restrict to this bank's classes (default: from the results' sidecar)")
    e.add_argument("--classes", nargs="+", action=_ClassList, default=None, help="restrict to these class names or ids")
    e.add_argument("--json", dest="json_out", default=None, help="also write the metrics to this JSON file")
    return parser


def _worker_args(sub) -> None:
    w = sub.add_parser(
        "worker", help="run the NTT operations queued in FiftyOne's database (sharded runs): one process per GPU"
    )
    w.add_argument("--target", default="ntt", help="the delegation target to claim (default: ntt)")
    w.add_argument("--heartbeat", type=float, default=10.0, help="seconds between heartbeats (default 10)")
    w.add_argument("--stale-after", type=float, default=60.0, help="reaper: a heartbeat this old means a lost worker")
    w.add_argument("--idle-exit", type=float, default=None, help="exit after this many seconds with nothing to do")
    w.add_argument("--max-operations", type=int, default=None, help="exit after running this many operations")


def _runs_args(sub) -> None:
    runs = sub.add_parser("runs", help="sharded runs over FiftyOne datasets: submit, follow, recover, stop")
    cmd = runs.add_subparsers(dest="runs_cmd", required=True)
    s = cmd.add_parser("submit", help="queue a segment run of a FiftyOne dataset as shards for `ntt worker`s")
    s.add_argument("dataset", help="FiftyOne dataset name")
    s.add_argument("--bank", required=True, help="a bank stored with the dataset")
    s.add_argument("--field", default="ntt", help="output Detections field (default: ntt)")
    size = s.add_mutually_exclusive_group()
    size.add_argument("--shards", type=int, default=None, help="how many shards")
    size.add_argument("--shard-size", type=int, default=None, help="samples per shard (default 500)")
    s.add_argument("--preset", default=None, choices=sorted(PRESETS), help="settings (default: the bank's own)")
    s.add_argument("--batch-size", type=int, default=None, help="images per forward pass")
    s.add_argument("--score-thresh", type=float, default=None, help="drop instances scoring below this")
    s.add_argument("--thresholds", default=None, choices=["calibrated"], help="the bank's calibrated thresholds")
    s.add_argument("--mask-dir", default=None, help="write masks as PNGs under this shared folder")
    done = s.add_mutually_exclusive_group()
    done.add_argument("--skip-existing", action="store_true", help="leave samples already labelled out")
    done.add_argument("--overwrite", action="store_true", help="replace existing labels")
    s.add_argument("--target", default="ntt", help="delegation target the workers claim (default: ntt)")
    s.add_argument("--max-attempts", type=int, default=3, help="runs of a shard at most (lost worker, out of memory)")
    t = cmd.add_parser("status", help="where a dataset's sharded runs stand (samples, shards, throughput)")
    t.add_argument("dataset", help="FiftyOne dataset name")
    t.add_argument("--run", default=None, help="only this run (id)")
    t.add_argument("--json", action="store_true", help="print JSON")
    r = cmd.add_parser("reap", help="re-queue shards whose worker is gone; complete finished runs")
    r.add_argument("--stale-after", type=float, default=60.0, help="a heartbeat this old means a lost worker")
    x = cmd.add_parser("stop", help="stop a sharded run (labels written stay)")
    x.add_argument("run", help="the run id")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    from .bank import BankError
    from .bank_encoder import InvalidReferenceError
    from .images import ImageLoadError
    from .weights import WeightsNotFoundError

    # Bad input of every kind (files, values, devices, checkpoints, disk full) is one line and exit code 2.
    known = (ConfigError, BankError, InvalidReferenceError, ImageLoadError, WeightsNotFoundError, ValueError, OSError)
    # A worker has its own SIGTERM (it stops after its current operation); other commands unwind as on Ctrl-C.
    own_signals = args.command not in ("worker", "runs") and threading.current_thread() is threading.main_thread()
    before = _catch_termination() if own_signals else {}
    try:
        _check_outputs(args)
        return _dispatch(args)
    except BrokenPipeError:  # whoever read the output (`| head`) stopped: no message, as other tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
        return 128 + signal.SIGPIPE
    except known as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: {_NOT_WRITTEN}", file=sys.stderr)
        return 130
    except Terminated as stop:
        print(f"terminated ({signal.Signals(stop.signum).name}): {_NOT_WRITTEN}", file=sys.stderr)
        return 128 + stop.signum
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


_NOT_WRITTEN = "the output was not written (an earlier version of it is intact)"


class Terminated(BaseException):
    """SIGTERM or SIGHUP (the terminal or ssh session closed), raised in the main thread: unwinds like Ctrl-C, so
    every file being written is dropped and the previous one stays (a ``BaseException``: no ``except Exception``
    on the way swallows it)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _catch_termination() -> dict:
    """Raise ``Terminated`` on SIGTERM, and on SIGHUP unless it is ignored (``nohup``); returns the handlers
    replaced, to put back."""
    before = {signal.SIGTERM: signal.signal(signal.SIGTERM, _terminate)}
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        before[signal.SIGHUP] = signal.signal(signal.SIGHUP, _terminate)
    return before


def _terminate(signum, frame) -> None:
    signal.signal(signum, signal.SIG_DFL)  # the same signal again ends the process at once
    raise Terminated(signum)


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse, before any work, an output that would overwrite one of the command's inputs (or is a folder)."""
    from .outputs import check_output
    from .pipeline import sidecar_path

    command = args.command if args.command != "bank" else f"bank {args.bank_cmd}"
    if command in ("bank build", "bank add", "bank remove") or (command == "bank report" and args.calibrate):
        check_output(args.output or args.bank, [getattr(args, "refs", None)], "bank file")
    if command == "bank report" and args.json_out is not None:
        check_output(args.json_out, [args.bank, args.refs, args.output if args.calibrate else None], "report file")
    elif command == "segment":
        inputs = [args.bank, args.images]
        check_output(args.output, inputs, "results file")
        check_output(sidecar_path(args.output), [*inputs, args.output], "results sidecar")
    elif getattr(args, "json_out", None) is not None:
        inputs = [args.gt, args.preds, sidecar_path(args.preds), args.bank] if command == "evaluate" else []
        check_output(args.json_out, inputs, "metrics file")


def _dispatch(args: argparse.Namespace) -> int:
    from . import commands

    if args.command == "bank":
        if args.bank_cmd in ("build", "add"):
            run = commands.bank_build if args.bank_cmd == "build" else commands.bank_add
            return run(args, _config(args))
        if args.bank_cmd == "report":
            return commands.bank_report(args, _config(args))
        return commands.bank_info(args) if args.bank_cmd == "info" else commands.bank_remove(args)
    if args.command == "segment":
        seg = {
            "score_thresh": args.score_thresh,
            "max_instances": args.max_instances,
            "points_per_side": args.points_per_side,
            "prompt_mode": args.prompt_mode,
            "cache": args.cache,
        }
        return commands.segment(args, _config(args, seg))
    if args.command == "benchmark":
        seg = {"points_per_side": args.points_per_side, "prompt_mode": args.prompt_mode}
        return commands.benchmark(args, _config(args, seg))
    if args.command == "cache":
        return commands.cache(args.cache_cmd)
    if args.command == "weights":
        return commands.weights(_config(args))
    if args.command in ("worker", "runs"):
        from .fo import commands as fo_commands  # imports fiftyone: only for these commands

        return fo_commands.worker(args) if args.command == "worker" else fo_commands.runs(args)
    return commands.evaluate(args)


if __name__ == "__main__":
    sys.exit(main())
