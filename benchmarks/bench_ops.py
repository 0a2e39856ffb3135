"""Every op of the op database against its torch twin: forward, and forward + backward.

Sizes: 64×64 (overhead-bound) and 256×1024 for every op, and for elementwise ops also
4096×4096 (bandwidth-bound: 64 MiB per tensor, far beyond the caches), float32. Ratios
are custom / native, measured side by side in this one process. Then, per op at 64×64,
where forward + backward time goes: our kernels alone (forward, setup_context and
backward as plain Python calls), our Function through PyTorch's custom-Function
machinery, and the public function. With --processes N, each op's 64×64 forward +
backward ratio once more in each of N fresh processes: its median and range over them.

    python benchmarks/bench_ops.py [--device cuda] [--threads 1] [--json out.json] [--processes 5]
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    CloneFunction,
    check_at_least_one,
    compare,
    header,
    in_fresh_process,
    paired_ratio,
    parser,
    print_table,
    setup,
    spread,
    time_rounds,
    write_json,
)
from custom_ops.function import observe_ops  # noqa: E402
from custom_ops.registry import OP_DB  # noqa: E402

ELEMENTWISE = {"add", "sub", "mul", "div", "maximum", "square", "pow", "sin", "cos", "exp", "log", "tanh",
               "sigmoid", "relu", "mse_loss", "binary_cross_entropy_with_logits"}  # fmt: skip


def chosen_ops(ops: str) -> list[str]:
    """The op names --ops lists (comma-separated; empty: every op), in the op database's
    order; an unknown name exits with one line."""
    names = [info.name for info in OP_DB]
    wanted = [name for name in ops.split(",") if name]
    unknown = [name for name in wanted if name not in names]
    if unknown:
        raise SystemExit(f"error: no op named {', '.join(unknown)} in the op database: choose from {', '.join(names)}")
    return [name for name in names if not wanted or name in wanted]


def sizes(name: str) -> list[tuple[int, int]]:
    """64×64 (overhead-bound) and 256×1024 for every op; for elementwise ops also
    4096×4096, where every tensor is 64 MiB and each pass streams it from memory."""
    return [(64, 64), (256, 1024), *([(4096, 4096)] if name in ELEMENTWISE else [])]


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
    if name == "linear" or name.startswith("linear_"):  # linear, and linear with its activation
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


class KernelsOnlyContext:
    """Stands in for autograd's ctx, so that an op's forward, setup_context and backward
    can run as plain Python calls: the same kernels, without PyTorch's Function
    machinery (no node, no saved-variable packing and checks, no engine)."""

    def __init__(self, needs_input_grad: tuple[bool, ...]) -> None:
        self.needs_input_grad = needs_input_grad

    def save_for_backward(self, *tensors) -> None:
        self.saved_tensors = tensors

    def save_for_forward(self, *tensors) -> None:
        self.saved_for_forward = tensors


def breakdown_variants(info, device: torch.device) -> list:
    """The op's 64×64 forward + backward four ways, as calls of no arguments: torch's
    twin; our forward, setup_context and backward called as plain Python
    (KernelsOnlyContext); our Function through its C++ apply (what custom_ops calls:
    adds PyTorch's custom-Function machinery); and the public custom_ops function (adds
    our checks and dispatcher)."""
    args, kwargs = inputs(info.name, 64, 64, device)
    leaves = [a.requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
    applied = []
    with observe_ops(lambda cls, op_args, output: applied.append((cls, op_args, output))):
        info.op(*leaves, **kwargs)
    ((cls, op_args, output),) = applied  # the one Function the public function applied, and its arguments
    differentiable = [a for a in op_args if isinstance(a, torch.Tensor) and a.requires_grad]
    needs_input_grad = tuple(isinstance(a, torch.Tensor) and a.requires_grad for a in op_args)
    grad_out = torch.ones_like(output)
    apply = super(torch.autograd.Function, cls).apply

    def kernels_only():
        torch._C._set_grad_enabled(False)  # as inside apply and the engine (create_graph=False)
        ctx = KernelsOnlyContext(needs_input_grad)
        cls.setup_context(ctx, op_args, cls.forward(*op_args))
        cls.backward(ctx, grad_out)
        torch._C._set_grad_enabled(True)

    def function_only():
        torch.autograd.grad(apply(*op_args), differentiable, grad_out)

    torch_twin = forward_and_backward(info.reference, leaves, kwargs)[1]
    public = forward_and_backward(info.op, leaves, kwargs)[1]
    return [torch_twin, kernels_only, function_only, public]


def overhead_breakdown(info, device: torch.device, repeats: int) -> list[object]:
    """Where the op's 64×64 forward + backward time goes, the four `breakdown_variants`
    in the same rounds. Returns [op, the four µs, Function/torch (the least any wrapper
    around these kernels could cost), custom/torch, machinery µs (Function − kernels
    alone: PyTorch's, including the engine run that torch's twin pays too), wrapper µs
    (custom_ops − Function: ours)], medians over rounds."""
    t_torch, t_kernels, t_function, t_public = time_rounds(breakdown_variants(info, device), device, repeats)
    per_round = list(zip(t_torch, t_kernels, t_function, t_public, strict=True))
    machinery = statistics.median(f - k for _, k, f, _ in per_round)
    wrapper = statistics.median(p - f for _, _, f, p in per_round)
    medians = [statistics.median(t) * 1e6 for t in (t_torch, t_kernels, t_function, t_public)]
    return [info.name, *medians, paired_ratio(t_function, t_torch), paired_ratio(t_public, t_torch), machinery * 1e6,
            wrapper * 1e6]  # fmt: skip


def machinery_variants(device: torch.device) -> list:
    """A 64×64 clone forward + backward three ways, as calls of no arguments: its kernels
    alone (clone forward, the gradient passed back), through torch's own native node,
    and through a custom Function around the same clone. Torch's node runs the same
    kernels, so here the machinery of a native op and of a custom Function can be told
    apart, each the time through autograd less the kernels alone."""
    x = torch.randn(64, 64, device=device, requires_grad=True)
    grad_out = torch.ones(64, 64, device=device)
    apply = super(torch.autograd.Function, CloneFunction).apply

    def kernels_only():
        torch._C._set_grad_enabled(False)
        x.clone()
        CloneFunction.backward(None, grad_out)
        torch._C._set_grad_enabled(True)

    return [kernels_only, lambda: torch.autograd.grad(x.clone(), [x], grad_out),
            lambda: torch.autograd.grad(apply(x), [x], grad_out)]  # fmt: skip


MACHINERY_VARIANTS = ["kernels alone (clone, then g passed back)", "torch's clone: a native node",
                      "a custom Function around the same clone"]  # fmt: skip


def machinery_reference(device: torch.device, repeats: int) -> list[list[object]]:
    """`machinery_variants` in the same rounds: µs, and µs less the kernels alone."""
    t_kernels, t_native, t_function = time_rounds(machinery_variants(device), device, repeats)
    kernels = statistics.median(t_kernels) * 1e6
    return [[MACHINERY_VARIANTS[0], kernels, 0.0],
            [MACHINERY_VARIANTS[1], statistics.median(t_native) * 1e6,
             statistics.median(n - k for n, k in zip(t_native, t_kernels)) * 1e6],
            [MACHINERY_VARIANTS[2], statistics.median(t_function) * 1e6,
             statistics.median(f - k for f, k in zip(t_function, t_kernels)) * 1e6]]  # fmt: skip


BREAKDOWN_COLUMNS = ["op", "torch µs", "our kernels alone µs", "our Function (C++ apply) µs", "custom_ops µs",
                     "Function/torch", "custom/torch", "machinery µs", "wrapper µs"]  # fmt: skip


SMALL_TARGET = 1.5  # the bound on 64×64 forward + backward, custom / native


def small_ratios_in_this_process(names: list[str], device: str, threads: int, repeats: int) -> dict[str, float]:
    """Each named op's 64×64 forward + backward custom / native, in this process's own
    rounds (for `in_fresh_process`: these overhead-bound ratios move from one process to
    the next by more than the rounds of one show)."""
    torch.set_num_threads(threads)
    dev = torch.device(device)
    ratios = {}
    for info in OP_DB:
        if info.name in names:
            args, kwargs = inputs(info.name, 64, 64, dev)
            custom, native = (forward_and_backward(fn, args, kwargs)[1] for fn in (info.op, info.reference))
            ratios[info.name] = compare(custom, native, dev, repeats)[2]
    return ratios


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--ops", default="", help="comma-separated op names (default: every op)")
    p.add_argument("--processes", type=int, default=1,
                   help="also time each op's 64x64 forward + backward in N fresh processes and print the spread")
    args = p.parse_args()
    check_at_least_one("--processes", args.processes)
    names = chosen_ops(args.ops)
    device = setup(args)
    print(header(args, device))
    rows, results = [], []
    for info in OP_DB:
        if info.name not in names:
            continue
        for size in sizes(info.name):
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
    breakdown = [overhead_breakdown(info, device, args.repeats) for info in OP_DB if info.name in names]
    print_table("where each op's 64x64 forward + backward time goes (same rounds; machinery = Function - kernels "
                "alone, wrapper = custom_ops - Function)", BREAKDOWN_COLUMNS, breakdown)  # fmt: skip
    reference = machinery_reference(device, args.repeats)
    print_table("the machinery itself: a 64x64 clone forward + backward, as torch's node and as a custom Function",
                ["variant", "µs", "machinery µs (less kernels alone)"], reference)  # fmt: skip
    per_process = [in_fresh_process(small_ratios_in_this_process, names, str(device), args.threads, args.repeats)
                   for _ in range(args.processes if args.processes > 1 else 0)]  # fmt: skip
    if per_process:
        print_table(f"64x64 forward + backward, custom / native, in {args.processes} fresh processes, each its own "
                    f"rounds: median (min–max), and in how many of them the ratio is at most {SMALL_TARGET}",
                    ["op", "fwd+bwd ratio", f"processes <= {SMALL_TARGET}"],
                    [[name, spread([run[name] for run in per_process]),
                      f"{sum(run[name] <= SMALL_TARGET for run in per_process)}/{len(per_process)}"]
                     for name in names])  # fmt: skip
    keys = ["op", "torch_us", "kernels_only_us", "function_us", "custom_ops_us", "function_over_torch",
            "custom_over_torch", "machinery_us", "wrapper_us"]  # fmt: skip
    write_json(args.json, {"header": header(args, device), "results": results,
                           "overhead_breakdown": [dict(zip(keys, row, strict=True)) for row in breakdown],
                           "machinery_reference": [dict(variant=v, us=t, machinery_us=m) for v, t, m in reference],
                           "small_fwd_bwd_ratio_per_process": per_process})  # fmt: skip


if __name__ == "__main__":
    main()
