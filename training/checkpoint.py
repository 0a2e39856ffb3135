"""Checkpoints: written atomically, read with `torch.load(weights_only=True)` only.

A checkpoint is a plain dict (tensors, numbers, strings, lists, dicts), so loading it
never runs code from the file:

    format, version   which program wrote it (tells ours from a foreign .pt file)
    model, optimizer  state dicts
    epoch, global_step, history, best
    rng               torch's CPU and CUDA generator states, as tensors
    config            every setting of the run, plain values
    data              fingerprint, class names, standardization mean/std

Crash safety: every file goes through `atomic_write`: written to a temporary file in the
same directory, flushed and fsync'ed, renamed onto the target with os.replace (atomic on
POSIX), then the directory is fsync'ed so the rename itself survives a power cut. At any
instant the target is the old file or the new one, whole. A write that fails (disk
full, directory not writable) raises UserError naming the file and leaves the old file
as it was.

Test hook (tests only, never set it in real runs): with the environment variable
CUSTOM_OPS_TEST_SLOW_CHECKPOINT_WRITE=<seconds>, save_checkpoint writes a marker file
`checkpoint-writing` ("<pid> <epoch> <name>") into the run directory once the temporary
file is complete, then sleeps that long before the rename, so a test can kill the
process while a checkpoint is being written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
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


SLOW_WRITE_ENV = "CUSTOM_OPS_TEST_SLOW_CHECKPOINT_WRITE"
WRITING_MARKER = "checkpoint-writing"
TEMP_INFIX = ".tmp"  # temporary files are .<name>.tmp<pid>


def atomic_write(path: Path, write: Any, before_replace: Any = None) -> None:
    """Call write(tmp_path), fsync it, rename tmp_path onto path, fsync the directory:
    a crash at any point leaves the old file whole or the new one whole, never a
    half-written one. An OSError (disk full, no permission) becomes a UserError that
    says the old file is intact; the temporary file is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TEMP_INFIX}{os.getpid()}")
    try:
        write(tmp)
        _fsync(tmp)
        if before_replace is not None:
            before_replace(tmp)
        os.replace(tmp, path)
    except OSError as error:
        raise UserError(_write_error(path, error)) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    # make the rename itself durable; a system that cannot open or sync a directory
    # (Windows, some network file systems) keeps the rename, just not its durability
    with contextlib.suppress(OSError):
        _fsync(path.parent)


def _fsync(path: Path) -> None:
    """Flush a file's (or a directory's) data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_error(path: Path, error: OSError) -> str:
    reason = error.strerror or str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "the disk is full: free some space"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = f"{path.parent} is not writable: fix its permissions"
    else:
        hint = "check the run directory"
    return f"cannot write {path}: {reason}; {hint} (the previous {path.name}, if any, is intact)"


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    def write(tmp: Path) -> None:
        # through a Python file object: a failed write raises OSError (ENOSPC, ...), where
        # torch.save(obj, path)'s own writer raises an opaque RuntimeError
        with open(tmp, "wb") as file:
            try:
                torch.save(checkpoint, file)
            except RuntimeError as error:
                # on a full disk torch's zip writer, closing after the OSError, raises its own
                # RuntimeError ("unexpected pos ...") over it: report the OSError
                if isinstance(error.__context__, OSError):
                    raise error.__context__ from None
                raise

    atomic_write(Path(path), write, _slow_write_hook(Path(path), checkpoint.get("epoch")))


def _slow_write_hook(path: Path, epoch: Any) -> Any:
    """The test hook described in the module docstring (None when the variable is unset)."""
    try:
        delay = float(os.environ.get(SLOW_WRITE_ENV, ""))
    except ValueError:
        return None
    if not 0 < delay < 3600:
        return None

    def announce_and_wait(tmp: Path) -> None:
        marker = path.parent / WRITING_MARKER
        staged = marker.with_name(f".{WRITING_MARKER}{TEMP_INFIX}{os.getpid()}")
        staged.write_text(f"{os.getpid()} {epoch} {path.name}\n")
        os.replace(staged, marker)
        time.sleep(delay)

    return announce_and_wait


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Delete the temporary files a killed train.py left in run_dir (.<name>.tmp<pid>
    whose process no longer runs); return them."""
    removed = []
    for tmp in Path(run_dir).glob(f".*{TEMP_INFIX}*"):
        pid = tmp.name.rpartition(TEMP_INFIX)[2]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_exists(int(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process (or not a pid at all): leave its file alone
    return True


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a checkpoint written by train.py; UserError for anything else."""
    if not str(path):  # Path("") would be ".", the current directory
        raise UserError("--resume needs a checkpoint file, such as runs/NAME/last.pt")
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
