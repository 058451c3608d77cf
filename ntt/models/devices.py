"""Which devices exist here, and one resolver/validator for every device name a user types."""

from __future__ import annotations

import re

import torch

from ntt.config import ConfigError

_NAME = re.compile(r"(auto|cpu|cuda)(:(\d+))?")


def available_devices() -> list[str]:
    """Device names usable on this machine: ``cpu`` and ``cuda:0`` .. ``cuda:N-1``."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ["cpu"] + [f"cuda:{i}" for i in range(count)]


def machine_preset() -> str:
    """The preset this machine runs well: "fast" (the paper's models, batched, bf16) with a GPU, else "lite"."""
    return "fast" if torch.cuda.is_available() else "lite"


def resolve_device(device: str | None) -> torch.device:
    """``"auto"`` (or None) -> CUDA when available else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` checked to exist.

    Raises:
        ConfigError: an unknown name, or a device this machine does not have; the message lists the ones it has.
    """
    name = "auto" if device is None else str(device).strip().lower()
    match = _NAME.fullmatch(name)
    if match is None or (match.group(1) in ("auto", "cpu") and match.group(2)):
        raise ConfigError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N ({_have()})")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    index = int(match.group(3) or 0)
    if f"cuda:{index}" not in available_devices():
        raise ConfigError(f"device {device!r} is not available ({_have()})")
    return torch.device(name)


def _have() -> str:
    return "this machine has: " + ", ".join(available_devices())
