"""The options of segmenting, defined once for every command that starts a segment: ``ntt segment`` (COCO files)
and ``ntt jobs submit`` (a FiftyOne dataset, sharded) both call ``add_segment_options``, and both turn the flags
into settings with ``config_overrides``; ``ntt.fo.segment`` takes the same options as keywords (the machine-readable
map is ``SEGMENT_OPTIONS``). Core module: no FiftyOne, no torch."""

from __future__ import annotations

import argparse
import json
import math
import re
from typing import Any

from ntt.config import PRESETS, ConfigError

# The flags that are settings of the models or of the prompts: on both commands they become the config's fields
# (section, field), layered on the preset (``ntt segment``) or on the bank's own settings (``ntt jobs submit``
# passes them as the SDK's ``config``). Every model-using command (bank build, grade, benchmark, ...) has them too.
CONFIG_FLAGS: dict[str, tuple[str, str]] = {
    "--dtype": ("model", "dtype"),
    "--sam2": ("model", "sam2"),
    "--dinov2": ("model", "dinov2"),
    "--sam2-checkpoint": ("model", "sam2_checkpoint"),
    "--dinov2-checkpoint": ("model", "dinov2_checkpoint"),
    "--random-weights": ("model", "random_weights"),
    "--weights-seed": ("model", "seed"),
    "--compile": ("model", "compile"),
    "--points-batch-size": ("segment", "points_batch_size"),
    "--points-per-side": ("segment", "points_per_side"),
    "--prompt-mode": ("segment", "prompt_mode"),
}

# Each keyword of the SDK's ``segment`` (``ntt.fo.segment``; bank and collection aside) and the flag that carries
# it; ``config`` is ``--config`` plus every flag of ``CONFIG_FLAGS``.
SEGMENT_OPTIONS: dict[str, str] = {
    "label_field": "--label-field",
    "score_thresh": "--score-thresh",
    "class_thresholds": "--class-thresholds",
    "max_instances": "--max-instances",
    "batch_size": "--batch-size",
    "device": "--device",
    "preset": "--preset",
    "config": "--config",
    "skip_existing": "--skip-existing",
    "overwrite": "--overwrite",
    "exclude_references": "--no-exclude-references",
    "tag": "--tag",
    "cache": "--cache",
    "thresholds": "--thresholds",
    "mask_dir": "--mask-dir",
    "keep_embeddings": "--no-keep-embeddings",
}

# Keywords that only mean something on a dataset, so `ntt segment` (COCO files) has no flag for them: it writes a
# new results file (-o) each time, not a field of a dataset (label_field); there are no labels already there to
# skip or replace (skip_existing, overwrite: the file is replaced whole, atomically); its targets are the images
# given, apart from the references it was built from, which it never sees as samples (exclude_references, tag:
# the reference tag); its masks go in the results file as RLE, never as PNG files (mask_dir); and the predictions'
# embeddings are kept by label id for the App's maps and search (keep_embeddings), which a results file has not.
DATASET_ONLY = frozenset(
    {"label_field", "skip_existing", "overwrite", "exclude_references", "tag", "mask_dir", "keep_embeddings"}
)

# The other way round: flags of `ntt segment` that say which COCO files to read and write and how to write boxes in
# them; on a dataset its samples are the targets and the labels are FiftyOne Detections (boxes from the masks).
FILES_ONLY = ("--images", "--image-root", "--output", "--max-images", "--box-inclusive")

# ``ntt segment`` has no SDK call to take these keywords: it puts them in the config itself.
_IN_CONFIG: dict[str, tuple[str, str]] = {
    "device": ("model", "device"),
    "batch_size": ("segment", "batch_size"),
    "score_thresh": ("segment", "score_thresh"),
    "class_thresholds": ("segment", "class_thresholds"),
    "max_instances": ("segment", "max_instances"),
    "cache": ("segment", "cache"),
}

# Flags that turn off a keyword that is on by default: their dest is the keyword (without "no-").
_NEGATED = ("--no-exclude-references", "--no-keep-embeddings")

# The SDK's defaults of its flags-only-when-given keywords: a value equal to them is not passed.
_SDK_DEFAULTS = {"skip_existing": False, "overwrite": False, "exclude_references": True, "keep_embeddings": True}


def add_model_options(p: argparse.ArgumentParser, preset_default: str | None = "paper") -> None:
    """The models and runtime: preset, device, batch sizes, the ``CONFIG_FLAGS`` model flags and --config."""
    g = p.add_argument_group("models and runtime")
    if preset_default is None:
        preset_help = "settings preset (default: the bank's own settings)"
    else:
        preset_help = f"settings preset (default: {preset_default})"
    g.add_argument("--preset", default=preset_default, choices=sorted(PRESETS), help=preset_help)
    if preset_default is None:  # a job: each worker runs on its own device (its CUDA_VISIBLE_DEVICES)
        g.add_argument("--device", default=None, help="auto (the default) only: each worker uses its own device")
    else:
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
        help=f"settings the flags do not cover, layered on the {'preset' if preset_default else 'settings'} (flags "
        "given win): a JSON file or an inline "
        """JSON object of sections, e.g. '{"segment": {"pred_iou_thresh": 0.7}, "model": {"sam2_image_size": 512}}'""",
    )


def add_segment_options(p: argparse.ArgumentParser, on_dataset: bool) -> None:
    """Every option of segmenting (``SEGMENT_OPTIONS``), on ``ntt segment`` and ``ntt jobs submit`` alike; with
    ``on_dataset``, also the ``DATASET_ONLY`` ones (and the preset defaults to the bank's own settings)."""
    g = p.add_argument_group("segmenting")
    g.add_argument("--score-thresh", type=float, default=None, help="drop detections below this score")
    g.add_argument(
        "--class-thresholds",
        type=class_thresholds,
        default=None,
        help="""per-class score thresholds over --score-thresh: a JSON object or file of class name -> threshold in """
        """[0, 1], e.g. '{"dog": 0.5}' (with --thresholds calibrated, these win)""",
    )
    g.add_argument("--max-instances", type=int, default=None, help="detections per image (default 100)")
    g.add_argument("--points-per-side", type=int, default=None, help="prompt grid side (default 32)")
    g.add_argument("--prompt-mode", default=None, choices=["grid", "guided"], help="dense grid or DINOv2-guided")
    g.add_argument(
        "--thresholds",
        choices=["calibrated"],
        default=None,
        help="per-class score thresholds: 'calibrated' takes those `ntt bank grade --calibrate` stored in the bank",
    )
    g.add_argument(
        "--cache",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="read and fill the candidate cache: re-segmenting after a bank change skips the encoders (and with grid "
        "prompts the decoder) (default: the preset's: on in fast and lite, off in the faithful paper preset)",
    )
    if on_dataset:
        d = p.add_argument_group("the dataset")
        d.add_argument("--label-field", default="ntt", help="output Detections field (default: ntt)")
        done = d.add_mutually_exclusive_group()
        done.add_argument("--skip-existing", action="store_true", help="leave samples already labelled out")
        done.add_argument("--overwrite", action="store_true", help="replace existing labels")
        d.add_argument(
            "--no-exclude-references",
            dest="exclude_references",
            action="store_false",
            help="segment the reference samples too (default: left out, they would match themselves)",
        )
        d.add_argument("--tag", default=None, help="the reference tag (default: the bank's, else ntt_ref)")
        d.add_argument("--mask-dir", default=None, help="write masks as PNGs under this shared folder")
        d.add_argument(
            "--no-keep-embeddings",
            dest="keep_embeddings",
            action="store_false",
            help="do not keep each prediction's embedding (default: kept, for the App's maps and similarity search)",
        )
    add_model_options(p, preset_default=None if on_dataset else "paper")


def class_thresholds(text: str) -> dict[str, float]:
    """argparse type of --class-thresholds: an inline JSON object (``{"dog": 0.5}``) or a JSON file of one, class
    name -> score threshold in [0, 1]."""
    if text.lstrip().startswith(("{", "[")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise argparse.ArgumentTypeError(f"""not valid JSON ({err}); give e.g. '{{"dog": 0.5}}'""") from None
    else:
        from ntt.io.coco_check import read_json

        try:
            data = read_json(text)
        except (OSError, ValueError) as err:
            message = re.sub(r"^\[Errno \d+\] ", "", str(err))
            message = message if text in message else f"{text}: {message}"
            raise argparse.ArgumentTypeError(
                f"""{message} (give a JSON file or an inline object, e.g. '{{"dog": 0.5}}')"""
            ) from None
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError(
            f"""give an object of class name -> threshold, e.g. '{{"dog": 0.5}}', not a JSON {type(data).__name__}"""
        )
    for name, value in data.items():
        if not name.strip():
            raise argparse.ArgumentTypeError("a class name is empty")
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or not 0 <= value <= 1:
            raise argparse.ArgumentTypeError(f"the threshold of {name!r} must be a number in [0, 1], got {value!r}")
    return {name: float(value) for name, value in data.items()}


def config_file(text: str | None) -> dict:
    """--config: an inline JSON object or a JSON file of per-section settings (checked by ``get_config``)."""
    if text is None:
        return {}
    from ntt.io.coco_check import read_json

    try:
        data = json.loads(text) if text.lstrip().startswith("{") else read_json(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"--config: not a valid JSON object ({err})") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError('--config: give an object of sections, e.g. {"segment": {"pred_iou_thresh": 0.7}}')
    return {section: dict(values) for section, values in data.items()}


def config_overrides(args: argparse.Namespace, in_config: bool = True, extra: dict | None = None) -> dict:
    """The settings the flags given ask for, as per-section overrides: --config, then the ``CONFIG_FLAGS``, then
    ``extra`` segment fields (flags given win). ``in_config``: the segment keywords too (``ntt segment`` and the
    other commands: they have no SDK call to take them as keywords); ``ntt jobs submit`` passes those as keywords.
    A flag a command lacks counts as not given."""
    given = config_file(getattr(args, "config", None))
    flags = dict(CONFIG_FLAGS)
    if in_config:
        flags.update({SEGMENT_OPTIONS[keyword]: where for keyword, where in _IN_CONFIG.items()})
    values: dict[str, dict[str, Any]] = {}
    for flag, (section, field) in flags.items():
        value = getattr(args, _dest(flag), None)
        if flag == "--random-weights" and not value:
            value = None  # store_true: not given is "the preset's", never an explicit False
        values.setdefault(section, {})[field] = value
    values["segment"].update(extra or {})
    for section, fields in values.items():
        given[section] = {**given.get(section, {}), **{k: v for k, v in fields.items() if v is not None}}
    return {section: fields for section, fields in given.items() if fields}


def dataset_keywords(args: argparse.Namespace) -> dict[str, Any]:
    """The SDK keywords of ``segment`` the flags of ``ntt jobs submit`` give (``SEGMENT_OPTIONS``): each flag
    given, ``config`` the settings of the model flags and --config (None: none given, the bank's own)."""
    keywords = {keyword: getattr(args, _dest(flag)) for keyword, flag in SEGMENT_OPTIONS.items() if keyword != "config"}
    keywords["config"] = config_overrides(args, in_config=False) or None
    return {k: v for k, v in keywords.items() if v is not None and (k not in _SDK_DEFAULTS or v != _SDK_DEFAULTS[k])}


def _dest(flag: str) -> str:
    return flag.removeprefix("--no-" if flag in _NEGATED else "--").replace("-", "_")
