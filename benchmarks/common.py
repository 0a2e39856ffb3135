"""Shared timing helpers: A and B measured side by side, interleaved, medians, ratios."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import queue
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

from custom_ops.function import call_backward_directly


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--repeats", type=int, default=15, help="interleaved A/B rounds; the median is reported")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON to this path")
    return p


def setup(args: argparse.Namespace) -> torch.device:
    torch.set_num_threads(args.threads)
    return check_device(args.device)


def check_device(name: str) -> torch.device:
    """The --device asked for, or exit with one line if this machine has no such GPU."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is available")
    return device


def header(args: argparse.Namespace, device: torch.device) -> str:
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    return (
        f"torch {torch.__version__} | device {device}{gpu} | threads {torch.get_num_threads()} | "
        f"{platform.processor() or platform.machine()} | repeats {args.repeats} (median, A/B interleaved)"
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_per_call(fn: Callable[[], object], device: torch.device, min_seconds: float = 0.02) -> tuple[int, float]:
    """Calls per round so a round lasts at least min_seconds, after warming up."""
    for _ in range(3):
        fn()
    synchronize(device)
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        synchronize(device)
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds or n >= 1 << 16:
            return n, elapsed / n
        n *= 2


def round_orders(n: int) -> list[list[int]]:
    """Orders of n variants, one per round, cycled: a Williams Latin square. Over a cycle
    each variant runs in each position, and right after each other variant, equally
    often (n rounds for even n; for odd n each order is also run reversed: 2n). A round
    leaves the caches and the heap as its last variant left them, so a variant that
    always followed the same one (as in plain rotation) would carry that one's wake."""
    first = [0] + [(k + 1) // 2 if k % 2 else n - k // 2 for k in range(1, n)]  # 0, 1, n−1, 2, n−2, …
    orders = [[(v + shift) % n for v in first] for shift in range(n)]
    return orders if n % 2 == 0 else orders + [order[::-1] for order in orders]


def time_rounds(fns: list[Callable[[], object]], device: torch.device, repeats: int) -> list[list[float]]:
    """Seconds per call of each fn in each of `repeats` rounds. A round times every fn
    once (the same number of calls each: as many as the fastest fn needs to fill 20 ms,
    so time fns of like cost together), in `round_orders`' order for that round, so no fn
    always runs first or always follows the same one."""
    n = max(time_per_call(fn, device)[0] for fn in fns)
    times: list[list[float]] = [[] for _ in fns]
    orders = round_orders(len(fns))
    for round_ in range(repeats):
        for i in orders[round_ % len(orders)]:
            synchronize(device)
            t0 = time.perf_counter()
            for _ in range(n):
                fns[i]()
            synchronize(device)
            times[i].append((time.perf_counter() - t0) / n)
    return times


def paired_ratio(times_a: list[float], times_b: list[float]) -> float:
    """Median over rounds of a's time / b's time in the same round. A slow spell of
    the machine (this VM's step times spread by ±15 %) slows both sides of a round and
    cancels in their ratio; a ratio of two medians would keep it."""
    return statistics.median(a / b for a, b in zip(times_a, times_b, strict=True))


def compare(
    a: Callable[[], object], b: Callable[[], object], device: torch.device, repeats: int
) -> tuple[float, float, float]:
    """Median seconds per call of a and of b, timed in alternating rounds, and the
    median of their per-round ratio a / b (`paired_ratio`)."""
    t_a, t_b = time_rounds([a, b], device, repeats)
    return statistics.median(t_a), statistics.median(t_b), paired_ratio(t_a, t_b)


def in_fresh_process(fn: Callable[..., Any], *args: Any, timeout: float = 1800) -> Any:
    """fn(*args) run in a new (spawned) process, and its result (fn must be importable,
    its arguments and result picklable). Where the allocator, the caches and the tensors'
    memory land differs from one process to the next, so ratios and peaks spread more
    between processes than between the rounds of one: --processes N reports that spread."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    child = ctx.Process(target=_put_result, args=(results, fn, *args))
    child.start()
    deadline = time.monotonic() + timeout
    while True:  # a child that dies (its traceback on stderr) must not leave us waiting until the deadline
        try:
            result = results.get(timeout=1)
            break
        except queue.Empty:
            if not child.is_alive():
                if not results.empty():  # its result came in just before it exited
                    continue
                raise RuntimeError(f"{fn.__name__} exited with code {child.exitcode} in a fresh process, "
                                   "without a result") from None  # fmt: skip
            if time.monotonic() > deadline:
                child.kill()
                raise TimeoutError(f"{fn.__name__} ran over {timeout:.0f} s in a fresh process") from None
    child.join()
    return result


def _put_result(results: Any, fn: Callable[..., Any], *args: Any) -> None:
    results.put(fn(*args))


def spread(values: list[float]) -> str:
    """'median (min–max)' of per-process ratios."""
    return f"{statistics.median(values):.3f} ({min(values):.3f}–{max(values):.3f})"


def check_at_least_one(flag: str, value: int) -> None:
    """A count flag (--processes, --calls, ...) below 1: one line, exit 1."""
    if value < 1:
        raise SystemExit(f"error: {flag} must be at least 1, got {value}")


def print_table(title: str, columns: list[str], rows: list[list[object]]) -> None:
    cells = [[f"{c:.3g}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = (
        [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(columns)]
        if cells
        else [len(h) for h in columns]
    )
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def write_json(path: Path | None, payload: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2))
        print(f"\nwrote {path}")


class CloneFunction(torch.autograd.Function):
    """y = x.clone(), dL/dx = g: torch's own clone, wrapped in the least a custom
    Function can be, so that against `Tensor.clone` it costs only the machinery (with
    the engine calling backward as it does for every custom_ops op)."""

    @staticmethod
    def forward(x):
        return x.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        return g


call_backward_directly(CloneFunction)
