"""Samples per second with 1 and 2 processes (torchrun + DDP on gloo), side by side.

    OMP_NUM_THREADS=1 python benchmarks/bench_ddp.py               # digits, MLP 64-512-10
    OMP_NUM_THREADS=1 python benchmarks/bench_ddp.py --batch-sizes 32 256 --repeats 3

Each configuration is a fresh process group (or a plain process), run in interleaved
rounds (A, B, C, D, A, B, …); the table shows medians and the ratio to the first row.

Two measurements:
- "steps": training steps only (forward, backward with DDP's gradient all-reduce, Adam),
  whole epochs of the training split (at least --min-steps steps), after one warm-up
  epoch; each process computes
  its part of every global batch (training.distributed.epoch_shard and share_of_mean_loss,
  as train.py does).
- "train.py": train.py itself, from the per-epoch times it prints (epochs 2..N+1), which
  include the evaluation of both splits, TensorBoard logging and the checkpoint.

Rows: 1 process with 1 thread (the baseline); 1 process with 2 threads (the other way to
use 2 cores); torchrun with 1 process (DDP's own overhead, nothing to exchange with);
torchrun with 2 processes of 1 thread each.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# label -> (launcher, threads): launcher None is a plain `python`, else torchrun's --nproc_per_node
CONFIGS = {
    "1 process, 1 thread": (None, 1),
    "1 process, 2 threads": (None, 2),
    "torchrun, 1 process": (1, 1),
    "torchrun, 2 processes x 1 thread": (2, 1),
}


def command(nproc: int | None, script: list[str]) -> list[str]:
    if nproc is None:
        return [sys.executable, *script]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone", *script]


def run(cmd: list[str]) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def steps_samples_per_s(nproc: int | None, threads: int, args: argparse.Namespace, batch: int) -> float:
    script = [str(Path(__file__).resolve()), "--worker", "--threads", str(threads), "--batch-size", str(batch),
              "--epochs", str(args.epochs), "--min-steps", str(args.min_steps),
              "--hidden", str(args.hidden)]  # fmt: skip
    lines = [line for line in run(command(nproc, script)).splitlines() if line.startswith("{")]
    return json.loads(lines[-1])["samples_per_s"]


EPOCH_LINE = re.compile(r"^epoch +(\d+)/\d+ .* ([0-9.]+)s(  \*best)?$")


def train_py_samples_per_s(nproc: int | None, threads: int, args: argparse.Namespace, batch: int) -> float:
    with tempfile.TemporaryDirectory() as logdir:
        script = [str(REPO / "train.py"), "--dataset", "digits", "--hidden", str(args.hidden), "--batch-size",
                  str(batch), "--epochs", str(args.epochs + 1), "--threads", str(threads), "--device", "cpu",
                  "--logdir", logdir, "--run-name", "bench"]  # fmt: skip
        output = run(command(nproc, script))
    seconds = [float(m.group(2)) for line in output.splitlines() if (m := EPOCH_LINE.match(line)) and m.group(1) != "1"]
    return len(digits_split().y_train) * len(seconds) / sum(seconds)  # (epoch times are to 0.01 s: sum them)


@functools.cache
def digits_split():
    """train.py's split of digits at its defaults (20 % held out, seed 0)."""
    from training import load_dataset, split_and_standardize

    return split_and_standardize(load_dataset("digits"), 0.2, seed=0)


def worker(args: argparse.Namespace) -> None:
    """One process of the "steps" measurement (under torchrun, or plain)."""
    import torch

    from models import build_classifier
    from training import distributed

    torch.set_num_threads(args.threads)
    launch = distributed.launch_from_env()
    group = distributed.Group(launch, torch.device("cpu")) if launch else None
    rank, world = (group.rank, group.world_size) if group else (0, 1)
    split = digits_split()
    x, y = torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)
    torch.manual_seed(0)
    model = build_classifier("mlp", x.shape[1], 10, [args.hidden], "relu")
    step_model = group.wrap(model) if group else model
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch, local = args.batch_size, args.batch_size // world

    def epoch(number: int) -> None:
        order = distributed.epoch_shard(len(y), 0, number, rank, world)
        for step in range(-(-len(y) // batch)):
            index = order[step * local : (step + 1) * local]
            logits = step_model(x[index])
            global_batch = min(batch, len(y) - step * batch)
            loss = distributed.share_of_mean_loss(model, logits, y[index], global_batch, world)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    # at least `--min-steps` timed steps: with big batches an epoch is only a few steps
    epochs = max(args.epochs, -(-args.min_steps // -(-len(y) // batch)))
    epoch(0)  # warm-up
    if group:
        group.barrier()
    started = time.perf_counter()
    for number in range(1, epochs + 1):
        epoch(number)
    if group:
        group.barrier()
    elapsed = time.perf_counter() - started
    if rank == 0:
        print(json.dumps({"samples_per_s": len(y) * epochs / elapsed}))
    distributed.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256], help="global batch sizes")
    parser.add_argument("--hidden", type=int, default=512, help="MLP hidden size (default 512, train.py's)")
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per run")
    parser.add_argument("--min-steps", type=int, default=200, help="steps: time at least this many steps")
    parser.add_argument("--measures", nargs="+", choices=("steps", "train.py"), default=["steps", "train.py"])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the median is reported")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=32, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    import torch

    from benchmarks.common import write_json

    print(f"torch {torch.__version__} | {os.cpu_count()} CPUs | {platform.processor() or platform.machine()} | "
          f"digits, MLP 64-{args.hidden}-10, Adam | {args.epochs} epochs per run | median of {args.repeats} "
          "interleaved rounds")  # fmt: skip
    results = []
    for measure, fn in (("steps", steps_samples_per_s), ("train.py", train_py_samples_per_s)):
        if measure not in args.measures:
            continue
        for batch in args.batch_sizes:
            times: dict[str, list[float]] = {label: [] for label in CONFIGS}
            for _ in range(args.repeats):
                for label, (nproc, threads) in CONFIGS.items():
                    times[label].append(fn(nproc, threads, args, batch))
            base = statistics.median(times["1 process, 1 thread"])
            print(f"\n{measure}, global batch {batch}")
            print(f"{'configuration':<34} {'samples/s':>10} {'vs 1 process':>13}   (all rounds)")
            for label, values in times.items():
                median = statistics.median(values)
                rounds = ", ".join(f"{v:,.0f}" for v in values)
                print(f"{label:<34} {median:>10,.0f} {median / base:>12.2f}x   ({rounds})")
                results.append({"measure": measure, "batch_size": batch, "configuration": label,
                                "samples_per_s": median, "ratio": median / base, "rounds": values})  # fmt: skip
    write_json(args.json, {"results": results})


if __name__ == "__main__":
    main()
