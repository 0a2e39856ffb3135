"""Helpers shared by several test files (import them as `from helpers import ...`)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import torch

from training.checkpoint import SLOW_WRITE_ENV

REPO = Path(__file__).resolve().parents[1]


def assert_one_error_line(err: str, pattern: str | None = None) -> str:
    """stderr is one `error: ...` line and no traceback (the project's rule for bad
    input), matching `pattern` if given; returns the line."""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    if pattern is not None:
        assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a train.py (or torchrun) child: this repo importable, one
    thread, unbuffered output, and none of torchrun's variables or the slow-checkpoint
    test hook inherited from the test's own process (unless given in `extra`)."""
    inherited = {key: value for key, value in os.environ.items()
                 if not key.startswith(("TORCHELASTIC_", "RANK")) and key != SLOW_WRITE_ENV}  # fmt: skip
    return {**inherited, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **extra}


def walk_graph(output: torch.Tensor) -> Iterator[object]:
    """Every autograd node behind output, each once."""
    stack, seen = [output.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            yield node
            stack.extend(next_node for next_node, _ in node.next_functions)
