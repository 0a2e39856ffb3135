"""train.py beside scikit-learn on the same train/validation split, in one sitting.

    OMP_NUM_THREADS=1 python benchmarks/bench_sklearn.py [--device cuda] [--json out.json]

Rows: `python train.py` (the default MLP on digits), the same with --hidden 128, and
`python train.py --model lr --dataset breast_cancer`; scikit-learn's
MLPClassifier(hidden_layer_sizes=(128,)) on digits and LogisticRegression on
breast_cancer, fitted on the split train.py makes (training.split_and_standardize,
seed 0, 20% validation), standardized the same way.

Two times per row. "process wall": a fresh Python process doing the whole job
(imports, data, training, evaluation; for train.py also TensorBoard logging and
checkpoints; the sklearn process reads the split from a file, so it pays no torch
import). "fit": train.py's main() called in a warm process (everything but imports),
and sklearn's model.fit alone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OURS = {
    "train.py (default: MLP 512 relu)": ("digits", []),
    "train.py --hidden 128": ("digits", ["--hidden", "128"]),
    "train.py --model lr": ("breast_cancer", ["--model", "lr"]),
}
SKLEARN = {
    "sklearn MLPClassifier(hidden_layer_sizes=(128,))": ("digits", "mlp"),
    "sklearn LogisticRegression()": ("breast_cancer", "lr"),
}


def save_split(dataset_name: str, path: Path, seed: int = 0) -> Path:
    """train.py's split of the dataset, saved for the sklearn worker (which then needs
    only numpy and sklearn, not torch)."""
    from training import load_dataset, split_and_standardize

    split = split_and_standardize(load_dataset(dataset_name), val_fraction=0.2, seed=seed)
    np.savez(path, x_train=split.x_train, y_train=split.y_train, x_val=split.x_val, y_val=split.y_val)
    return path


def sklearn_fit(split_path: str | Path, kind: str, seed: int = 0) -> dict[str, float]:
    """Fit one scikit-learn model on a saved split; its validation accuracy and fit time."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    split = np.load(split_path)
    model = MLPClassifier(hidden_layer_sizes=(128,), random_state=seed) if kind == "mlp" else LogisticRegression()
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLPClassifier may warn that 200 iterations did not converge
        model.fit(split["x_train"], split["y_train"])
    fit_s = time.perf_counter() - started
    return {"val_accuracy": float(model.score(split["x_val"], split["y_val"])), "fit_s": fit_s}


def ours_fit(dataset_name: str, flags: list[str], logdir: Path) -> dict[str, float]:
    """Run train.py in this process (imports already paid) and read its metrics back."""
    import train

    name = f"fit-{dataset_name}-{len(list(logdir.iterdir()))}"
    started = time.perf_counter()
    code = train.main(["--dataset", dataset_name, *flags, "--quiet", "--logdir", str(logdir), "--run-name", name])
    fit_s = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"train.py failed with exit code {code}")
    final = json.loads((logdir / name / "metrics.json").read_text())["final"]
    return {"val_accuracy": final["val_accuracy"], "fit_s": fit_s}


def process_wall(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
    return time.perf_counter() - started, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="where train.py trains: cpu, cuda or cuda:N (sklearn: cpu)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON to this path")
    parser.add_argument("--worker", nargs=2, metavar=("SPLIT_NPZ", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # a fresh process for the sklearn "process" time
        print(json.dumps(sklearn_fit(*args.worker)))
        return
    from benchmarks.common import check_device, write_json  # imports torch: not in the sklearn worker above

    check_device(args.device)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        logdir = Path(tmp)
        # pay the lazy first-use costs (the graph tracer warms up) before timing the in-process runs
        ours_fit("iris", ["--epochs", "1", "--hidden", "4", "--device", args.device], logdir)
        for label, (dataset_name, flags) in OURS.items():
            flags = [*flags, "--device", args.device]
            run_dir = logdir / f"proc-{len(rows)}"
            wall, _ = process_wall([sys.executable, "train.py", "--dataset", dataset_name, *flags, "--quiet",
                                    "--logdir", str(logdir), "--run-name", run_dir.name])  # fmt: skip
            accuracy = json.loads((run_dir / "metrics.json").read_text())["final"]["val_accuracy"]
            fit = ours_fit(dataset_name, flags, logdir)
            assert fit["val_accuracy"] == accuracy  # same seed, same run
            rows.append((dataset_name, label, accuracy, wall, fit["fit_s"]))
        for label, (dataset_name, kind) in SKLEARN.items():
            split_path = save_split(dataset_name, logdir / f"{dataset_name}.npz")
            wall, out = process_wall([sys.executable, __file__, "--worker", str(split_path), kind])
            result = json.loads(out)
            rows.append((dataset_name, label, result["val_accuracy"], wall, sklearn_fit(split_path, kind)["fit_s"]))

    rows.sort(key=lambda row: row[0], reverse=True)
    print("| dataset | model | val accuracy | process wall (s) | fit (s) |")
    print("|---|---|---:|---:|---:|")
    for dataset_name, label, accuracy, wall, fit_s in rows:
        print(f"| {dataset_name} | {label} | {accuracy:.2%} | {wall:.1f} | {fit_s:.2f} |")
    write_json(args.json, {"train_py_device": args.device, "rows": [
        dict(dataset=d, model=label, val_accuracy=a, process_wall_s=w, fit_s=f) for d, label, a, w, f in rows]})


if __name__ == "__main__":
    main()
