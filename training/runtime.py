"""Device choice, threads, and how train.py compiles."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch

from .errors import UserError

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def resolve_device(requested: str) -> torch.device:
    """'auto' → CUDA when a GPU is present, else the CPU; 'cuda' and 'cuda:N' must exist."""
    if not DEVICE_PATTERN.fullmatch(requested):
        raise UserError(f"--device {requested!r} is not one of auto, cpu, cuda, cuda:N")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(f"--device {requested}: no CUDA GPU is available here; use --device cpu (or auto)")
    device = torch.device(requested)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(
            f"--device {requested}: there is no GPU {device.index} (this machine has {torch.cuda.device_count()})"
        )
    return device


def compile_model(fn: Callable[..., Any]) -> Callable[..., Any]:
    """torch.compile(fn, fullgraph=True), as train.py --compile runs it.

    Dynamo guards every global that its trace read (each op's public function, its
    dispatcher's closure, the Function's forward and setup_context, `torch.softmax` and
    the like) and checks them all before each call: 290 guard lines for the digits MLP
    against 109 for the same model in native torch, 37 µs against 21 µs per call, 4 %
    of a 0.43 ms step. None of those globals changes during a run, so they are not
    guarded (`skip_guard_on_globals_unsafe`; tensors, modules, grad mode and autocast
    still are). Where torch is too old to take a guard filter, the default applies."""
    skip_globals = getattr(torch.compiler, "skip_guard_on_globals_unsafe", None)
    options = {"guard_filter_fn": skip_globals} if skip_globals is not None else None
    return torch.compile(fn, fullgraph=True, options=options)
