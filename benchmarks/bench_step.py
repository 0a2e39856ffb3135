"""One training step (forward, loss, backward, SGD update), custom ops vs native PyTorch.

Models: an MLP 784→1024→1024→10 at batch 256 (ReLU and sigmoid), built from custom_ops
(`models.MLP`) and the same model written with nn.Linear / torch activations /
F.cross_entropy, loaded with the same weights. Also the "physical floor": only the
matrix products the step needs (forward x·Wᵀ, backward gᵀ·x and g·W per layer), back to
back, and the ratio step / floor. Also the same products with the step's dataflow (each
forward product feeds the next, the gradient flows down through g·W, and every output
lives until the step ends, as activations and gradients do; the plain floor frees each
at once), in rounds of its own: dataflow / floor is what keeping the products' outputs
costs, and step / dataflow floor what the step adds beyond them. A second native model,
timed in the same rounds as the first, gives native / native: how far apart two
identical steps measure on this machine. And the custom model with SGD fused into
backward (`MLP.fuse_sgd`: each weight's update is one `addmm_` into W, no .grad, no
optimizer pass). And where the custom step's extra time goes: the same model stepped
with the same Functions applied directly (their C++ `apply`: no nn.Module call, no
public function's checks, no `Op.call` dispatcher), so custom / direct is what that
Python around the ops costs and direct / native what the ops themselves (their Function
machinery, forward and backward) cost.

Memory: bytes saved for backward per step (summed per save, and each storage once), and
the peak memory five steps add over what the process held before them, in a fresh child
process per variant (on the CPU the kernel's resident high-water mark, VmHWM, reset
before the steps: Linux only; on CUDA torch.cuda's allocator statistics). With
--compile, the same steps under torch.compile as train.py --compile runs it (both
models: `training.compile_model`, fullgraph=True), with compile times, after the eager
tables are printed. One run's custom / native moves by about ±0.025 from one fresh
process to the next: --processes N also times the steps in N fresh processes, one after
another, and prints each ratio's median and range over them. --profile also prints each
op's time per step, custom and native side by side (torch.profiler): where they differ.

    python benchmarks/bench_step.py [--threads 1] [--device cuda] [--compile] [--processes 5] [--profile]
        [--json out.json]
"""

from __future__ import annotations

import bisect
import collections
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

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
    synchronize,
    time_rounds,
    write_json,
)
from custom_ops.registry import OP_DB  # noqa: E402
from models import MLP  # noqa: E402
from training.runtime import compile_model  # noqa: E402

NATIVE_ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


@dataclass(frozen=True)
class Config:
    name: str
    in_features: int
    hidden: tuple[int, ...]
    num_classes: int
    batch: int
    activation: str


CONFIGS = [
    Config("mlp 784-1024-1024-10 relu", 784, (1024, 1024), 10, 256, "relu"),
    Config("mlp 784-1024-1024-10 sigmoid", 784, (1024, 1024), 10, 256, "sigmoid"),
]


def digits_default() -> Config:
    """train.py's default model and batch size on digits (64 features, 10 classes)."""
    import train

    defaults = train.build_parser().parse_args([])
    hidden = tuple(defaults.hidden)
    return Config(f"digits default (train.py) 64-{'-'.join(map(str, hidden))}-10 {defaults.activation}", 64, hidden,
                  10, defaults.batch_size, defaults.activation)  # fmt: skip


def build_pair(config: Config, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """The custom model and its native twin, with the same weights."""
    torch.manual_seed(0)
    custom = MLP(config.in_features, config.hidden, config.num_classes, config.activation).to(device)
    sizes = [config.in_features, *config.hidden]
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes, sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), NATIVE_ACTIVATIONS[config.activation]()]
    layers.append(nn.Linear(sizes[-1], config.num_classes))
    native = nn.Sequential(*layers).to(device)
    native.load_state_dict({k.removeprefix("layers."): v for k, v in custom.state_dict().items()})
    return custom, native


LR = 1e-3


def make_step(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor, compile_: bool = False):
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)

    def loss_of(x, y):
        return loss_fn(model(x), y)

    forward = compile_model(loss_of) if compile_ else loss_of  # as train.py --compile compiles

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = forward(x, y)
        loss.backward()
        optimizer.step()
        return loss

    return step


def make_fused_step(model: MLP, x: torch.Tensor, y: torch.Tensor):
    """The same SGD step with the update fused into backward: no optimizer, no .grad."""
    model.fuse_sgd(LR)

    def step():
        loss = model.loss(model(x), y)
        loss.backward()
        return loss

    return step


OP_FUNCTIONS = {info.name: info.function for info in OP_DB}  # "linear_relu" → LinearRelu, …


def make_direct_step(model: MLP, x: torch.Tensor, y: torch.Tensor):
    """The custom model's step with its Functions applied directly through their C++
    `apply`: what `model.loss(model(x), y)` runs, without the Python around the ops."""

    def apply(function: type[torch.autograd.Function]):
        return super(torch.autograd.Function, function).apply

    linears = [m for m in model.layers if hasattr(m, "weight")]
    hidden = apply(OP_FUNCTIONS[f"linear_{model.activation}"])
    output, cross_entropy = apply(OP_FUNCTIONS["linear"]), apply(OP_FUNCTIONS["cross_entropy"])
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)

    def step():
        optimizer.zero_grad(set_to_none=True)
        h = x
        for layer in linears[:-1]:
            h = hidden(h, layer.weight, layer.bias)
        loss = cross_entropy(output(h, linears[-1].weight, linears[-1].bias), y, "mean")
        loss.backward()
        optimizer.step()
        return loss

    return step


def floor_step(config: Config, device: torch.device):
    """Only the matrix products of one step: per layer x·Wᵀ forward, gᵀ·x (and g·W
    except for the first layer, whose input needs no gradient) backward."""
    sizes = [config.in_features, *config.hidden, config.num_classes]
    gen = torch.Generator().manual_seed(0)
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
        x = torch.randn(config.batch, fan_in, generator=gen).to(device)
        w = torch.randn(fan_out, fan_in, generator=gen).to(device)
        g = torch.randn(config.batch, fan_out, generator=gen).to(device)
        layers.append((x, w, g, i > 0))

    def step():
        for x, w, _, _ in layers:
            torch.mm(x, w.t())
        for x, w, g, needs_dx in reversed(layers):
            torch.mm(g.t(), x)
            if needs_dx:
                torch.mm(g, w)

    return step


def dataflow_floor_step(config: Config, device: torch.device):
    """The floor's matrix products as the step runs them: each layer's x·Wᵀ is the next
    layer's x, backward's g·W is the layer below's g, and every output is kept until the
    step ends (returned), as the step keeps its activations and gradients."""
    sizes = [config.in_features, *config.hidden, config.num_classes]
    gen = torch.Generator().manual_seed(0)
    # weights scaled by 1/√fan_in, so that values stay O(1) through the layers
    weights = [(torch.randn(fan_out, fan_in, generator=gen) / fan_in**0.5).to(device)
               for fan_in, fan_out in zip(sizes, sizes[1:])]  # fmt: skip
    x = torch.randn(config.batch, sizes[0], generator=gen).to(device)
    g_logits = torch.randn(config.batch, sizes[-1], generator=gen).to(device)

    def step() -> list[torch.Tensor]:
        activations = [x]
        for w in weights:
            activations.append(torch.mm(activations[-1], w.t()))
        gradients, g = [], g_logits
        for i in reversed(range(len(weights))):
            gradients.append(torch.mm(g.t(), activations[i]))
            if i > 0:
                g = torch.mm(g, weights[i])
                gradients.append(g)
        return activations + gradients

    return step


def function_call_cost(config: Config, device: torch.device, repeats: int) -> list[list[object]]:
    """One clone of the logits, forward and backward, as torch's clone and as
    CloneFunction (the difference is the custom-Function machinery alone): timed back to
    back ("warm"), and with one of the step's matrix products run, untimed, before the
    forward and again before the backward, as in a step ("after a matrix product")."""
    clone_function = super(torch.autograd.Function, CloneFunction).apply  # C++ apply, as custom_ops calls it
    hidden = config.hidden[-1]
    a = torch.randn(config.batch, hidden, device=device)
    b = torch.randn(hidden, hidden, device=device)
    logits = torch.randn(config.batch, config.num_classes, device=device, requires_grad=True)

    def seconds(clone, evict: bool) -> float:
        if evict:
            torch.mm(a, b)
        synchronize(device)
        t0 = time.perf_counter()
        out = clone(logits).sum()
        synchronize(device)
        elapsed = time.perf_counter() - t0
        if evict:
            torch.mm(a, b)
        synchronize(device)
        t0 = time.perf_counter()
        out.backward()
        synchronize(device)
        return elapsed + time.perf_counter() - t0

    rows = []
    for where, evict in (("warm (back to back)", False), ("after a matrix product", True)):
        times: dict[object, list[float]] = {torch.clone: [], clone_function: []}
        for _ in range(max(repeats, 25) * 4):
            for clone, t in times.items():
                t.append(seconds(clone, evict))
        plain, wrapped = (statistics.median(t) * 1e6 for t in times.values())
        added = statistics.median(w - p for w, p in zip(times[clone_function], times[torch.clone])) * 1e6
        rows.append([where, plain, wrapped, added])
    return rows


def step_timings(config: Config, device: torch.device, repeats: int) -> tuple[dict[str, float], tuple]:
    """One step each of custom, native, a second native model, the GEMM floor, the
    custom model with fused SGD and with its ops applied directly, all in the same
    rounds; then the floor, the floor with the step's dataflow, fused and native in
    rounds of their own: median seconds, and each ratio a median of per-round ratios.
    Also returns what the memory and compile tables reuse: (custom, native, x, y, custom
    step, native step)."""
    custom, native = build_pair(config, device)
    x = torch.randn(config.batch, config.in_features, device=device)
    y = torch.randint(config.num_classes, (config.batch,), device=device)
    custom_step = make_step(custom, custom.loss, x, y)
    native_step = make_step(native, F.cross_entropy, x, y)
    fused, native_again = build_pair(config, device)
    fused_step = make_fused_step(fused, x, y)
    native_again_step = make_step(native_again, F.cross_entropy, x, y)
    direct_step = make_direct_step(build_pair(config, device)[0], x, y)
    r_custom, r_native, r_again, r_floor, r_fused, r_direct = time_rounds(
        [custom_step, native_step, native_again_step, floor_step(config, device), fused_step, direct_step], device,
        repeats,
    )
    # the dataflow floor in rounds of its own, so that the rounds above run as they ran
    # before it: in them, custom / native read 1.017–1.038 in three processes against
    # 1.004–1.023 in three without it (1 thread, alternating; rounds then rotated)
    d_floor, d_dataflow, d_fused, d_native = time_rounds(
        [floor_step(config, device), dataflow_floor_step(config, device), fused_step, native_step], device, repeats
    )
    timing = dict(step_custom_s=statistics.median(r_custom), step_native_s=statistics.median(r_native),
                  step_native_again_s=statistics.median(r_again), floor_s=statistics.median(r_floor),
                  step_fused_s=statistics.median(r_fused), custom_over_native=paired_ratio(r_custom, r_native),
                  native_over_native=paired_ratio(r_again, r_native), custom_over_floor=paired_ratio(r_custom, r_floor),
                  native_over_floor=paired_ratio(r_native, r_floor), fused_over_native=paired_ratio(r_fused, r_native),
                  fused_over_floor=paired_ratio(r_fused, r_floor), step_direct_s=statistics.median(r_direct),
                  direct_over_native=paired_ratio(r_direct, r_native),
                  custom_over_direct=paired_ratio(r_custom, r_direct),
                  dataflow_floor_s=statistics.median(d_dataflow), dataflow_rounds_floor_s=statistics.median(d_floor),
                  dataflow_floor_over_floor=paired_ratio(d_dataflow, d_floor),
                  native_over_dataflow_floor=paired_ratio(d_native, d_dataflow),
                  fused_over_dataflow_floor=paired_ratio(d_fused, d_dataflow))  # fmt: skip
    return timing, (custom, native, x, y, custom_step, native_step)


def step_timings_in_this_process(config: Config, device: str, threads: int, repeats: int) -> dict:
    """step_timings' ratios and times, for `in_fresh_process` (custom / native spreads by
    ±0.025 between processes here, more than between the rounds of one)."""
    torch.set_num_threads(threads)
    return step_timings(config, torch.device(device), repeats)[0]


# the matrix products, told apart by their operands' shapes (mm: the first two inputs;
# addmm and addmm_: the two after the bias or the matrix added to)
MATRIX_PRODUCT_OPERANDS = {"aten::mm": slice(0, 2), "aten::addmm": slice(1, 3), "aten::addmm_": slice(1, 3)}


def op_profile(custom_step: Callable[[], object], native_step: Callable[[], object], device: torch.device,
               rounds: int, top: int = 24) -> list[list[object]]:  # fmt: skip
    """Each op's self time per step, custom and native (µs, torch.profiler; the steps
    alternate, mean over `rounds` steps each; the matrix products by shape): where the
    two steps differ, op by op. On CUDA the time is the kernels' (device) time. Rows:
    the `top` ops by time, the rest, the total. A custom Function's row (LinearRelu,
    LinearReluBackward, …) holds the Python its forward or backward runs between torch
    calls; Python outside any op (native's module calls, the loop) is in no row. The
    profiler's own cost per event inflates the step with more events a little."""
    from torch.profiler import ProfilerActivity, profile, record_function

    cuda = device.type == "cuda"
    steps = {"bench_step custom": custom_step, "bench_step native": native_step}
    # one profiling session, each step inside a labelled range (a session per step would
    # make torch's profiler log two lines each)
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else []),
                 record_shapes=True) as prof:  # fmt: skip
        for _ in range(rounds):
            for label, step in steps.items():
                with record_function(label):
                    step()
                    synchronize(device)
    events = prof.events()
    ranges = sorted((e.time_range.start, e.time_range.end, e.name) for e in events if e.name in steps)
    starts = [start for start, _, _ in ranges]
    us_per_op = {label: collections.Counter() for label in steps}
    for event in events:
        i = bisect.bisect_right(starts, event.time_range.start) - 1
        if event.name in steps or i < 0 or event.time_range.start > ranges[i][1]:
            continue  # a range itself, or outside every step
        operands = MATRIX_PRODUCT_OPERANDS.get(event.name)
        op = event.name if operands is None else f"{event.name} {event.input_shapes[operands]}"
        us_per_op[ranges[i][2]][op] += (event.self_device_time_total if cuda else event.self_cpu_time_total) / rounds
    custom, native = us_per_op.values()
    ops = [op for op, us in (custom + native).most_common() if us > 0]
    rows = [[op, custom[op], native[op]] for op in ops[:top]]
    if ops[top:]:
        rows.append([f"the other {len(ops) - top} ops", *(sum(t[op] for op in ops[top:]) for t in (custom, native))])
    rows.append(["total (self times)", sum(custom.values()), sum(native.values())])
    return [[op, round(c), round(n), round(c) - round(n)] for op, c, n in rows]


SPREAD_KEYS = ("custom_over_native", "native_over_native", "custom_over_floor", "native_over_floor",
               "fused_over_floor", "direct_over_native", "custom_over_direct", "dataflow_floor_over_floor",
               "fused_over_dataflow_floor")  # fmt: skip


def saved_bytes(step) -> tuple[int, int]:
    """Bytes autograd saves for backward in one step: summed per save, and per storage."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        step()
    storages = {(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) for t in saved}
    return sum(t.untyped_storage().nbytes() for t in saved), sum(n for _, n in storages)


def _resident_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    assert match, f"/proc/self/status has no {field}"
    return int(match.group(1))


def peak_in_this_process(config: Config, which: str, device: str, threads: int) -> float:
    """Memory five steps add at their peak over what the process held before them
    (model, data, torch itself): on CUDA from torch.cuda's allocator statistics, on the
    CPU from the kernel's resident high-water mark (VmHWM), reset just before the steps."""
    torch.set_num_threads(threads)
    dev = torch.device(device)
    custom, native = build_pair(config, dev)
    x = torch.randn(config.batch, config.in_features, device=dev)
    y = torch.randint(config.num_classes, (config.batch,), device=dev)
    model, loss = (native, F.cross_entropy) if which == "native" else (custom, custom.loss)
    del custom, native
    step = make_fused_step(model, x, y) if which == "fused" else make_step(model, loss, x, y)
    if dev.type == "cuda":
        synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
    elif not Path("/proc/self/clear_refs").exists():  # not Linux: no resettable high-water mark
        return float("nan")
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS now
        before = _resident_kib("VmRSS") * 1024
    for _ in range(5):
        step()
    synchronize(dev)
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else _resident_kib("VmHWM") * 1024
    return peak - before


def peak_memory(config: Config, which: str, device: torch.device, threads: int, children: int = 3) -> float:
    """Median over `children` fresh processes: on the CPU the resident peak depends on
    what malloc happens to keep, and moves by a few MiB from one process to the next.
    torch.cuda's allocator counts exactly, so on CUDA one process is enough."""
    peaks = [in_fresh_process(peak_in_this_process, config, which, str(device), threads, timeout=600)
             for _ in range(1 if device.type == "cuda" else children)]  # fmt: skip
    return statistics.median(peaks)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--compile", action="store_true", help="also time the steps under torch.compile")
    p.add_argument("--no-digits", action="store_true", help="skip train.py's default digits model")
    p.add_argument("--profile", action="store_true",
                   help="also profile the custom and native steps and print each op's time per step")  # fmt: skip
    p.add_argument("--processes", type=int, default=1,
                   help="also time the steps in N fresh processes and print the spread of their ratios")  # fmt: skip
    args = p.parse_args()
    check_at_least_one("--processes", args.processes)
    device = setup(args)
    print(header(args, device))
    configs = CONFIGS + ([] if args.no_digits else [digits_default()])
    time_rows, fused_rows, direct_rows, dataflow_rows, memory_rows, compile_rows, process_rows, results, eager = (
        [] for _ in range(9)
    )
    profiles, profile_rounds = [], max(args.repeats, 20)  # profiled steps per model: as many as rounds, at least 20
    call_rows = function_call_cost(CONFIGS[0], device, args.repeats)
    mib = 1 / 2**20
    for config in configs:
        timing, (custom, native, x, y, custom_step, native_step) = step_timings(config, device, args.repeats)
        t_custom, t_native, t_floor, t_fused = (timing[k] for k in ("step_custom_s", "step_native_s", "floor_s",
                                                                    "step_fused_s"))  # fmt: skip
        time_rows.append([config.name, config.batch, t_custom * 1e3, t_native * 1e3, timing["custom_over_native"],
                          timing["native_over_native"], t_floor * 1e3, timing["custom_over_floor"],
                          timing["native_over_floor"]])  # fmt: skip
        fused_rows.append([config.name, config.batch, t_fused * 1e3, t_native * 1e3, timing["fused_over_native"],
                           t_floor * 1e3, timing["fused_over_floor"]])  # fmt: skip
        direct_rows.append([config.name, config.batch, t_custom * 1e3, timing["step_direct_s"] * 1e3, t_native * 1e3,
                            timing["custom_over_direct"], timing["direct_over_native"]])  # fmt: skip
        dataflow_rows.append([config.name, config.batch, timing["dataflow_rounds_floor_s"] * 1e3,
                              timing["dataflow_floor_s"] * 1e3, timing["dataflow_floor_over_floor"],
                              timing["native_over_dataflow_floor"], timing["fused_over_dataflow_floor"]])  # fmt: skip
        sum_c, unique_c = saved_bytes(custom_step)
        sum_n, unique_n = saved_bytes(native_step)
        peak_c = peak_memory(config, "custom", device, args.threads)
        peak_n = peak_memory(config, "native", device, args.threads)
        peak_f = peak_memory(config, "fused", device, args.threads)
        memory_rows.append([config.name, sum_c * mib, sum_n * mib, unique_c * mib, unique_n * mib, unique_c / unique_n,
                            peak_c * mib, peak_n * mib, peak_c / peak_n, peak_f * mib, peak_f / peak_n])  # fmt: skip
        result = dict(config=config.name, batch=config.batch, **timing, saved_sum_custom=sum_c,
                      saved_sum_native=sum_n, saved_unique_custom=unique_c, saved_unique_native=unique_n,
                      peak_custom=peak_c, peak_native=peak_n, peak_fused=peak_f)  # fmt: skip
        if args.processes > 1:
            per_process = [in_fresh_process(step_timings_in_this_process, config, str(device), args.threads,
                                            args.repeats) for _ in range(args.processes)]  # fmt: skip
            result["per_process"] = per_process
            process_rows.append([config.name, *(spread([run[key] for run in per_process]) for key in SPREAD_KEYS)])
        if args.profile:
            rows = op_profile(custom_step, native_step, device, profile_rounds)
            profiles.append((config, rows))
            result["op_profile_us"] = {op: {"custom": c, "native": n} for op, c, n, _ in rows}
        results.append(result)
        eager.append((config, custom, native, x, y, t_custom))
        print(f"  done: {config.name}", file=sys.stderr)
    print_table("step time (ms), custom / native and against the GEMM floor (ratios: medians of per-round ratios)",
                ["model", "batch", "custom", "native", "custom/native", "native/native (A/A)", "GEMM floor",
                 "custom/floor", "native/floor"], time_rows)  # fmt: skip
    print_table("custom with SGD fused into backward (MLP.fuse_sgd): step time (ms), same rounds",
                ["model", "batch", "fused", "native", "fused/native", "GEMM floor", "fused/floor"],
                fused_rows)  # fmt: skip
    print_table("where custom's extra time goes: the same Functions applied directly (C++ apply: no module "
                "calls, checks or dispatcher), step time (ms), same rounds",
                ["model", "batch", "custom", "direct", "native", "custom/direct", "direct/native"],
                direct_rows)  # fmt: skip
    print_table("the GEMM floor with the step's dataflow (each product feeds the next, every output kept to the "
                "step's end), ms, in rounds of its own with the floor, fused and native: step / dataflow floor is "
                "what the step adds beyond its products and their outputs",
                ["model", "batch", "floor", "dataflow floor", "dataflow/floor", "native/dataflow", "fused/dataflow"],
                dataflow_rows)  # fmt: skip
    if process_rows:
        print_table(f"the same ratios in {args.processes} fresh processes, each its own rounds: median (min–max)",
                    ["model", *SPREAD_KEYS], process_rows)  # fmt: skip
    print_table(f"one custom Function call, forward + backward (µs): a clone of the logits ({CONFIGS[0].batch}, "
                f"{CONFIGS[0].num_classes}), as torch's clone and as a bare custom Function",
                ["when", "torch clone", "custom Function", "added (median per call)"], call_rows)  # fmt: skip
    print_table("memory (MiB): saved for backward per step, and the peak five steps add",
                ["model", "saved sum custom", "saved sum native", "saved unique custom", "saved unique native",
                 "unique custom/native", "peak custom", "peak native", "peak custom/native", "peak fused",
                 "peak fused/native"],
                memory_rows)  # fmt: skip
    time_kind = "kernel" if device.type == "cuda" else "self"
    for config, rows in profiles:
        print_table(f"{config.name}, batch {config.batch}: each op's {time_kind} time per step (µs, torch.profiler, "
                    f"mean of {profile_rounds} steps each, alternating)",
                    ["op (matrix products: operand shapes)", "custom", "native", "custom − native"],
                    rows)  # fmt: skip
    payload = {"header": header(args, device), "results": results,
               "function_call_added_us": {row[0]: row[3] for row in call_rows}}  # fmt: skip
    write_json(args.json, payload)  # the eager tables are kept should compiling fail or run long
    if not args.compile:
        return
    for (config, custom, native, x, y, t_custom), result in zip(eager, results, strict=True):
        torch._dynamo.reset()
        compiled = []
        for model, loss in ((custom, custom.loss), (native, F.cross_entropy)):
            step = make_step(model, loss, x, y, compile_=True)
            t0 = time.perf_counter()
            step()
            synchronize(device)
            compiled.append((step, time.perf_counter() - t0))
        (c_step, c_compile), (n_step, n_compile) = compiled
        tc, tn, ratio = compare(c_step, n_step, device, args.repeats)
        compile_rows.append([config.name, c_compile, n_compile, tc * 1e3, tn * 1e3, ratio, tc / t_custom])
        result.update(compiled_custom_s=tc, compiled_native_s=tn, compile_time_custom_s=c_compile,
                      compile_time_native_s=n_compile)  # fmt: skip
        print(f"  compiled: {config.name}", file=sys.stderr)
    print_table("torch.compile (custom with fullgraph=True): compile time (s) and step time (ms)",
                ["model", "compile custom s", "compile native s", "custom", "native", "custom/native",
                 "compiled/eager custom"], compile_rows)  # fmt: skip
    write_json(args.json, payload)


if __name__ == "__main__":
    main()
