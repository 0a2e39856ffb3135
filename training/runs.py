"""Run directories (runs/<run-name>/) and the JSON files in them."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write
from .errors import UserError


def default_run_name(config: dict[str, Any]) -> str:
    """A name that says when and what: 20250101-120000-mlp128-relu-digits-adam-lr0.001-bs32-s0."""
    model = config["model"]
    if model == "mlp":
        model += "x".join(str(size) for size in config["hidden"]) + "-" + config["activation"]
    dataset = Path(config["dataset"]).stem if config["dataset"].lower().endswith(".csv") else config["dataset"]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return (
        f"{stamp}-{model}-{dataset}-{config['optimizer']}-lr{config['lr']:g}-bs{config['batch_size']}-s{config['seed']}"
    )


def check_run_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or os.sep in name or name.startswith("."):
        raise UserError(f"--run-name {name!r} is not a plain directory name: use letters, digits, '-', '_'")
    return name


def create_run_dir(logdir: str | os.PathLike[str], run_name: str, auto_named: bool) -> Path:
    """Create logdir/run_name exclusively (os.mkdir), so two runs never share a directory.

    A name the user chose that is taken is an error; an auto-generated one gets the
    first free suffix (-2, -3, ...).
    """
    logdir = Path(logdir)
    try:
        logdir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"--logdir {logdir} exists but is not a directory") from None
    except OSError as e:
        raise UserError(f"cannot create --logdir {logdir}: {e.strerror}") from None
    for attempt in range(1, 1000):
        name = run_name if attempt == 1 else f"{run_name}-{attempt}"
        try:
            os.mkdir(logdir / name)
            return logdir / name
        except FileExistsError:
            if not auto_named:
                raise UserError(
                    f"run directory {logdir / name} already exists: pick another --run-name, or continue that run "
                    f"with --resume {logdir / name / 'last.pt'}"
                ) from None
        except OSError as e:
            raise UserError(f"cannot create run directory {logdir / name}: {e.strerror}") from None
    raise UserError(f"no free run directory name under {logdir} for {run_name}: pass --run-name")


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a reader never sees half a file)."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))
