"""Checkpoints: written atomically, read with `torch.load(weights_only=True)` only.

A checkpoint is a plain dict (tensors, numbers, strings, lists, dicts), so loading it
never runs code from the file:

    format, version   which program wrote it (tells ours from a foreign .pt file)
    model, optimizer  state dicts
    epoch, global_step, history, best
    rng               torch's CPU and CUDA generator states, as tensors
    config            every setting of the run, plain values
    data              fingerprint, class names, standardization mean/std
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import UserError

CHECKPOINT_FORMAT = "custom-ops/train.py checkpoint"
CHECKPOINT_VERSION = 1
METRIC_KEYS = {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy"}
_REQUIRED = {
    "model": dict, "optimizer": dict, "epoch": int, "global_step": int, "history": list,
    "rng": dict, "config": dict, "data": dict,
}  # fmt: skip


def atomic_write(path: Path, write: Any) -> None:
    """Call write(tmp_path), then rename tmp_path onto path: a crash mid-write leaves
    the old file whole, never a half-written one."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a checkpoint written by train.py; UserError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found: --resume takes a checkpoint file such as runs/NAME/last.pt")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - whatever torch.load trips on, the file is at fault
        # weights_only names the class it refused ("Unsupported global: ..."); any other
        # failure (bad zip, truncated data, an unknown pickle opcode) means a damaged file
        if "Unsupported global" in str(e):
            raise UserError(
                f"checkpoint {path} holds Python objects other than tensors and plain values, so it is not one "
                "written by train.py, and loading it is refused (it could run code)"
            ) from None
        raise UserError(
            f"checkpoint {path} is corrupt or not a PyTorch file ({type(e).__name__}); "
            "resume from another checkpoint, e.g. best.pt"
        ) from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a checkpoint written by train.py (it is a PyTorch file of another kind)")
    if checkpoint.get("version") != CHECKPOINT_VERSION:
        raise UserError(
            f"checkpoint {path} has format version {checkpoint.get('version')!r}; this train.py reads version "
            f"{CHECKPOINT_VERSION}"
        )
    for key, kind in _REQUIRED.items():
        if not isinstance(checkpoint.get(key), kind):
            raise UserError(f"checkpoint {path} is damaged: its {key!r} entry is missing or not a {kind.__name__}")
    entries = [*checkpoint["history"], *([checkpoint["best"]] if checkpoint.get("best") is not None else [])]
    if not all(isinstance(entry, dict) and METRIC_KEYS <= set(entry) for entry in entries):
        raise UserError(
            f"checkpoint {path} is damaged: its history or best entry lacks {', '.join(sorted(METRIC_KEYS))}"
        )
    return checkpoint


def load_model_state(model: nn.Module, state: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """model.load_state_dict, with a one-line message naming the first mismatch."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        raise UserError(
            f"checkpoint {path} does not fit this model: "
            + (f"it lacks {', '.join(missing)}" if missing else f"it has extra parameters {', '.join(unexpected)}")
        )
    for key, tensor in expected.items():
        if not isinstance(state[key], torch.Tensor) or state[key].shape != tensor.shape:
            found = tuple(state[key].shape) if isinstance(state[key], torch.Tensor) else type(state[key]).__name__
            raise UserError(
                f"checkpoint {path} holds a model of another shape: {key} is {found} there, "
                f"{tuple(tensor.shape)} here (a different --model/--hidden or a dataset with other features or classes)"
            )
    model.load_state_dict(state)


def rng_state() -> dict[str, Any]:
    """torch's generator states as tensors (weights_only can load them)."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    try:
        torch.set_rng_state(state["torch"])
        cuda_states = state.get("cuda") or []
        # a run moved between machines may see other GPUs: restore only what matches
        if torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    except (KeyError, TypeError, RuntimeError) as error:
        raise UserError(f"the checkpoint's RNG state is damaged ({type(error).__name__}: {error})") from None
