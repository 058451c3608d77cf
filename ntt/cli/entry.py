"""The ``ntt`` command line: arguments, input checks and exit codes; ``commands`` does each subcommand's work
(imported lazily: ``ntt.cli`` starts without torch, and the two modules import in one direction only)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from ntt.bank.sampling import SPLITS, parse_class_list
from ntt.cli.segment_options import add_model_options, add_segment_options, config_overrides
from ntt.config import ConfigError, NTTConfig, get_config

log = logging.getLogger("ntt")


def _config(args: argparse.Namespace, segment: dict | None = None) -> NTTConfig:
    """The preset with the flags given on top; the device is checked to exist before any work starts."""
    cfg = _flags_config(args, segment)
    from ntt.models.devices import resolve_device

    resolve_device(cfg.model.device)
    return cfg


def _flags_config(args: argparse.Namespace, segment: dict | None = None) -> NTTConfig:
    """The preset with --config and the flags given layered on (``segment_options.config_overrides``: the same
    translation ``ntt jobs submit`` hands the SDK), then the ``segment`` fields given."""
    return get_config(args.preset, config_overrides(args, extra=segment))


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
    add_model_options(p)


class _Parser(argparse.ArgumentParser):
    """A wrong argument is one `error:` line (as every other bad input), not the usage and then the error."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ntt", description="Training-free reference-based instance segmentation")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    shown = "bank,segment,benchmark,cache,weights,worker,jobs,evaluate"  # `runs`: the old name of jobs, hidden
    sub = parser.add_subparsers(dest="command", required=True, metavar=f"{{{shown}}}")

    bank = sub.add_parser("bank", help="build and inspect memory banks")
    bank = bank.add_subparsers(dest="bank_cmd", required=True, metavar="{build,info,add,grade,remove}")
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
    for name in ("grade", "report"):  # report: its old name, hidden, kept one release
        _grade_args(bank, name, shown=name == "grade")
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
    s.add_argument("--box-inclusive", action="store_true", help="research code's 1-px-short COCO boxes")
    add_segment_options(s, on_dataset=False)  # the options of `ntt jobs submit` too: one definition

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
    add_model_options(k)

    c = sub.add_parser("cache", help="the candidate cache (bank-independent work per image): show or free it")
    c.add_argument("cache_cmd", choices=["info", "clear"], help="info: where, entries, bytes, limit; clear: free it")

    w = sub.add_parser("weights", help="check that the checkpoints a preset needs are here (or say where they go)")
    add_model_options(w)

    _worker_args(sub)
    for name in ("jobs", "runs"):  # runs: the old name, hidden, kept one release
        _jobs_args(sub, name, shown=name == "jobs")

    e = sub.add_parser("evaluate", help="COCO bbox and segm AP of a results JSON")
    e.add_argument("gt", help="ground-truth COCO instance JSON")
    e.add_argument("preds", help="results JSON written by `ntt segment`")
    e.add_argument("--bank", default=None, help="restrict to this bank's classes (default: from the results' sidecar)")
    e.add_argument("--classes", nargs="+", action=_ClassList, default=None, help="restrict to these class names or ids")
    e.add_argument("--json", dest="json_out", default=None, help="also write the metrics to this JSON file")
    return parser


def _worker_args(sub) -> None:
    w = sub.add_parser(
        "worker", help="run the NTT operations queued in FiftyOne's database (sharded jobs): one process per GPU"
    )
    w.add_argument("--target", default="ntt", help="the delegation target to claim (default: ntt)")
    w.add_argument("--heartbeat", type=float, default=10.0, help="seconds between heartbeats (default 10)")
    w.add_argument("--stale-after", type=float, default=60.0, help="reaper: a heartbeat this old means a lost worker")
    w.add_argument("--idle-exit", type=float, default=None, help="exit after this many seconds with nothing to do")
    w.add_argument("--max-operations", type=int, default=None, help="exit after running this many operations")


def _grade_args(bank, name: str, shown: bool) -> None:
    help = (
        "grade a bank's references by leave-one-out on their own images (per class and per shot, most harmful "
        "first); --calibrate stores per-class score thresholds in the bank"
    )
    g = bank.add_parser(name, **({"help": help} if shown else {}))
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
    add_model_options(g)


def _jobs_args(sub, name: str, shown: bool) -> None:
    help = "sharded jobs over FiftyOne datasets: submit, follow, recover, stop"
    jobs = sub.add_parser(name, **({"help": help} if shown else {}))
    cmd = jobs.add_subparsers(dest="jobs_cmd", required=True)
    s = cmd.add_parser("submit", help="queue a segment job of a FiftyOne dataset as shards for `ntt worker` processes")
    s.add_argument("dataset", help="FiftyOne dataset name")
    s.add_argument("--bank", required=True, help="a bank stored with the dataset")
    size = s.add_mutually_exclusive_group()
    size.add_argument("--shards", type=int, default=None, help="how many shards")
    size.add_argument("--shard-size", type=int, default=None, help="samples per shard (default 500)")
    s.add_argument("--target", default="ntt", help="delegation target the workers claim (default: ntt)")
    s.add_argument("--max-attempts", type=int, default=3, help="runs of a shard at most (lost worker, out of memory)")
    add_segment_options(s, on_dataset=True)  # every option of `ntt segment` and the dataset's own
    s.add_argument("--field", dest="label_field", action=_Renamed, new="--label-field", **_HIDDEN)
    t = cmd.add_parser("status", help="where a dataset's sharded jobs stand (samples, shards, throughput)")
    t.add_argument("dataset", help="FiftyOne dataset name")
    t.add_argument("--job", default=None, help="only this job (id)")
    t.add_argument("--run", dest="job", action=_Renamed, new="--job", **_HIDDEN)
    t.add_argument("--json", action="store_true", help="print JSON")
    r = cmd.add_parser("reap", help="re-queue shards whose worker is gone; complete finished jobs")
    r.add_argument("--stale-after", type=float, default=60.0, help="a heartbeat this old means a lost worker")
    x = cmd.add_parser("stop", help="stop a sharded job (labels written stay)")
    x.add_argument("job", help="the job id")


_HIDDEN = {"default": argparse.SUPPRESS, "help": argparse.SUPPRESS}  # an old name: works, not shown


class _Renamed(argparse.Action):
    """An option's old name, kept one release: does what ``new`` does and says so on stderr."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        _deprecated(option_string, self.new)
        setattr(namespace, self.dest, values)


def _deprecated(old: str, new: str) -> None:
    print(f"`{old}` is deprecated: use `{new}`", file=sys.stderr)


def _new_words(args: argparse.Namespace) -> None:
    """The subcommands' old names (`ntt runs`, `ntt bank report`), kept one release: each says so on stderr."""
    if args.command == "runs":
        _deprecated("ntt runs", "ntt jobs")
        args.command = "jobs"
    if args.command == "bank" and args.bank_cmd == "report":
        _deprecated("ntt bank report", "ntt bank grade")
        args.bank_cmd = "grade"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _new_words(args)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    from ntt.bank.encoder import InvalidReferenceError
    from ntt.bank.memory import BankError
    from ntt.io.images import ImageLoadError
    from ntt.models.weights import WeightsNotFoundError

    # Bad input of every kind (files, values, devices, checkpoints, disk full) is one line and exit code 2.
    known = (ConfigError, BankError, InvalidReferenceError, ImageLoadError, WeightsNotFoundError, ValueError, OSError)
    # A worker has its own SIGTERM (it stops after its current operation); other commands unwind as on Ctrl-C.
    own_signals = args.command not in ("worker", "jobs") and threading.current_thread() is threading.main_thread()
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
    from ntt.cli.pipeline import sidecar_path
    from ntt.io.outputs import check_output

    command = args.command if args.command != "bank" else f"bank {args.bank_cmd}"
    if command in ("bank build", "bank add", "bank remove") or (command == "bank grade" and args.calibrate):
        check_output(args.output or args.bank, [getattr(args, "refs", None)], "bank file")
    if command == "bank grade" and args.json_out is not None:
        check_output(args.json_out, [args.bank, args.refs, args.output if args.calibrate else None], "report file")
    elif command == "segment":
        inputs = [args.bank, args.images]
        check_output(args.output, inputs, "results file")
        check_output(sidecar_path(args.output), [*inputs, args.output], "results sidecar")
    elif getattr(args, "json_out", None) is not None:
        inputs = [args.gt, args.preds, sidecar_path(args.preds), args.bank] if command == "evaluate" else []
        check_output(args.json_out, inputs, "metrics file")


def _dispatch(args: argparse.Namespace) -> int:
    from ntt.cli import commands

    if args.command == "bank":
        if args.bank_cmd in ("build", "add"):
            run = commands.bank_build if args.bank_cmd == "build" else commands.bank_add
            return run(args, _config(args))
        if args.bank_cmd == "grade":
            return commands.bank_grade(args, _config(args))
        return commands.bank_info(args) if args.bank_cmd == "info" else commands.bank_remove(args)
    if args.command == "segment":
        return commands.segment(args, _config(args))
    if args.command == "benchmark":
        return commands.benchmark(args, _config(args))
    if args.command == "cache":
        return commands.cache(args.cache_cmd)
    if args.command == "weights":
        return commands.weights(_config(args))
    if args.command in ("worker", "jobs"):
        from ntt.fo.jobs import commands as fo_commands  # imports fiftyone: only for these commands

        return fo_commands.worker(args) if args.command == "worker" else fo_commands.jobs(args)
    return commands.evaluate(args)


if __name__ == "__main__":
    sys.exit(main())
