"""Form widgets shared by the operators: field, bank and tag pickers, the target view, model settings, notices
and the "cannot run" form. Each adds to ``inputs`` and returns what the form chose; reading and checking params
is ``settings``' job. No state lives here: FiftyOne re-imports plugin modules.
"""

from __future__ import annotations

import fiftyone.operators.types as types

from .settings import DELEGATE_ABOVE, SAME_AS_BANK, default_preset, device_problem, param, sdk, settings_problem

PRESET_LABELS = {
    SAME_AS_BANK: "Same models and settings as the bank",
    "paper": "Paper: SAM2 Hiera-L + DINOv2 ViT-L, 1024 prompts (GPU)",
    "fast": "Fast: the paper's models the fast way on a GPU (bf16, batched, compiled decoder)",
    "lite": "Lite: small models, guided prompts (CPU / laptop)",
    "smoke": "Smoke: tiny inputs (tests only; meaningless without real weights)",
}
NO_BANK = "This dataset has no NTT bank yet: build one ('NTT: build memory bank')."
DEVICES = {"auto": "Auto (this machine's GPU when present)", "cpu": "CPU", "cuda": "GPU (cuda, or cuda:N)"}


def invalid(inputs: types.Object, message: str) -> types.Property:
    """The form, blocked: Execute stays disabled and the App shows ``message`` once, in red above the fields."""
    prop = types.Property(inputs)
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
    """A dropdown of Detections fields; returns the chosen field (the param, else the default), or None when there
    is none (the caller says so, once). ``required=False`` when ``execute`` falls back to the same default."""
    fields = sdk().forms.detections_fields(ctx.dataset) if fields is None else fields
    if not fields:
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
        view=choices(types.AutocompleteView(), sdk().forms.detections_fields(ctx.dataset)),
        description="An existing Detections field or a new field name",
    )


def bank_input(inputs, ctx, label: str = "Bank", description: str | None = None) -> str | None:
    """A dropdown of the dataset's banks; returns the chosen name, or None without banks (the caller says so)."""
    banks = sdk().list_banks(ctx.dataset) if ctx.dataset is not None else []
    if not banks:
        return None
    dropdown = choices(types.DropdownView(), banks)
    inputs.enum(
        "bank", dropdown.values(), label=label, description=description, default=banks[0], required=True, view=dropdown
    )
    chosen = param(ctx, "bank", banks[0])
    return chosen if chosen in banks else banks[0]


def tag_input(inputs, ctx) -> str:
    default = sdk().forms.DEFAULT_TAG
    inputs.str("tag", label="Reference tag", default=default, description="Sample or label tag marking references")
    return param(ctx, "tag", default) or default


def target_input(inputs, ctx, action: str, **kwargs):
    """The standard target-view choice (dataset / current view / selection); returns the resolved view."""
    inputs.view_target(ctx, action_description=action, **kwargs)
    return ctx.target_view()


def model_inputs(inputs, ctx, same_as_bank: bool = False, settings=None, kinds=("sam2", "dinov2")) -> str | None:
    """Preset (default: the bank's when ``same_as_bank``, else what this machine runs well), device, random
    weights and the advanced JSON overrides; returns why they cannot run here, else None (see
    ``settings.settings_problem`` for ``settings`` and ``kinds``)."""
    from ntt.config import PRESETS

    presets = types.RadioGroup()
    for key in ([SAME_AS_BANK] if same_as_bank else []) + list(PRESETS):
        presets.add_choice(key, label=PRESET_LABELS.get(key, key))
    default = SAME_AS_BANK if same_as_bank else default_preset()
    inputs.enum("preset", presets.values(), label="Models", default=default, view=presets)
    device_input(inputs)
    inputs.bool(
        "random_weights",
        label="Random weights (no model files needed)",
        description="Randomly initialised models: the predictions are MEANINGLESS. Only to try the flow.",
        default=False,
    )
    inputs.bool("advanced", label="Advanced settings (JSON overrides)", default=False)
    if param(ctx, "advanced", False):
        inputs.str(
            "config_json",
            label="Overrides per section",
            default="{}",
            description='e.g. {"model": {"dtype": "bf16"}, "segment": {"points_per_side": 16}}',
            view=types.TextFieldView(multiline=True, rows=3),  # the code editor comes from a CDN: offline, never
        )
    return noted(inputs, settings_problem(ctx, param(ctx, "preset", default), settings, kinds))


def classes_input(inputs, counts: dict[str, int]) -> None:
    """A multi-choice of the references' classes (``counts``: name -> instances) that become shots; empty: all."""
    listed = ", ".join(f"{name} ({n})" for name, n in counts.items())
    inputs.list(
        "classes",
        types.String(),
        label="Classes",
        description=f"Only these classes become shots (empty: all of them: {listed})",
        view=choices(types.AutocompleteView(), counts),
    )


def class_thresholds_input(
    inputs, ctx, classes: list[str], calibrated: dict[str, float] | None = None, stale: str | None = None
) -> None:
    """A "per-class thresholds" box that opens a table: one threshold per bank class (params ``class_table.c<i>``,
    read by ``settings.class_thresholds``), pre-filled with the bank's ``calibrated`` thresholds (and then open).
    ``stale``: why the bank's stored calibration does not fit it any more (shown; nothing is pre-filled)."""
    calibrated = calibrated or {}
    if stale:
        inputs.view("calibration_stale", types.Warning(label="Calibrated thresholds not used", description=stale))
    note = " Pre-filled with the bank's calibrated thresholds ('NTT: grade references')." if calibrated else ""
    inputs.bool(
        "per_class",
        label="Per-class score thresholds",
        default=bool(calibrated),
        description="Close classes are the method's main failure mode: raise the threshold of a class that takes "
        "other classes' instances." + note,
    )
    if not param(ctx, "per_class", bool(calibrated)):
        return
    table = types.Object()
    for i, name in enumerate(classes):
        table.float(f"c{i}", label=name, min=0.0, max=1.0, default=calibrated.get(name))
    inputs.define_property("class_table", table, label="Threshold per class (empty: the score threshold above)")


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
    """Say what Execute and Schedule do here, truthfully: whether this App can schedule, what must run for a
    scheduled run to start, and (above ``DELEGATE_ABOVE``) that the run is long enough to schedule."""
    from .runner import background_available

    now = (
        f"Execute runs it now, in this App ({count} {what}), with progress here; 'NTT: jobs' (or leaving the page) "
        "stops it after the batch in progress, and what is done stays."
    )
    if background_available():
        later = (
            "Schedule queues it for a `fiftyone delegated launch -m` worker, which must be running (in a terminal, "
            "with this database); follow or stop it with 'NTT: jobs'."
        )
    else:
        later = (
            "Schedule is off in this App: start the App with FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS=true and run "
            "`fiftyone delegated launch -m` in another terminal to run it in the background."
        )
    label = f"{count} {what}: a long run; Schedule keeps it off this App" if count > DELEGATE_ABOVE else "How it runs"
    inputs.view("delegation", types.Notice(label=label, description=f"{now} {later}"))
