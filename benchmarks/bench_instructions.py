"""Every op's 64×64 forward + backward in instructions, custom / native, counted by callgrind.

At 64×64 the time of a call is mostly per-call overhead, and timed ratios move by ±5 %
from one fresh process to the next on these machines (`bench_ops.py --processes`), more
than most changes to that overhead. Valgrind's callgrind counts the instructions a run
executes instead, whatever else the machine is doing. With PYTHONHASHSEED fixed (string
hashes, and so the layout of every dict, are otherwise random per process) a run gives
the same counts to the instruction, run after run. Other seeds move a call's count by
up to 1 % (custom / torch by about ±0.003, measured on add and relu): --seeds N counts
under seeds 0 to N−1 and reports medians, for an A/B of changes smaller than that.

The four ways of `bench_ops.py`'s breakdown, per op: torch's twin, our kernels alone
(forward, setup_context and backward as plain Python calls), our Function through its
C++ apply, and the public custom_ops function; and the clone reference (a native node
against a custom Function around the same kernels). Per call: each is run `calls` times
in one counted stretch and 2·calls in another, and the difference divided by calls, so
that what a stretch costs once (its loop, its marks) cancels.

Instructions are not time. A cache miss or a slow instruction counts one; under
valgrind torch runs its AVX2 kernels (valgrind runs no AVX-512), and one thread. The
counts measure the code a call runs, which at this size is mostly Python and C++
dispatch; the time is in `bench_ops.py`.

How: the script runs itself again under `valgrind --tool=callgrind
--dump-before=getppid`, and that child calls `os.getppid()` at the end of each
stretch, which makes callgrind write the count since its last dump to a file of its
own. Needs valgrind on PATH; CPU only (valgrind cannot run a GPU's work). Here a run
of every op took 3.5 minutes, and of one op 1.5, 70 s of it `import torch` under
valgrind.

    python benchmarks/bench_instructions.py [--ops add,relu] [--calls 20] [--seeds 1] [--threads 1]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_ops import MACHINERY_VARIANTS, breakdown_variants, chosen_ops, machinery_variants  # noqa: E402
from benchmarks.common import check_at_least_one, print_table, write_json  # noqa: E402
from custom_ops.registry import OP_DB  # noqa: E402

MARK = "getppid"  # a libc call that neither Python nor torch makes on their own
VARIANTS = ["torch", "kernels alone", "Function", "custom_ops"]
CLONE = "clone reference"
WARMUP_CALLS = 5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ops", default="", help="comma-separated op names (default: every op)")
    p.add_argument("--calls", type=int, default=20, help="calls per counted stretch (and twice as many in a second)")
    p.add_argument("--seeds", type=int, default=1,
                   help="count in N children, PYTHONHASHSEED 0 to N-1, and report each count's median over them")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (valgrind runs them one at a time)")
    p.add_argument("--json", type=Path, default=None, help="also write the counts as JSON to this path")
    p.add_argument("--labels", type=Path, default=None, help=argparse.SUPPRESS)  # set for the counted child
    return p.parse_args(argv)


def run_marked_stretches(names: list[str], calls: int, threads: int, labels_path: Path) -> None:
    """The counted child: each way of each op warmed up, then `calls` and 2·calls calls,
    each stretch closed by a mark. Writes one label per mark ([op, way, calls], or None
    for what is not counted), in the order of callgrind's dumps."""
    torch.set_num_threads(threads)
    cpu = torch.device("cpu")
    runs = [(info.name, way, fn) for info in OP_DB if info.name in names
            for way, fn in zip(VARIANTS, breakdown_variants(info, cpu), strict=True)]  # fmt: skip
    runs += [(CLONE, way, fn) for way, fn in zip(MACHINERY_VARIANTS, machinery_variants(cpu), strict=True)]
    labels: list[list | None] = []

    def mark(label: list | None) -> None:
        labels.append(label)
        os.getppid()  # callgrind dumps the count since the last mark as this call begins

    for name, way, fn in runs:
        for _ in range(WARMUP_CALLS):
            fn()
        mark(None)
        for n in (calls, 2 * calls):
            for _ in range(n):
                fn()
            mark([name, way, n])
    labels_path.write_text(json.dumps(labels))


def read_dumps(folder: Path, stem: str, expected: int) -> list[int]:
    """The instruction count of each of callgrind's numbered dumps, in order."""
    counts = []
    for i in range(1, expected + 1):
        path = folder / f"{stem}.{i}"
        if not path.exists():
            raise SystemExit(f"error: callgrind wrote {i - 1} dumps for {expected} marks: is {MARK} intercepted?")
        summary = [line for line in path.read_text().splitlines() if line.startswith("summary:")]
        counts.append(int(summary[0].split()[1]))
    if (folder / f"{stem}.{expected + 1}").exists():
        raise SystemExit(f"error: callgrind wrote more dumps than the {expected} marks: something else called {MARK}")
    return counts


def per_call(labels: list[list | None], counts: list[int]) -> dict[tuple[str, str], float]:
    """Instructions per call of each (op, way): (I(2n) − I(n)) / n over its two stretches."""
    stretches: dict[tuple[str, str], dict[int, int]] = {}
    for label, count in zip(labels, counts, strict=True):
        if label is not None:
            name, way, n = label
            stretches.setdefault((name, way), {})[n] = count
    return {key: (by_n[max(by_n)] - by_n[min(by_n)]) / min(by_n) for key, by_n in stretches.items()}


def count_under_callgrind(args: argparse.Namespace, names: list[str], hash_seed: int) -> dict[tuple[str, str], float]:
    """Instructions per call of each (op, way), from one counted child with this
    PYTHONHASHSEED (string hashes, and so dict layouts, are otherwise random per process)."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("error: valgrind is not on PATH: install it (Debian: apt install valgrind) to count "
                         "instructions")
    with tempfile.TemporaryDirectory() as tmp:
        folder, stem = Path(tmp), "callgrind.out"
        command = [valgrind, "--tool=callgrind", f"--dump-before={MARK}", "--dump-instr=no", "--dump-line=no",
                   f"--callgrind-out-file={folder / stem}", f"--log-file={folder / 'valgrind.log'}",
                   sys.executable, str(Path(__file__).resolve()),
                   "--ops", ",".join(names), "--calls", str(args.calls), "--threads", str(args.threads),
                   "--labels", str(folder / "labels.json")]  # fmt: skip
        env = {**os.environ, "PYTHONHASHSEED": str(hash_seed)}
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode != 0:  # valgrind's own lines went to its log: stderr is the child's
            last = (done.stderr.strip().splitlines() or ["(nothing on stderr)"])[-1]
            raise SystemExit(f"error: the counting run under valgrind exited with code {done.returncode}: {last}")
        labels = json.loads((folder / "labels.json").read_text())
        return per_call(labels, read_dumps(folder, stem, len(labels)))


def valgrind_version() -> str:
    return subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    args = parse_args()
    names = chosen_ops(args.ops)
    for flag, value in (("--calls", args.calls), ("--seeds", args.seeds), ("--threads", args.threads)):
        check_at_least_one(flag, value)
    if args.labels is not None:
        run_marked_stretches(names, args.calls, args.threads, args.labels)
        return
    per_seed = [count_under_callgrind(args, names, seed) for seed in range(args.seeds)]
    counts = {key: statistics.median(run[key] for run in per_seed) for key in per_seed[0]}
    header = (f"torch {torch.__version__} | cpu under {valgrind_version()} | threads {args.threads} | "
              f"instructions per call = (I({2 * args.calls} calls) - I({args.calls} calls)) / {args.calls}, "
              f"median over PYTHONHASHSEED 0 to {args.seeds - 1}")
    print(header)
    rows = []
    for name in names:
        torch_i, kernels_i, function_i, public_i = (counts[name, way] for way in VARIANTS)
        rows.append([name, torch_i, kernels_i, function_i, public_i, function_i / torch_i, public_i / torch_i,
                     function_i - kernels_i, public_i - function_i])  # fmt: skip
    columns = ["op", "torch", "our kernels alone", "our Function (C++ apply)", "custom_ops", "Function/torch",
               "custom/torch", "machinery", "wrapper"]  # fmt: skip
    print_table("64x64 forward + backward, instructions per call (machinery = Function - kernels alone, "
                "wrapper = custom_ops - Function)", columns,
                [[f"{c:.3f}" if column in (5, 6) else f"{c:.0f}" if column else c for column, c in enumerate(row)]
                 for row in rows])  # fmt: skip
    clone = [[way, counts[CLONE, way], counts[CLONE, way] - counts[CLONE, MACHINERY_VARIANTS[0]]]
             for way in MACHINERY_VARIANTS]  # fmt: skip
    print_table("the machinery itself: a 64x64 clone forward + backward, as torch's node and as a custom Function",
                ["variant", "instructions", "less kernels alone"], [[w, f"{i:.0f}", f"{m:.0f}"] for w, i, m in clone])
    print(f"\ncustom/torch: median {statistics.median(r[6] for r in rows):.3f}, "
          f"{sum(r[6] <= 1.5 for r in rows)} of {len(rows)} ops at most 1.5")
    keys = ["op", "torch", "kernels_only", "function", "custom_ops", "function_over_torch", "custom_over_torch",
            "machinery", "wrapper"]  # fmt: skip
    write_json(args.json, {"header": header, "hash_seeds": args.seeds,
                           "instructions_per_call": [dict(zip(keys, row, strict=True)) for row in rows],
                           "machinery_reference": [dict(variant=w, instructions=i, machinery=m) for w, i, m in clone]})


if __name__ == "__main__":
    main()
