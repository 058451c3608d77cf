"""Form helpers shared by the operators: field pickers, bank dropdown, model settings, validation messages,
and progress in both execution modes. No state lives here (FiftyOne re-imports plugin modules)."""

from __future__ import annotations

import queue
import threading

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

DELEGATE_ABOVE = 20  # samples: larger views default to a delegated (background) run
PRESETS = {
    "paper": "Paper (SAM2 Hiera-L + DINOv2 ViT-L, 1024 prompts): GPU",
    "lite": "Lite (small models, guided prompts): CPU / laptop",
    "smoke": "Smoke (tiny inputs): tests only",
}
DEVICES = {"auto": "Auto (GPU when present)", "cpu": "CPU", "cuda": "GPU (cuda)"}


def sdk():
    """``ntt.fo``, imported lazily so a missing dependency is reported in the form, not at plugin load."""
    import ntt.fo

    return ntt.fo


def dependency_problem() -> str | None:
    """A message when ntt or its heavy dependencies cannot be imported, else None."""
    try:
        sdk()
        import sam2  # noqa: F401
        import timm  # noqa: F401
        import torch  # noqa: F401
    except Exception as err:  # noqa: BLE001 - any import failure must become a form message
        reason = f"{type(err).__name__}: {err}"
        return f"The ntt library is not usable here ({reason}). Install it with `pip install -e <plugin dir>`."
    return None


def invalid(inputs: types.Object, message: str, label: str = "Cannot run") -> types.Property:
    """A form that explains why it cannot run and keeps Execute disabled."""
    inputs.view("problem", types.Warning(label=label, description=message))
    prop = types.Property(inputs, view=types.View(label=label))
    prop.invalid = True
    prop.error_message = message
    return prop


def detections_fields(ctx) -> list[str]:
    """Top-level ``Detections`` fields of the current dataset."""
    if ctx.dataset is None:
        return []
    schema = ctx.dataset.get_field_schema(embedded_doc_type=fo.Detections)
    return sorted(schema)


def field_input(inputs: types.Object, ctx, name: str, label: str, description: str, default=None) -> bool:
    """A dropdown of Detections fields; returns False (with a warning) when there is none."""
    fields = detections_fields(ctx)
    if not fields:
        inputs.view(f"{name}_missing", types.Warning(label="No Detections field in this dataset"))
        return False
    choices = types.DropdownView()
    for field in fields:
        choices.add_choice(field, label=field)
    pick = default if default in fields else fields[0]
    inputs.enum(name, choices.values(), label=label, description=description, default=pick, view=choices)
    return True


def new_field_input(inputs: types.Object, ctx, name: str, label: str, default: str) -> None:
    """An autocomplete for an output field: an existing Detections field or a new name."""
    view = types.AutocompleteView()
    for field in detections_fields(ctx):
        view.add_choice(field, label=field)
    inputs.str(name, label=label, default=default, required=True, view=view)


def bank_input(inputs: types.Object, ctx) -> bool:
    """A dropdown of the dataset's banks; returns False (with a warning) when there is none."""
    banks = sdk().list_banks(ctx.dataset) if ctx.dataset is not None else []
    if not banks:
        inputs.view("no_bank", types.Warning(label="No bank yet: run 'Build NTT memory bank' first"))
        return False
    choices = types.DropdownView()
    for name in banks:
        choices.add_choice(name, label=name)
    inputs.enum("bank", choices.values(), label="Bank", default=banks[0], required=True, view=choices)
    return True


def model_inputs(inputs: types.Object, default_preset: str = "paper", extra: dict | None = None) -> None:
    """Preset, device and batch size (the advanced ``config`` param is accepted from code only)."""
    presets = types.RadioGroup()
    for key, label in {**(extra or {}), **PRESETS}.items():
        presets.add_choice(key, label=label)
    inputs.enum("preset", presets.values(), label="Models", default=default_preset, view=presets)
    devices = types.DropdownView()
    for key, label in DEVICES.items():
        devices.add_choice(key, label=label)
    inputs.enum("device", devices.values(), label="Device", default="auto", view=devices)
    inputs.int("batch_size", label="Batch size", default=1, min=1, description="Images per forward pass")


def delegation_input(inputs: types.Object, ctx, view) -> None:
    """A checkbox to run in the background, on by default for large views."""
    big = view is not None and view.count() > DELEGATE_ABOVE
    inputs.bool(
        "delegate",
        label="Run in the background (delegated)",
        default=big,
        description="Needs a running `fiftyone delegated launch`. Recommended above "
        f"{DELEGATE_ABOVE} samples: immediate runs stop after FIFTYONE_OPERATOR_TIMEOUT (600 s by default).",
    )


def execution_options(ctx) -> foo.ExecutionOptions:
    return foo.ExecutionOptions(allow_immediate_execution=True, allow_delegated_execution=True)


def target_view(ctx):
    """The view the user chose with ``view_target``; without that param, the context's view."""
    return ctx.target_view() if "view_target" in ctx.params else ctx.view


def run_with_progress(ctx, work):
    """Run ``work(progress)`` with stage-labelled progress in both modes (a generator for ``execute``).

    Delegated: ``progress`` goes to ``ctx.set_progress`` (stored with the operation). Immediate: ``work``
    runs in a thread and each progress event is yielded to the App as a ``set_progress`` trigger;
    the dataset is reloaded and the summary ``work`` returns is shown as a notification at the end.
    """
    in_app = ctx.executor is not None and not ctx.delegated
    if not in_app:
        work(lambda fraction, label: ctx.set_progress(progress=fraction, label=label))
        return
    events: queue.Queue = queue.Queue()
    outcome: dict = {}

    def target():
        try:
            outcome["result"] = work(lambda fraction, label: events.put((fraction, label)))
        except BaseException as err:  # noqa: BLE001 - re-raised in the operator's thread below
            outcome["error"] = err
        finally:
            events.put(None)

    thread = threading.Thread(target=target, name="ntt-operator", daemon=True)
    thread.start()
    while (event := events.get()) is not None:
        yield ctx.trigger("set_progress", dict(progress=event[0], label=event[1]))
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    yield ctx.trigger("reload_dataset")
    yield ctx.trigger("notify", dict(message=summary_text(outcome.get("result")), variant="success"))


def summary_text(result) -> str:
    if not isinstance(result, dict):
        return "Done"
    parts = [f"{k}: {v}" for k, v in result.items() if isinstance(v, (int, float, str))]
    return "Done. " + ", ".join(parts)
