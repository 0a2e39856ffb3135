"""Reusable training code for train.py: data, optimizers, checkpoints, run directories,
TensorBoard logging, diagnostics. Depends on models (and so custom_ops), never on train.py."""

from .checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    load_checkpoint,
    load_model_state,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from .data import (
    BUILTIN_DATASETS,
    Dataset,
    Split,
    load_dataset,
    load_mnist,
    read_csv,
    read_idx,
    split_and_standardize,
)
from .diagnostics import ActivationMonitor, layer_grad_norms, linear_layers
from .errors import UserError
from .evaluation import Evaluation, evaluate
from .logging import NullLogger, RunLogger
from .optim import SGD, Adam
from .runs import check_run_name, create_run_dir, default_run_name, write_json
from .runtime import compile_model, resolve_device

__all__ = [
    "SGD", "ActivationMonitor", "Adam", "BUILTIN_DATASETS", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "Dataset",
    "Evaluation", "NullLogger", "RunLogger", "Split", "UserError", "check_run_name", "compile_model", "create_run_dir",
    "default_run_name", "evaluate", "layer_grad_norms", "linear_layers", "load_checkpoint", "load_dataset",
    "load_mnist", "load_model_state", "read_csv", "read_idx", "resolve_device", "restore_rng_state", "rng_state",
    "save_checkpoint", "split_and_standardize", "write_json",
]  # fmt: skip
