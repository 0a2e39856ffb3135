"""Device choice and threads."""

from __future__ import annotations

import re

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
