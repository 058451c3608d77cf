"""Form widgets shared by the operators: field, bank and tag pickers, the target view, model settings, notices
and the "cannot run" form. Each adds to ``inputs`` and returns what the form chose; reading and checking params
is ``settings``' job. No state lives here: FiftyOne re-imports plugin modules.
"""

from __future__ import annotations

import fiftyone.operators.types as types

from .settings import DELEGATE_ABOVE, SAME_AS_BANK, device_problem, param, sdk, settings_problem

PRESET_LABELS = {
    SAME_AS_BANK: "Same models and settings as the bank",
    "paper": "Paper: SAM2 Hiera-L + DINOv2 ViT-L, 1024 prompts (GPU)",
    "fast": "Fast: the paper's models the fast way on a GPU (bf16, batched, compiled decoder)",
    "lite": "Lite: small models, guided prompts (CPU / laptop)",
    "smoke": "Smoke: tiny inputs (tests only; meaningless without real weights)",
}
NO_BANK = "This dataset has no NTT bank yet: build one ('NTT: build memory bank')."
DEVICES = {"auto": "Auto (this machine's GPU when present)", "cpu": "CPU", "cuda": "GPU (cuda, or cuda:N)"}


def invalid(inputs: types.Object, message: str, label: str = "Cannot run") -> types.Property:
    """The form with a warning that says why it cannot run; Execute stays disabled."""
    inputs.view("problem", types.Warning(label=label, description=message))
    prop = types.Property(inputs, view=types.View(label=label))
    prop.invalid = True
    prop.error_message = message
    return prop


def form(inputs: types.Object, label: str) -> types.Property:
    return types.Property(inputs, view=types.View(label=label))


def choices(view, values) -> types.View:
    """``view`` (a dropdown, radio group or autocomplete) offering ``values``, each labelled by itself."""
    for value in values:
        view.add_choice(value, label=value)
    return view


def field_input(
    inputs, ctx, name: str, label: str, description: str, default=None, fields=None, required=True
) -> str | None:
    """A dropdown of Detections fields; returns the chosen field (the param, else the default), or None (with a
    warning) when there is none. ``required=False`` when ``execute`` falls back to the same default."""
    fields = sdk().detections_fields(ctx.dataset) if fields is None else fields
    if not fields:
        inputs.view(f"{name}_missing", types.Warning(label="No Detections field in this dataset"))
        return None
    dropdown = choices(types.DropdownView(), fields)
    pick = default if default in fields else fields[0]
    inputs.enum(
        name, dropdown.values(), label=label, description=description, default=pick, required=required, view=dropdown
    )
    return param(ctx, name, pick)


def new_field_input(inputs, ctx, name: str, label: str, default: str) -> None:
    """An autocomplete for an output field: an existing Detections field or a new name."""
    inputs.str(
        name,
        label=label,
        default=default,
        required=True,
        view=choices(types.AutocompleteView(), sdk().detections_fields(ctx.dataset)),
        description="An existing Detections field or a new field name",
    )


def bank_input(inputs, ctx, label: str = "Bank", description: str | None = None) -> str | None:
    """A dropdown of the dataset's banks; returns the chosen name, or None (with a warning) without banks."""
    banks = sdk().list_banks(ctx.dataset) if ctx.dataset is not None else []
    if not banks:
        inputs.view("no_bank", types.Warning(label="No NTT bank yet: run 'NTT: build memory bank' first"))
        return None
    dropdown = choices(types.DropdownView(), banks)
    inputs.enum(
        "bank", dropdown.values(), label=label, description=description, default=banks[0], required=True, view=dropdown
    )
    chosen = param(ctx, "bank", banks[0])
    return chosen if chosen in banks else banks[0]


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
    return noted(inputs, settings_problem(ctx))


def device_input(inputs, ctx=None) -> str | None:
    """The device choice: "auto" is the machine that runs the operation, never the one a bank was built on.
    With ``ctx``, also checks the chosen device and returns why it cannot run, else None."""
    devices = types.AutocompleteView()
    for key, label in DEVICES.items():
        devices.add_choice(key, label=label)
    inputs.str("device", label="Device", default="auto", view=devices)
    return None if ctx is None else noted(inputs, device_problem(ctx, param(ctx, "device", "auto")))


def noted(inputs, checked: tuple[str | None, str | None]) -> str | None:
    """Show a settings check's note in the form (if any); return its problem."""
    problem, note = checked
    if note:
        inputs.view("device_note", types.Notice(label=note))
    return problem


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
