"""Form helpers shared by the operators: field pickers, the bank dropdown, model settings, the target view,
delegation hints and the "cannot run" form. No state lives here: FiftyOne re-imports plugin modules.

``ntt`` and its heavy dependencies are imported inside functions, so a broken install shows up as a
warning in the form (``dependency_problem``) instead of the plugin silently vanishing from the App.
"""

from __future__ import annotations

import json

import fiftyone as fo
import fiftyone.operators.types as types

DELEGATE_ABOVE = 20  # samples: larger runs default to a delegated (background) run
SAME_AS_BANK = "bank"  # the preset choice of segment_with_bank that reuses the bank's own settings
PRESET_LABELS = {
    SAME_AS_BANK: "Same models and settings as the bank",
    "paper": "Paper: SAM2 Hiera-L + DINOv2 ViT-L, 1024 prompts (GPU)",
    "fast": "Fast: the paper's models the fast way on a GPU (bf16, batched, compiled decoder)",
    "lite": "Lite: small models, guided prompts (CPU / laptop)",
    "smoke": "Smoke: tiny inputs (tests only; meaningless without real weights)",
}
NO_BANK = "This dataset has no NTT bank yet: build one ('NTT: build memory bank')."
DEVICES = {"auto": "Auto (this machine's GPU when present)", "cpu": "CPU", "cuda": "GPU (cuda, or cuda:N)"}


def sdk():
    """``ntt.fo``, imported lazily so that a missing dependency is reported in the form."""
    import ntt.fo

    return ntt.fo


def dependency_problem() -> str | None:
    """A message when ntt or its model dependencies cannot be imported, else None."""
    try:
        sdk()
        import sam2  # noqa: F401
        import timm  # noqa: F401
        import torch  # noqa: F401
    except Exception as err:  # noqa: BLE001 - any import failure must become a form message
        return (
            f"The ntt library is not usable here ({type(err).__name__}: {err}). Install it into the "
            "environment FiftyOne runs in: `pip install -e <plugin dir>`."
        )
    return None


def param(ctx, key: str, default=None):
    """``ctx.params[key]``, or ``default`` when absent or null (the App sends null for cleared fields)."""
    value = ctx.params.get(key, default)
    return default if value is None else value


def invalid(inputs: types.Object, message: str, label: str = "Cannot run") -> types.Property:
    """The form with a warning that says why it cannot run; Execute stays disabled."""
    inputs.view("problem", types.Warning(label=label, description=message))
    prop = types.Property(inputs, view=types.View(label=label))
    prop.invalid = True
    prop.error_message = message
    return prop


def form(inputs: types.Object, label: str) -> types.Property:
    return types.Property(inputs, view=types.View(label=label))


def detections_fields(coll) -> list[str]:
    """Paths of the ``Detections`` fields of a collection (flat schema, none inside list fields)."""
    if coll is None:
        return []
    schema = coll.get_field_schema(flat=True)
    lists = [path + "." for path, field in schema.items() if isinstance(field, fo.ListField)]
    return sorted(
        path
        for path, field in schema.items()
        if isinstance(field, fo.EmbeddedDocumentField)
        and issubclass(field.document_type, fo.Detections)
        and not any(path.startswith(prefix) for prefix in lists)
    )


def field_problem(coll, field: str) -> str | None:
    """Why ``field`` cannot hold instances: missing, or not ``Detections``; None when it is fine."""
    schema = coll.get_field_schema(flat=True)
    if field not in schema:
        return f"The dataset has no field '{field}'."
    doc_type = getattr(schema[field], "document_type", None)
    if doc_type is None or not issubclass(doc_type, fo.Detections):
        kind = doc_type.__name__ if doc_type else type(schema[field]).__name__
        return f"Field '{field}' holds {kind}, not Detections (instance masks or boxes)."
    return None


def field_input(
    inputs, ctx, name: str, label: str, description: str, default=None, fields=None, required=True
) -> str | None:
    """A dropdown of Detections fields; returns the chosen field (the param, else the default), or None (with a
    warning) when there is none. ``required=False`` when ``execute`` falls back to the same default."""
    fields = detections_fields(ctx.dataset) if fields is None else fields
    if not fields:
        inputs.view(f"{name}_missing", types.Warning(label="No Detections field in this dataset"))
        return None
    choices = types.DropdownView()
    for field in fields:
        choices.add_choice(field, label=field)
    pick = default if default in fields else fields[0]
    inputs.enum(
        name, choices.values(), label=label, description=description, default=pick, required=required, view=choices
    )
    return param(ctx, name, pick)


def new_field_input(inputs, ctx, name: str, label: str, default: str) -> None:
    """An autocomplete for an output field: an existing Detections field or a new name."""
    view = types.AutocompleteView()
    for field in detections_fields(ctx.dataset):
        view.add_choice(field, label=field)
    inputs.str(
        name,
        label=label,
        default=default,
        required=True,
        view=view,
        description="An existing Detections field or a new field name",
    )


def bank_input(inputs, ctx, label: str = "Bank") -> str | None:
    """A dropdown of the dataset's banks; returns the chosen name, or None (with a warning) without banks."""
    banks = sdk().list_banks(ctx.dataset) if ctx.dataset is not None else []
    if not banks:
        inputs.view("no_bank", types.Warning(label="No NTT bank yet: run 'NTT: build memory bank' first"))
        return None
    choices = types.DropdownView()
    for name in banks:
        choices.add_choice(name, label=name)
    inputs.enum("bank", choices.values(), label=label, default=banks[0], required=True, view=choices)
    chosen = param(ctx, "bank", banks[0])
    return chosen if chosen in banks else banks[0]


def reference_tag(ctx) -> str:
    """The reference tag the form chose (the default tag when left empty)."""
    default = sdk().DEFAULT_TAG
    return param(ctx, "tag", default) or default


def reference_count(ctx, field: str | None) -> int:
    """Reference samples of the target view in ``field`` (0 for a missing or non-Detections field)."""
    if field is None or field_problem(ctx.dataset, field):
        return 0
    return len(sdk().reference_ids(ctx.target_view(), reference_tag(ctx), field))


def tag_input(inputs, ctx) -> str:
    default = sdk().DEFAULT_TAG
    inputs.str("tag", label="Reference tag", default=default, description="Sample or label tag marking references")
    return param(ctx, "tag", default) or default


def target_input(inputs, ctx, action: str, **kwargs):
    """The standard target-view choice (dataset / current view / selection); returns the resolved view."""
    inputs.view_target(ctx, action_description=action, **kwargs)
    return ctx.target_view()


def model_inputs(inputs, ctx, default_preset: str = "paper", same_as_bank: bool = False) -> str | None:
    """Preset, device and the advanced JSON overrides; returns why the settings are invalid, else None."""
    from ntt.config import PRESETS

    presets = types.RadioGroup()
    for key in ([SAME_AS_BANK] if same_as_bank else []) + list(PRESETS):
        presets.add_choice(key, label=PRESET_LABELS.get(key, key))
    inputs.enum("preset", presets.values(), label="Models", default=default_preset, view=presets)
    device_input(inputs)
    inputs.bool("advanced", label="Advanced settings (JSON overrides)", default=False)
    if param(ctx, "advanced", False):
        inputs.str(
            "config_json",
            label="Overrides per section",
            default="{}",
            description='e.g. {"model": {"dtype": "bf16"}, "segment": {"points_per_side": 16}}',
            view=types.CodeView(language="json"),
        )
    return settings_problem(ctx, inputs)


def device_input(inputs) -> None:
    """The device choice: "auto" is the machine that runs the operation, never the one a bank was built on."""
    devices = types.AutocompleteView()
    for key, label in DEVICES.items():
        devices.add_choice(key, label=label)
    inputs.str("device", label="Device", default="auto", view=devices)


def settings_problem(ctx, inputs=None) -> str | None:
    """Why the preset / device / config overrides cannot make a valid configuration, else None."""
    from ntt.config import ConfigError, make_config

    try:
        overrides = config_overrides(ctx)
        preset = param(ctx, "preset", "paper")
        cfg = make_config("paper" if preset == SAME_AS_BANK else preset, overrides, device(ctx))
    except (ConfigError, ValueError) as err:
        return f"Invalid settings: {err}"
    return device_problem(ctx, cfg.model.device, inputs)


def device_problem(ctx, name: str, inputs=None) -> str | None:
    """Why ``name`` is not a device of this machine (the message lists the ones it has), else None.

    A GPU this machine lacks is only a notice for a background run: another machine may run it."""
    from ntt.config import ConfigError
    from ntt.devices import resolve_device

    try:
        resolve_device(name)
    except ConfigError as err:
        if not (delegating(ctx) and str(name).strip().lower().startswith("cuda")):
            return f"Invalid settings: {err}"
        if inputs is not None:
            inputs.view("device_note", types.Notice(label=f"{err}: the machine running it must have it"))
    return None


def delegating(ctx) -> bool:
    """Whether this run is (asked to be) delegated to a background worker."""
    return bool(ctx.params.get("delegate")) or bool(getattr(ctx, "requesting_delegated_execution", False))


def config_overrides(ctx) -> dict | None:
    """The ``config`` param (a dict, from code) or the form's JSON overrides; None when neither is set.

    Raises:
        ValueError: the JSON does not parse or is not an object of sections.
    """
    config = ctx.params.get("config")
    if config is None and param(ctx, "advanced", False):
        text = (param(ctx, "config_json", "") or "").strip()
        config = json.loads(text) if text else None
    if config is not None and not (isinstance(config, dict) and all(isinstance(v, dict) for v in config.values())):
        raise ValueError('overrides must be an object of sections, e.g. {"model": {"dtype": "bf16"}}')
    return config or None


def device(ctx) -> str | None:
    """The device param for the SDK: None for "auto", which the SDK resolves on the machine running the
    operation (the config overrides' device when they set one; never the device a bank was built on)."""
    value = param(ctx, "device", "auto")
    return None if value == "auto" else value


def delegation_notice(inputs, count: int, what: str = "samples") -> None:
    """Tell the user how the run will go: immediate, or in the background above ``DELEGATE_ABOVE``."""
    if count > DELEGATE_ABOVE:
        inputs.view(
            "delegation",
            types.Notice(
                label=f"{count} {what}: this runs in the background by default",
                description="Background (delegated) runs need `fiftyone delegated launch` running; choose "
                "'Execute' to run now instead (keep the App open: closing it stops the run).",
            ),
        )
