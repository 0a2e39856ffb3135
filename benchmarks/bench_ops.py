"""Every op of the op database against its torch twin: forward, and forward + backward.

Sizes: 64×64 (overhead-bound) and a bandwidth-bound large size (4096×4096 for
elementwise ops, 256×1024 for the rest), float32. Ratios are custom / native, measured
side by side in this one process.

    python benchmarks/bench_ops.py [--device cuda] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import compare, header, paired_ratio, parser, print_table, setup, time_rounds, write_json  # noqa: E402
import custom_ops  # noqa: E402
from custom_ops.registry import OP_DB  # noqa: E402

ELEMENTWISE = {"add", "sub", "mul", "div", "maximum", "square", "pow", "sin", "cos", "exp", "log", "tanh",
               "sigmoid", "relu", "mse_loss", "binary_cross_entropy_with_logits"}  # fmt: skip


def inputs(name: str, rows: int, cols: int, device: torch.device) -> tuple[tuple, dict]:
    """Float32 inputs of the op at (rows, cols); the first tensors require grad."""
    gen = torch.Generator().manual_seed(0)

    def r(*shape, low=-2.0, high=2.0):
        return (torch.rand(shape, generator=gen) * (high - low) + low).to(device)

    x = r(rows, cols)
    if name in ("add", "sub", "mul", "maximum", "mse_loss"):
        return (x, r(rows, cols)), {}
    if name == "div":
        return (x, r(rows, cols, low=0.5, high=2.0)), {}
    if name == "pow":
        return (r(rows, cols, low=0.5, high=2.0), 2.5), {}
    if name == "log":
        return (r(rows, cols, low=0.5, high=2.0),), {}
    if name == "matmul":
        return (x, r(cols, cols)), {}
    if name == "linear":
        return (x, r(cols, cols), r(cols)), {}
    if name in ("sum", "mean", "softmax", "log_softmax"):
        return (x, -1), {}
    if name == "cross_entropy":
        return (x, torch.randint(cols, (rows,), generator=gen).to(device)), {}
    if name == "binary_cross_entropy_with_logits":
        return (x, r(rows, cols, low=0.0, high=1.0)), {}
    return (x,), {}


def forward_and_backward(fn, args, kwargs):
    leaves = [a.detach().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
    differentiable = [a for a in leaves if isinstance(a, torch.Tensor) and a.requires_grad]
    grad_out = torch.ones_like(fn(*leaves, **kwargs))

    def run():
        torch.autograd.grad(fn(*leaves, **kwargs), differentiable, grad_out)

    def forward():
        fn(*leaves, **kwargs)

    return forward, run


class BareSigmoid(torch.autograd.Function):
    """The least a Python autograd.Function can be: torch's kernel forward, the same
    two-kernel backward as custom_ops.Sigmoid, no checks, no jvp, no autocast policy."""

    @staticmethod
    def forward(x):
        return torch.sigmoid(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return torch.addcmul(y, y, y, value=-1).mul_(g)


def overhead_breakdown(device: torch.device, repeats: int) -> list[list[object]]:
    """Where a 64×64 sigmoid's forward + backward time goes: torch's own op, PyTorch's
    custom-Function machinery around the same kernels (C++ apply called directly, as
    custom_ops does), and custom_ops.sigmoid, all three in the same interleaved rounds."""
    bare_apply = super(torch.autograd.Function, BareSigmoid).apply  # skips Function.apply's inspect binding
    variants = [("torch.sigmoid", torch.sigmoid), ("bare autograd.Function, same kernels", bare_apply),
                ("custom_ops.sigmoid", custom_ops.sigmoid)]  # fmt: skip
    x = torch.randn(64, 64, device=device)
    runs = [forward_and_backward(fn, (x,), {})[1] for _, fn in variants]
    times = time_rounds(runs, device, repeats)
    return [[name, statistics.median(t) * 1e6, paired_ratio(t, times[0])] for (name, _), t in zip(variants, times)]


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--ops", default="", help="comma-separated op names (default: every op)")
    args = p.parse_args()
    wanted = set(filter(None, args.ops.split(",")))
    device = setup(args)
    print(header(args, device))
    rows, results = [], []
    for info in OP_DB:
        if wanted and info.name not in wanted:
            continue
        large = (4096, 4096) if info.name in ELEMENTWISE else (256, 1024)
        for size in ((64, 64), large):
            a, kw = inputs(info.name, *size, device)
            fwd_c, both_c = forward_and_backward(info.op, a, kw)
            fwd_n, both_n = forward_and_backward(info.reference, a, kw)
            f_c, f_n, f_ratio = compare(fwd_c, fwd_n, device, args.repeats)
            b_c, b_n, b_ratio = compare(both_c, both_n, device, args.repeats)
            shape = "x".join(map(str, size))
            rows.append([info.name, shape, f_c * 1e6, f_n * 1e6, f_ratio, b_c * 1e6, b_n * 1e6, b_ratio])
            results.append(dict(op=info.name, size=shape, forward_custom_s=f_c, forward_native_s=f_n,
                                fwd_bwd_custom_s=b_c, fwd_bwd_native_s=b_n, forward_ratio=f_ratio,
                                fwd_bwd_ratio=b_ratio))  # fmt: skip
            print(f"  {info.name} {shape}: fwd {f_ratio:.2f}x  fwd+bwd {b_ratio:.2f}x", file=sys.stderr)
    columns = ["op", "size", "fwd custom µs", "fwd torch µs", "fwd ratio", "fwd+bwd custom µs", "fwd+bwd torch µs",
               "fwd+bwd ratio"]  # fmt: skip
    print_table("custom / native, float32", columns, rows)
    breakdown = overhead_breakdown(device, args.repeats)
    print_table("where 64x64 sigmoid forward + backward time goes (interleaved rounds)",
                ["variant", "µs", "/ torch.sigmoid"], breakdown)  # fmt: skip
    write_json(args.json, {"header": header(args, device), "results": results,
                           "overhead_breakdown": [dict(variant=r[0], seconds=r[1] * 1e-6, ratio_to_torch=r[2])
                                                  for r in breakdown]})  # fmt: skip


if __name__ == "__main__":
    main()
