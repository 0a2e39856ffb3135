"""Wall time to reach a validation accuracy: `train.py` (defaults, digits) against
scikit-learn's MLPClassifier(hidden_layer_sizes=(128,)) on the same split.

Both evaluate on the validation split after every epoch and stop at the first epoch
that reaches the target (default 97%). "warm" times run in this process after imports
(train.py's main(): data, model, epochs with its evaluation, TensorBoard logging and
checkpoints; sklearn: partial_fit one epoch at a time, then score); "process" times
are a fresh Python process doing the whole job, imports included: ours is a plain
`python train.py` (this process reads the time it reached the target from the run's
TensorBoard events afterwards); sklearn's loads digits with sklearn.datasets (the arrays
train.py reads from scikit-learn's data files), reads train.py's split of it from a file
(making the split needs only numpy, but the `training` package imports torch, which
sklearn's process must not pay for), then fits. Each is the median of --repeats runs,
ours and sklearn's alternating. `--device cuda` trains ours on the GPU (scikit-learn
has only the CPU). A second table times, in the same rounds, fresh processes that only
import (nothing; torch; everything train.py imports; torch and torch._dynamo, which a
torch.optim optimizer imports at first use; scikit-learn's MLPClassifier): the floor
under the process times.

    OMP_NUM_THREADS=1 python benchmarks/bench_time_to_accuracy.py [--target 0.97] [--threads 1] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# nothing imported at the top may import torch: the sklearn worker runs this file too
from benchmarks.bench_sklearn import save_split  # noqa: E402


def train_args(threads: int, device: str, logdir: str, epochs: int) -> list[str]:
    return ["--quiet", "--threads", str(threads), "--device", device, "--logdir", logdir, "--run-name", "run",
            "--epochs", str(epochs)]  # fmt: skip


def first_at_target(logdir: str, target: float) -> tuple[float, int, float]:
    """The clock time (time.time()) of the run's first val/accuracy event at ≥ target,
    its epoch and the accuracy; the run is logdir/run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(Path(logdir) / "run"), size_guidance={"scalars": 0})
    events.Reload()
    for event in events.Scalars("val/accuracy"):
        if event.value >= target:
            return event.wall_time, event.step, event.value
    raise RuntimeError(f"train.py did not reach {target:.0%}")


def ours_to_target(
    target: float, threads: int, device: str = "cpu", max_epochs: int = 40
) -> tuple[float, int, float]:
    """Seconds from calling train.main() to the end of the first epoch at ≥ target (read
    off the val/accuracy events' wall times), that epoch and its accuracy."""
    import train

    with tempfile.TemporaryDirectory() as logdir:
        started = time.time()
        code = train.main(train_args(threads, device, logdir, max_epochs))
        if code != 0:
            raise RuntimeError(f"train.py exited with status {code}")
        reached, epoch, accuracy = first_at_target(logdir, target)
    return reached - started, epoch, accuracy


def ours_process_seconds(target: float, threads: int, device: str, epochs: int) -> float:
    """From starting `python train.py` (run for `epochs`, the epoch the warm run reached
    the target in) to the end of the first epoch at ≥ target."""
    with tempfile.TemporaryDirectory() as logdir:
        started = time.time()
        subprocess.run([sys.executable, "train.py", *train_args(threads, device, logdir, epochs)],
                       check=True, cwd=REPO, capture_output=True)  # fmt: skip
        return first_at_target(logdir, target)[0] - started


def sklearn_to_target(split_path: Path, target: float, max_epochs: int = 400) -> tuple[float, int, float, float]:
    """Seconds of partial_fit epochs (each followed by a validation score) until ≥ target,
    on train.py's split of digits (saved by save_split), that epoch, its accuracy and the
    clock time (time.time()) it was reached."""
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    load_digits()  # scikit-learn's own way to load what train.py reads; the split comes from the file
    split = np.load(split_path)
    x_train, y_train, x_val, y_val = split["x_train"], split["y_train"], split["x_val"], split["y_val"]
    classes = sorted(set(y_train.tolist()))
    model = MLPClassifier(hidden_layer_sizes=(128,), random_state=0)
    warnings.simplefilter("ignore", ConvergenceWarning)
    started = time.perf_counter()
    for epoch in range(1, max_epochs + 1):
        model.partial_fit(x_train, y_train, classes=classes)
        accuracy = model.score(x_val, y_val)
        if accuracy >= target:
            return time.perf_counter() - started, epoch, accuracy, time.time()
    raise RuntimeError(f"MLPClassifier did not reach {target:.0%} in {max_epochs} epochs")


def seconds_in_fresh_process(command: list[str]) -> float:
    """From starting `command` to the clock time (time.time()) it prints last."""
    started = time.time()
    done = subprocess.run(command, check=True, cwd=REPO, capture_output=True, text=True)
    return float(done.stdout.split()[-1]) - started


def sklearn_process_seconds(target: float, split_path: Path) -> float:
    """From starting a fresh Python process to the moment scikit-learn reaches the target."""
    return seconds_in_fresh_process([sys.executable, __file__, "--worker", "sklearn", "--target", str(target),
                                     "--split", str(split_path)])  # fmt: skip


# What a fresh process pays before any work: the floor under each "process" time.
IMPORT_FLOORS = {
    "python, nothing imported": "",
    "import torch": "import torch",
    "import train (torch, TensorBoard, ours)": "import train",
    "import torch, torch._dynamo": "import torch, torch._dynamo",  # a torch.optim optimizer imports it at first use
    "import sklearn's MLPClassifier": "import sklearn.datasets, sklearn.neural_network",
}


def import_seconds(statement: str) -> float:
    """From starting a fresh Python process to the end of `statement`."""
    return seconds_in_fresh_process([sys.executable, "-c", f"{statement}\nimport time\nprint(time.time())"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", type=float, default=0.97)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu", help="where train.py trains: cpu, cuda or cuda:N")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--worker", choices=("sklearn",), help=argparse.SUPPRESS)
    p.add_argument("--split", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker == "sklearn":
        print(sklearn_to_target(args.split, args.target)[-1])
        return
    import torch

    from benchmarks.common import check_device, print_table, write_json

    torch.set_num_threads(args.threads)
    check_device(args.device)
    gpu = f" ({torch.cuda.get_device_name(args.device)})" if torch.device(args.device).type == "cuda" else ""
    header = (f"torch {torch.__version__} | train.py on {args.device}{gpu}, sklearn on cpu | threads {args.threads} | "
              f"target {args.target:.0%} | median of {args.repeats}, alternating")  # fmt: skip
    print(header)
    # warm-up: pay the imports (sklearn pulls in scipy) and first-use costs before the warm timings
    ours, theirs, ours_proc, theirs_proc = [], [], [], []
    imports: dict[str, list[float]] = {name: [] for name in IMPORT_FLOORS}
    with tempfile.TemporaryDirectory() as scratch:
        split_path = save_split("digits", Path(scratch) / "digits.npz")
        ours_to_target(0.0, args.threads, args.device, max_epochs=1)
        sklearn_to_target(split_path, 0.0, max_epochs=1)
        for _ in range(args.repeats):
            ours.append(ours_to_target(args.target, args.threads, args.device))
            theirs.append(sklearn_to_target(split_path, args.target))
            ours_proc.append(ours_process_seconds(args.target, args.threads, args.device, epochs=ours[0][1]))
            theirs_proc.append(sklearn_process_seconds(args.target, split_path))
            for name, statement in IMPORT_FLOORS.items():
                imports[name].append(import_seconds(statement))
    rows = []
    for name, runs, proc in (("train.py (defaults)", ours, ours_proc),
                             ("sklearn MLPClassifier(128)", theirs, theirs_proc)):  # fmt: skip
        warm = statistics.median(r[0] for r in runs)
        rows.append([name, runs[0][1], f"{runs[0][2]:.2%}", warm, statistics.median(proc)])
    rows.append(["ratio ours / sklearn", "", "", rows[0][3] / rows[1][3], rows[0][4] / rows[1][4]])
    print_table(f"time to {args.target:.0%} validation accuracy on digits (s)",
                ["model", "epoch reached", "val accuracy", "warm s", "process s"], rows)  # fmt: skip
    sklearn_process = rows[1][4]
    import_rows = [[name, statistics.median(runs), statistics.median(runs) / sklearn_process]
                   for name, runs in imports.items()]  # fmt: skip
    print_table("a fresh process that only imports (s): the floor under the process times",
                ["imports", "process s", "÷ sklearn's process to target"], import_rows)  # fmt: skip
    write_json(args.json, {"header": header, "rows": rows, "imports": import_rows})


if __name__ == "__main__":
    main()
