"""Finding checkpoint files: explicit path, env vars, checkpoint dir, cache dir, then the hub if online.

Order for a model named e.g. ``sam2_hiera_l`` with Meta's file ``sam2_hiera_large.pt``:

1. an explicit path (``ModelConfig.sam2_checkpoint`` / ``--sam2-checkpoint``);
2. ``NTT_SAM2_CHECKPOINT`` / ``NTT_DINOV2_CHECKPOINT`` (a file);
3. ``$NTT_CHECKPOINT_DIR/<file name>``;
4. ``$NTT_CACHE_DIR/checkpoints/<file name>`` (default ``~/.cache/ntt/checkpoints``);
5. the Hugging Face hub, only when the network answers and ``NTT_OFFLINE``/``HF_HUB_OFFLINE`` are unset.

An offline miss fails at once with ``WeightsNotFoundError`` naming the file and where to put it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

_ENV_FILE = {"sam2": "NTT_SAM2_CHECKPOINT", "dinov2": "NTT_DINOV2_CHECKPOINT"}


class WeightsNotFoundError(FileNotFoundError):
    """No checkpoint could be found for a model; the message says which file and where it goes."""


class CheckpointError(ValueError):
    """A checkpoint file exists but cannot be used: unsafe (pickled code), corrupted, or of another model."""


def read_state_dict(path: str | Path, key: str | None = None) -> dict:
    """Tensors of a checkpoint, never unpickling code: safetensors, or ``torch.load(weights_only=True)``.

    Args:
        key: the entry holding the state dict (SAM2's ``"model"``); None unwraps a ``model`` /
            ``state_dict`` / ``teacher`` entry when there is one (DINOv2 files come both ways).
    Returns:
        ``{name: tensor}``, every floating-point tensor finite.
    Raises:
        CheckpointError: the file is not a regular file (a folder, pipe or device is never opened), holds more
            than tensors (refused for safety), is truncated or corrupted, lacks ``key``, holds something other
            than named tensors, or holds NaN / Inf weights.
        FileNotFoundError: the file does not exist.
    """
    path = checkpoint_file(path)
    return _checked_tensors(path, _unwrap(path, _load(path), key))


def checkpoint_file(path: str | Path) -> Path:
    """``path`` when it is an existing regular file, else ``CheckpointError`` (``FileNotFoundError`` if missing)."""
    from ntt.io.inputs import InputFileError, regular_file

    try:
        return regular_file(path, "checkpoint")
    except InputFileError as err:
        raise CheckpointError(str(err)) from err


def _load(path: Path):
    """What the file holds, read without unpickling code."""
    import pickle

    import torch
    from safetensors import SafetensorError

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused for safety: the file is not plain tensors (it may contain code, or not be a "
            "checkpoint at all); ntt never unpickles code. Use the official release file."
        ) from err
    except (SafetensorError, RuntimeError, OSError, EOFError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path}: unreadable checkpoint, truncated or corrupted ({reason})") from err


def _unwrap(path: Path, state, key: str | None) -> dict:
    if key is not None:
        if not isinstance(state, dict) or not isinstance(state.get(key), dict):
            raise CheckpointError(f"{path}: not the expected checkpoint (no {key!r} entry of tensors)")
        return state[key]
    for name in ("model", "state_dict", "teacher"):
        if isinstance(state, dict) and isinstance(state.get(name), dict):
            return state[name]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a checkpoint of tensors")
    return state


def _checked_tensors(path: Path, state: dict) -> dict:
    """``state`` when it maps names to tensors, with no NaN or Inf among the weights (a model loaded from such a
    file gives NaN features or no masks at all, silently)."""
    import torch

    wrong = next(((k, v) for k, v in state.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))), None)
    if wrong is not None:
        name, kind = str(wrong[0])[:80], type(wrong[1]).__name__
        raise CheckpointError(f"{path}: not a checkpoint of tensors (entry {name!r} is not a tensor but a {kind})")
    if not state:
        raise CheckpointError(f"{path}: not a checkpoint of tensors (it holds none)")
    broken = [name for name, tensor in state.items() if not _finite(tensor)]
    if broken:
        shown = ", ".join(broken[:3]) + (", ..." if len(broken) > 3 else "")
        raise CheckpointError(
            f"{path}: broken checkpoint: NaN or Inf weights in {len(broken)} of {len(state)} tensors ({shown})"
        )
    return state


def _finite(tensor) -> bool:
    """Whether a tensor has no NaN / Inf: a sum first (one fast pass; NaN and Inf propagate), the exact
    test only when the sum is not finite (it may just overflow)."""
    import torch

    if not (tensor.is_floating_point() or tensor.is_complex()) or tensor.numel() == 0:
        return True
    if tensor.element_size() == 1:  # float8: no sum on these types
        tensor = tensor.float()
    if bool(torch.isfinite(tensor.sum())):
        return True
    return bool(torch.isfinite(tensor).all())


def cache_dir() -> Path:
    """Directory for downloaded checkpoints (``$NTT_CACHE_DIR/checkpoints``, default ~/.cache/ntt)."""
    root = os.environ.get("NTT_CACHE_DIR") or Path.home() / ".cache" / "ntt"
    return Path(root) / "checkpoints"


def resolve_checkpoint(kind: str, file_name: str, hub_id: str, explicit: str | None = None) -> Path:
    """Return the local path of a checkpoint, downloading it only when online.

    Args:
        kind: "sam2" or "dinov2".
        file_name: Meta's original file name, e.g. ``sam2_hiera_large.pt``.
        hub_id: the hub repository to download from when online.
        explicit: a path given by the user; it must exist.
    """
    path = local_checkpoint(kind, file_name, explicit)
    if path is not None:
        return path
    if _online():
        return _download(kind, file_name, hub_id)
    raise WeightsNotFoundError(missing_message([(kind, file_name, hub_id)]))


def local_checkpoint(kind: str, file_name: str, explicit: str | None = None) -> Path | None:
    """The checkpoint's path on this machine (steps 1-4 above), or None; a missing explicit path is an error."""
    if explicit:
        path = Path(explicit).expanduser()
        try:
            return checkpoint_file(path)  # a folder, pipe or device is refused here, never opened
        except FileNotFoundError:
            raise WeightsNotFoundError(f"{kind} checkpoint {path} does not exist") from None
    return next((path for path in _local_candidates(kind, file_name) if path.is_file()), None)


def available(kind: str, file_name: str, explicit: str | None = None) -> bool:
    """Whether a job could get this checkpoint now (on disk, or downloadable), without downloading it."""
    return local_checkpoint(kind, file_name, explicit) is not None or _online()


def _local_candidates(kind: str, file_name: str) -> list[Path]:
    found = []
    if os.environ.get(_ENV_FILE[kind]):
        found.append(Path(os.environ[_ENV_FILE[kind]]).expanduser())
    if os.environ.get("NTT_CHECKPOINT_DIR"):
        found.append(Path(os.environ["NTT_CHECKPOINT_DIR"]).expanduser() / file_name)
    found.append(cache_dir() / file_name)
    return found


def _online(host: str = "huggingface.co", timeout: float = 2.0) -> bool:
    if os.environ.get("NTT_OFFLINE") or os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _download(kind: str, file_name: str, hub_id: str) -> Path:
    from huggingface_hub import hf_hub_download

    # timm's DINOv2 repos hold safetensors in timm's layout; SAM2 repos hold Meta's .pt files.
    hub_file = "model.safetensors" if kind == "dinov2" else file_name
    return Path(hf_hub_download(repo_id=hub_id, filename=hub_file))


CLI_RANDOM_HINT = "--random-weights"


def missing_message(files: list[tuple[str, str, str]], random_hint: str = CLI_RANDOM_HINT) -> str:
    """One message naming every checkpoint a job lacks (``(kind, Meta's file name, hub id)`` each), where to put
    them, and ``random_hint``: how to try the flow without weights (the CLI flag, a form's checkbox, ...)."""
    names = "; ".join(f"`{name}` ({kind}: Meta's release, or hub id {hub})" for kind, name, hub in files)
    envs = " / ".join(_ENV_FILE[kind] for kind, _, _ in files)
    return (
        f"Model weights not found here and no network to download them. Get {names}. Put "
        f"{'them' if len(files) > 1 else 'it'} in $NTT_CHECKPOINT_DIR (currently "
        f"{os.environ.get('NTT_CHECKPOINT_DIR', 'unset')}) or in {cache_dir()}, or point {envs} at the "
        f"file, or pass its path explicitly. To try the flow without weights: {random_hint} (predictions are "
        "meaningless)."
    )
