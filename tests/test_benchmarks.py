"""The benchmark scripts run and write the JSON they promise (structure only: timings
are never asserted)."""

from __future__ import annotations

import collections
import json
import math
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO, assert_one_error_line, subprocess_env


def test_bench_ops_writes_every_size_and_the_overhead_breakdown(tmp_path: Path) -> None:
    out = tmp_path / "ops.json"
    done = subprocess.run([sys.executable, "benchmarks/bench_ops.py", "--ops", "sum", "--repeats", "1", "--json",
                           str(out), "--processes", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    payload = json.loads(out.read_text())
    assert [(r["op"], r["size"]) for r in payload["results"]] == [("sum", "64x64"), ("sum", "256x1024")]
    assert all(r["fwd_bwd_custom_s"] > 0 and r["fwd_bwd_native_s"] > 0 for r in payload["results"])
    (row,) = payload["overhead_breakdown"]
    assert row["op"] == "sum" and all(row[k] > 0 for k in ("torch_us", "kernels_only_us", "function_us", "custom_ops_us"))
    assert math.isclose(row["custom_over_torch"] * row["torch_us"], row["custom_ops_us"], rel_tol=0.5)
    assert "where each op's 64x64 forward + backward time goes" in done.stdout
    assert [r["variant"].split(":")[0] for r in payload["machinery_reference"]] == [
        "kernels alone (clone, then g passed back)", "torch's clone", "a custom Function around the same clone"]
    assert all(r["us"] > 0 for r in payload["machinery_reference"])
    # --processes 2: the 64x64 ratio once more in each of two fresh processes
    assert [sorted(run) for run in payload["small_fwd_bwd_ratio_per_process"]] == [["sum"], ["sum"]]
    assert all(run["sum"] > 0 for run in payload["small_fwd_bwd_ratio_per_process"])
    assert "64x64 forward + backward, custom / native, in 2 fresh processes" in done.stdout
    assert re.search(r"^sum +\d\.\d{3} \(\d\.\d{3}–\d\.\d{3}\) +[012]/2 *$", done.stdout, re.M), done.stdout


def test_bench_ops_times_elementwise_ops_at_256x1024_and_4096x4096() -> None:
    """The elementwise target holds "at 256×1024 and larger": both sizes are timed."""
    from benchmarks.bench_ops import ELEMENTWISE, sizes
    from custom_ops.registry import OP_DB

    assert ELEMENTWISE <= {info.name for info in OP_DB}
    for info in OP_DB:
        expected = [(64, 64), (256, 1024)] + ([(4096, 4096)] if info.name in ELEMENTWISE else [])
        assert sizes(info.name) == expected, info.name
    assert {"relu", "sigmoid", "add", "mse_loss"} <= ELEMENTWISE


def test_the_kernels_only_run_computes_the_ops_gradient() -> None:
    """The breakdown's "kernels alone" row must run the op's real forward and backward
    through KernelsOnlyContext: its gradient equals autograd's for every op."""
    from benchmarks.bench_ops import KernelsOnlyContext, inputs
    from custom_ops.function import observe_ops
    from custom_ops.registry import OP_DB

    for info in OP_DB:
        args, kwargs = inputs(info.name, 3, 4, torch.device("cpu"))
        leaves = [a.double().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
        applied = []
        with observe_ops(lambda cls, op_args, out: applied.append((cls, op_args, out))):
            info.op(*leaves, **kwargs)
        ((cls, op_args, output),) = applied
        grad_out = torch.rand_like(output)
        differentiable = [a for a in op_args if isinstance(a, torch.Tensor) and a.requires_grad]
        expected = torch.autograd.grad(output, differentiable, grad_out)
        ctx = KernelsOnlyContext(tuple(isinstance(a, torch.Tensor) and a.requires_grad for a in op_args))
        with torch.no_grad():
            cls.setup_context(ctx, op_args, cls.forward(*op_args))
            returned = cls.backward(ctx, grad_out)
        grads = [g for g in (returned if isinstance(returned, tuple) else (returned,)) if g is not None]
        assert len(grads) == len(expected), info.name
        for ours, theirs in zip(grads, expected):
            torch.testing.assert_close(ours, theirs, msg=info.name)


def test_rounds_are_balanced_for_position_and_predecessor_and_ratios_are_paired(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from benchmarks import common

    monkeypatch.setattr(common, "time_per_call", lambda fn, device: (2, 0.0))  # 2 calls a round, no warm-up
    calls: list[str] = []
    fns = [lambda name=name: calls.append(name) for name in "abc"]
    times = common.time_rounds(fns, torch.device("cpu"), repeats=7)
    assert [len(t) for t in times] == [7] * 3
    rounds = ["".join(calls[i : i + 6]) for i in range(0, len(calls), 6)]
    # three rotations, then the same reversed; the seventh round starts the cycle again
    assert rounds == ["aabbcc", "bbccaa", "ccaabb", "ccbbaa", "aaccbb", "bbaacc", "aabbcc"]
    for n in range(1, 9):  # over one cycle: every position, and every predecessor, equally often
        orders = common.round_orders(n)
        assert all(sorted(order) == list(range(n)) for order in orders)
        positions = collections.Counter((v, i) for order in orders for i, v in enumerate(order))
        predecessors = collections.Counter(pair for order in orders for pair in zip(order, order[1:]))
        assert len(positions) == n * n and len(set(positions.values())) == 1
        assert len(predecessors) == n * (n - 1) and len(set(predecessors.values())) <= 1

    # the median of the per-round ratios (1, 4, 2.25), not the ratio of medians (4 / 1)
    a, b = [1.0, 4.0, 9.0], [1.0, 1.0, 4.0]
    assert common.paired_ratio(a, b) == 2.25
    with pytest.raises(ValueError):
        common.paired_ratio(a, b[:2])  # rounds must pair up


def test_bench_step_parts_run_on_a_tiny_model() -> None:
    from benchmarks import bench_step, common

    cpu = torch.device("cpu")
    config = bench_step.Config("tiny", 8, (16,), 3, 4, "relu")
    rows = bench_step.function_call_cost(config, cpu, repeats=1)
    assert [row[0] for row in rows] == ["warm (back to back)", "after a matrix product"]
    assert all(row[1] > 0 and row[2] > 0 for row in rows)

    custom, _ = bench_step.build_pair(config, cpu)
    before = [p.detach().clone() for p in custom.parameters()]
    step = bench_step.make_fused_step(custom, torch.randn(4, 8), torch.randint(3, (4,)))
    step()
    assert all(p.grad is None and not torch.equal(p, q) for p, q in zip(custom.parameters(), before, strict=True))
    peak = bench_step.peak_memory(config, "fused", cpu, threads=1, children=1)
    assert peak >= 0 or math.isnan(peak)  # NaN where no resettable resident high-water mark exists

    # the direct step runs the model's own Functions: the same loss and update, bit for bit
    x, y = torch.randn(4, 8), torch.randint(3, (4,))
    initial, stepped, direct = (bench_step.build_pair(config, cpu)[0] for _ in range(3))
    assert torch.equal(bench_step.make_step(stepped, stepped.loss, x, y)(), bench_step.make_direct_step(direct, x, y)())
    for p, q, p0 in zip(stepped.parameters(), direct.parameters(), initial.parameters(), strict=True):
        assert torch.equal(p, q) and not torch.equal(p, p0)

    timing = common.in_fresh_process(bench_step.step_timings_in_this_process, config, "cpu", 1, 2)
    assert set(bench_step.SPREAD_KEYS) <= set(timing) and all(value > 0 for value in timing.values())
    assert common.spread([1.02, 0.99, 1.05]) == "1.020 (0.990–1.050)"


def test_a_fresh_process_that_dies_is_reported_at_once() -> None:
    from benchmarks import common

    assert common.in_fresh_process(math.hypot, 3.0, 4.0) == 5.0
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"^exit exited with code 3 in a fresh process, without a result$"):
        common.in_fresh_process(sys.exit, 3)
    assert time.monotonic() - started < 120  # not the 30 min the result could otherwise be waited for


def test_both_gemm_floors_run_the_same_products_and_the_dataflow_one_chains_them() -> None:
    from torch.utils._python_dispatch import TorchDispatchMode

    from benchmarks import bench_step

    class RecordProducts(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.products: list[tuple[tuple, tuple, int]] = []  # (operand shapes, operand pointers, output pointer)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func is torch.ops.aten.mm.default:
                self.products.append((tuple(tuple(a.shape) for a in args), tuple(a.data_ptr() for a in args),
                                      out.data_ptr()))  # fmt: skip
            return out

    # batch 4, and no layer 4 wide: a product's first operand with 4 rows is g·W's g
    config = bench_step.Config("tiny", 8, (16, 12), 3, 4, "relu")
    cpu = torch.device("cpu")
    runs = []
    for make in (bench_step.floor_step, bench_step.dataflow_floor_step):
        with RecordProducts() as record:
            kept = make(config, cpu)()
        runs.append((record.products, kept))
    (floor, _), (dataflow, kept) = runs
    # per layer x·Wᵀ, gᵀ·x, and g·W except for the first layer: 3 + 3 + 2
    assert len(floor) == 8 and sorted(p[0] for p in floor) == sorted(p[0] for p in dataflow)
    # forward: each product's output is the next one's input; backward: g·W is the next layer's g
    forward, backward = dataflow[:3], dataflow[3:]
    assert [p[1][0] for p in forward[1:]] == [p[2] for p in forward[:-1]]
    g_of_layer = [p[2] for p in backward if p[0][0][0] == config.batch]  # the g·W products
    g_used = [p[1][0] for p in backward if p[0][0][0] != config.batch]  # gᵀ of the products gᵀ·x
    assert g_used[1:] == g_of_layer
    # every output is kept to the step's end
    assert {p[2] for p in dataflow} <= {t.data_ptr() for t in kept}


def test_op_profile_puts_each_op_of_both_steps_side_by_side() -> None:
    from benchmarks import bench_step

    cpu = torch.device("cpu")
    config = bench_step.Config("tiny", 8, (16,), 3, 4, "relu")
    custom, native = bench_step.build_pair(config, cpu)
    x, y = torch.randn(4, 8), torch.randint(3, (4,))
    steps = (bench_step.make_step(custom, custom.loss, x, y),
             bench_step.make_step(native, torch.nn.functional.cross_entropy, x, y))  # fmt: skip
    rows = bench_step.op_profile(*steps, cpu, rounds=2, top=1000)
    by_op = {row[0]: row[1:] for row in rows}
    # the custom step's own Functions, native's modules' nodes, and the products by operand shapes
    assert by_op["LinearRelu"][0] > 0 and by_op["LinearRelu"][1] == 0
    assert by_op["aten::threshold_backward"][0] == 0 and by_op["aten::threshold_backward"][1] > 0
    assert by_op["aten::addmm [[4, 8], [8, 16]]"][0] > 0 and by_op["aten::addmm [[4, 8], [8, 16]]"][1] > 0
    assert rows[-1][0] == "total (self times)"
    for column in (1, 2):
        assert abs(sum(row[column] for row in rows[:-1]) - rows[-1][column]) <= len(rows)  # each rounded
    assert all(c - n == diff for _, c, n, diff in rows)
    short = bench_step.op_profile(*steps, cpu, rounds=1, top=2)
    assert len(short) == 4 and short[2][0].startswith("the other ") and short[3][0] == "total (self times)"


@pytest.mark.parametrize(
    "script, args, path, pattern",
    [("bench_step.py", ["--processes", "0"], None, r"^error: --processes must be at least 1, got 0$"),
     ("bench_ops.py", ["--processes", "0"], None, r"^error: --processes must be at least 1, got 0$"),
     # bench_ops once skipped unknown names silently and printed empty tables, with exit 0
     ("bench_ops.py", ["--ops", "relu,nope"], None, r"^error: no op named nope in the op database: choose from add, "),
     ("bench_instructions.py", ["--ops", "relu,nope"], None, r"^error: no op named nope in the op database: "),
     ("bench_instructions.py", ["--calls", "0"], None, r"^error: --calls must be at least 1, got 0$"),
     ("bench_instructions.py", ["--seeds", "0"], None, r"^error: --seeds must be at least 1, got 0$"),
     ("bench_instructions.py", ["--threads", "0"], None, r"^error: --threads must be at least 1, got 0$"),
     ("bench_instructions.py", [], "", r"^error: valgrind is not on PATH: install it")],
)  # fmt: skip
def test_benchmarks_refuse_bad_input_in_one_line(script: str, args: list[str], path: str | None, pattern: str) -> None:
    env = None if path is None else {**subprocess_env(), "PATH": path}
    done = subprocess.run([sys.executable, f"benchmarks/{script}", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 1 and done.stdout == ""
    assert_one_error_line(done.stderr, pattern)


@pytest.mark.parametrize(
    "script, worker_args",
    [("bench_time_to_accuracy.py", ["--worker", "sklearn", "--target", "0", "--split", "{split}"]),
     ("bench_sklearn.py", ["--worker", "{split}", "lr"])],
)  # fmt: skip
def test_sklearn_workers_do_not_import_torch(tmp_path: Path, script: str, worker_args: list[str]) -> None:
    # their process times are compared with train.py's: a torch import there would be
    # charged to scikit-learn (it once was: 1 s of its 2.3 s)
    from benchmarks.bench_sklearn import save_split

    split = save_split("digits", tmp_path / "digits.npz")
    argv = [script, *(a.format(split=split) for a in worker_args)]
    code = (f"import runpy, sys; sys.argv = {argv!r}; "
            f"runpy.run_path('benchmarks/{script}', run_name='__main__'); "
            "assert 'torch' not in sys.modules, 'the sklearn worker imported torch'")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_import_floors_time_a_fresh_process_to_the_end_of_its_statement() -> None:
    from benchmarks.bench_time_to_accuracy import IMPORT_FLOORS, import_seconds

    for statement in IMPORT_FLOORS.values():
        compile(statement, "<floor>", "exec")
    assert import_seconds("import time; time.sleep(0.2)") >= 0.2  # a lower bound: a sleep cannot be cut short


def test_ours_process_time_is_a_plain_train_py_read_back_from_its_events() -> None:
    from benchmarks.bench_time_to_accuracy import ours_process_seconds

    seconds = ours_process_seconds(target=0.0, threads=1, device="cpu", epochs=1)
    assert 0 < seconds < 600
    with pytest.raises(RuntimeError, match="did not reach 101%"):
        ours_process_seconds(target=1.01, threads=1, device="cpu", epochs=1)
    with pytest.raises(subprocess.CalledProcessError):  # train.py's own exit status is checked
        ours_process_seconds(target=0.0, threads=1, device="no-such-device", epochs=1)


def test_instructions_per_call_cancel_what_a_stretch_costs_once(tmp_path: Path) -> None:
    """Per call = (I(2n) − I(n)) / n over two stretches, read from callgrind's numbered
    dumps in mark order; a dump too many or too few is an error, not a wrong table."""
    from benchmarks.bench_instructions import per_call, read_dumps

    once, each = 777, 50  # a stretch's fixed cost (loop, marks), and one call's
    labels = [None, ["relu", "torch", 20], ["relu", "torch", 40], None, ["relu", "custom_ops", 20],
              ["relu", "custom_ops", 40]]  # fmt: skip
    counts = [10**9, once + 20 * each, once + 40 * each, 5, once + 20 * 60, once + 40 * 60]
    for i, count in enumerate(counts, start=1):
        (tmp_path / f"cg.out.{i}").write_text(f"# callgrind format\nevents: Ir\nsummary: {count}\ntotals: {count}\n")
    assert read_dumps(tmp_path, "cg.out", len(labels)) == counts
    assert per_call(labels, counts) == {("relu", "torch"): each, ("relu", "custom_ops"): 60}
    with pytest.raises(SystemExit, match="wrote 6 dumps for 7 marks"):
        read_dumps(tmp_path, "cg.out", 7)
    with pytest.raises(SystemExit, match="more dumps than the 5 marks"):
        read_dumps(tmp_path, "cg.out", 5)


def test_the_counted_child_closes_each_stretch_with_a_mark(tmp_path: Path) -> None:
    """Run without valgrind, the child still runs every way of the op and writes one
    label per mark: a warm-up, then calls and twice as many calls, for each way."""
    from benchmarks.bench_instructions import CLONE, VARIANTS
    from benchmarks.bench_ops import MACHINERY_VARIANTS

    labels = tmp_path / "labels.json"
    done = subprocess.run([sys.executable, "benchmarks/bench_instructions.py", "--ops", "relu", "--calls", "2",
                           "--labels", str(labels)], cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    ways = [("relu", way) for way in VARIANTS] + [(CLONE, way) for way in MACHINERY_VARIANTS]
    assert json.loads(labels.read_text()) == [label for name, way in ways
                                              for label in (None, [name, way, 2], [name, way, 4])]  # fmt: skip


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_bench_instructions_counts_every_way_under_callgrind(tmp_path: Path) -> None:
    """The whole run under valgrind (about 70 s, most of it `import torch`): every way
    of the op counted, and the table's ratios and differences from those counts."""
    from benchmarks.bench_ops import MACHINERY_VARIANTS

    out = tmp_path / "instructions.json"
    done = subprocess.run([sys.executable, "benchmarks/bench_instructions.py", "--ops", "relu", "--calls", "3",
                           "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(out.read_text())["instructions_per_call"]
    assert row["op"] == "relu"
    # a 64×64 relu forward + backward through autograd runs tens of thousands of instructions
    assert all(10_000 < row[key] < 10_000_000 for key in ("torch", "kernels_only", "function", "custom_ops"))
    assert row["kernels_only"] < row["function"]  # the machinery adds a node, a graph task and an engine run
    assert math.isclose(row["custom_over_torch"], row["custom_ops"] / row["torch"])
    assert math.isclose(row["wrapper"], row["custom_ops"] - row["function"])
    clone = json.loads(out.read_text())["machinery_reference"]
    assert [r["variant"] for r in clone] == MACHINERY_VARIANTS
    assert clone[0]["machinery"] == 0 and clone[1]["machinery"] > 0 and clone[2]["machinery"] > 0
    assert re.search(r"^relu +\d+ +\d+ +\d+ +\d+ +\d\.\d+ +\d\.\d+ +\d+ +-?\d+ *$", done.stdout, re.M), done.stdout
