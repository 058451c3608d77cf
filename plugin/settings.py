"""What the operators read from ``ctx.params`` and check before they run: params, the reference tag, the model
settings (preset, device, JSON overrides), delegation, and whether the ntt library is usable here. No state lives
here: FiftyOne re-imports plugin modules. The form widgets are in ``widgets``.

``ntt`` and its heavy dependencies are imported inside functions, so a broken install shows up as a warning in the
form (``dependency_problem``) instead of the plugin silently vanishing from the App.
"""

from __future__ import annotations

import json

DELEGATE_ABOVE = 20  # samples: larger runs default to a delegated (background) run
SAME_AS_BANK = "bank"  # the preset choice of segment_with_bank that reuses the bank's own settings


def sdk():
    """``ntt.fo``, imported lazily so that a missing dependency is reported in the form."""
    import ntt.fo

    return ntt.fo


def dependency_problem() -> str | None:
    """A message when ntt cannot be imported or a model package is not installed, else None. The model packages
    are only looked up (importing timm alone takes seconds: the first form would wait for it)."""
    import importlib.util

    try:
        sdk()
        missing = [name for name in ("sam2", "timm") if importlib.util.find_spec(name) is None]
    except Exception as err:  # noqa: BLE001 - any import failure must become a form message
        missing = [f"{type(err).__name__}: {err}"]
    if not missing:
        return None
    return (
        f"The ntt library is not usable here (missing: {', '.join(missing)}). Install it into the environment "
        "FiftyOne runs in: `pip install -e <plugin dir>`."
    )


def param(ctx, key: str, default=None):
    """``ctx.params[key]``, or ``default`` when absent or null (the App sends null for cleared fields)."""
    value = ctx.params.get(key, default)
    return default if value is None else value


def reference_tag(ctx) -> str:
    """The reference tag the form chose (the default tag when left empty)."""
    default = sdk().forms.DEFAULT_TAG
    return param(ctx, "tag", default) or default


def reference_count(ctx, field: str | None) -> int:
    """Reference samples of the target view in ``field`` (0 for a missing or non-Detections field)."""
    nfo = sdk()
    if field not in nfo.forms.detections_fields(ctx.dataset):
        return 0
    return len(nfo.forms.reference_ids(ctx.target_view(), reference_tag(ctx), field))


def default_preset() -> str:
    """The preset forms start with: what this machine runs well (lite on a CPU, fast on a GPU)."""
    from ntt.models.devices import machine_preset

    return machine_preset()


def settings_problem(ctx, preset: str, settings=None, kinds=("sam2", "dinov2")) -> tuple[str | None, str | None]:
    """``(problem, note)``: why ``preset`` with the form's device and overrides cannot run here (else None): an
    invalid configuration, a device this machine lacks, or checkpoint files of ``kinds`` it cannot get (every
    missing file named, with where it goes and the 'Random weights' way out); and a note for the form. For a
    background run, a missing device or file is only a note: the worker may have it.

    Args:
        settings: ``(preset, overrides, device) -> NTTConfig`` (default: ``get_config``; segmenting uses the
            bank's settings).
    """
    from ntt.config import ConfigError, get_config
    from ntt.models import missing_weights
    from ntt.models.weights import missing_message

    try:
        cfg = (settings or get_config)(preset, config_overrides(ctx), device(ctx))
    except (ConfigError, ValueError) as err:
        return f"Invalid settings: {err}", None
    problem, note = device_problem(ctx, cfg.model.device)
    missing = [] if problem else missing_weights(cfg.model, kinds)
    if not missing:
        return problem, note
    message = missing_message(missing, "tick 'Random weights' below")
    return (None, f"{message} The machine running it must have them.") if delegating(ctx) else (message, None)


def device_problem(ctx, name: str) -> tuple[str | None, str | None]:
    """``(problem, note)``: why ``name`` is not a device of this machine (the message lists the ones it has), else
    None. A GPU this machine lacks is only a note for a background run: another machine may run it."""
    from ntt.config import ConfigError
    from ntt.models.devices import resolve_device

    try:
        resolve_device(name)
    except ConfigError as err:
        if delegating(ctx) and str(name).strip().lower().startswith("cuda"):
            return None, f"{err}: the machine running it must have it"
        return f"Invalid settings: {err}", None
    return None, None


def delegating(ctx) -> bool:
    """Whether this run is (asked to be) delegated to a background worker."""
    return bool(ctx.params.get("delegate")) or bool(getattr(ctx, "requesting_delegated_execution", False))


def config_overrides(ctx) -> dict | None:
    """The ``config`` param (a dict, from code) or the form's JSON overrides, with the form's 'Random weights'; None
    when none is set.

    Raises:
        ValueError: the JSON does not parse or is not an object of sections.
    """
    config = ctx.params.get("config")
    if config is None and param(ctx, "advanced", False):
        text = (param(ctx, "config_json", "") or "").strip()
        config = json.loads(text) if text else None
    if config is not None and not (isinstance(config, dict) and all(isinstance(v, dict) for v in config.values())):
        raise ValueError('overrides must be an object of sections, e.g. {"model": {"dtype": "bf16"}}')
    if param(ctx, "random_weights", False):
        config = {**(config or {}), "model": {**(config or {}).get("model", {}), "random_weights": True}}
    return config or None


def class_thresholds(ctx, classes: list[str]) -> dict[str, float] | None:
    """The ``class_thresholds`` param (a dict, from code), else the form's per-class table over the bank's
    ``classes`` (empty cells: the global score threshold); None when neither sets any."""
    given = ctx.params.get("class_thresholds")
    if given is not None or not param(ctx, "per_class", False):  # the App sends the box's default when shown
        return given
    table = param(ctx, "class_table", {}) or {}
    chosen = {name: table.get(f"c{i}") for i, name in enumerate(classes)}
    return {name: value for name, value in chosen.items() if value is not None} or None


def device(ctx) -> str | None:
    """The device param for the SDK: None for "auto", which the SDK resolves on the machine running the
    operation (the config overrides' device when they set one; never the device a bank was built on)."""
    value = param(ctx, "device", "auto")
    return None if value == "auto" else value
