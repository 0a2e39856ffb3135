"""train.py and training/: end-to-end runs, TensorBoard output, checkpoints and resume,
data readers, and every kind of bad input."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import REPO, assert_one_error_line, subprocess_env
import train
from training import (
    UserError,
    create_run_dir,
    load_dataset,
    read_csv,
    read_idx,
    split_and_standardize,
)

# small and quick: iris (150 samples), a tiny MLP, one thread, the CPU (bitwise-reproducible)
FAST = ["--dataset", "iris", "--hidden", "8", "--batch-size", "16", "--threads", "1", "--quiet", "--device", "cpu"]
EPOCH_TAGS = ["train/loss", "train/accuracy", "val/loss", "val/accuracy", "train/learning_rate"]


def run(tmp_path: Path, *argv: str) -> int:
    return train.main([*FAST, "--logdir", str(tmp_path / "runs"), *argv])


def read_events(run_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    events.Reload()
    return events


def steps(events: EventAccumulator, tag: str) -> list[int]:
    return [event.step for event in events.Scalars(tag)]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under folder, by content: to show that nothing was touched."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


# ------------------------------------------------------------------------------ end to end


def test_end_to_end_subprocess_writes_event_files_metrics_and_checkpoints(tmp_path):
    logdir = tmp_path / "runs"
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--dataset", "iris", "--hidden", "8,6", "--activation", "sigmoid",
         "--batch-size", "16", "--epochs", "3", "--threads", "1", "--logdir", str(logdir), "--run-name", "e2e",
         "--metrics-format", "10601", "--device", "cpu"],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    run_dir = logdir / "e2e"
    # not a terminal: no progress bar, one summary line per epoch
    epoch_lines = [line for line in result.stdout.splitlines() if line.startswith("epoch")]
    assert len(epoch_lines) == 3 and "val loss" in epoch_lines[0]
    assert "\r" not in result.stderr
    assert {"config.json", "metrics.json", "last.pt", "best.pt", "metrics_10601.txt"} <= {
        p.name for p in run_dir.iterdir()
    }
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]  # no temp files left behind

    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = metrics["history"]
    keys = {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy"}
    assert [entry["epoch"] for entry in history] == [1, 2, 3] and all(set(e) == keys for e in history)
    assert metrics["final"] == history[-1]
    assert metrics["best"]["val_accuracy"] == max(entry["val_accuracy"] for entry in history)

    config = json.loads((run_dir / "config.json").read_text())
    assert config["torch_version"] == torch.__version__ and config["device_used"] == "cpu"
    assert config["hidden"] == [8, 6] and config["epochs"] == 3 and config["run_name"] == "e2e"
    assert set(train.CONFIG_KEYS) <= set(config)

    events = read_events(run_dir)
    tags = events.Tags()
    for tag in EPOCH_TAGS:
        assert steps(events, tag) == [1, 2, 3], tag
    for split in ("train", "val"):
        logged = [event.value for event in events.Scalars(f"{split}/loss")]
        assert logged == pytest.approx([entry[f"{split}_loss"] for entry in history], rel=1e-6)
    steps_per_epoch = math.ceil(120 / 16)  # iris: 150 samples, 120 for training
    assert steps(events, "train/loss_step") == list(range(1, 3 * steps_per_epoch + 1))
    for layer in ("layer1", "layer2"):
        assert steps(events, f"diagnostics/{layer}/sigmoid_mean_derivative") == [1, 2, 3]
        assert all(0 < e.value <= 0.25 for e in events.Scalars(f"diagnostics/{layer}/sigmoid_mean_derivative"))
    for layer in ("layer1", "layer2", "layer3"):
        assert steps(events, f"grad_norm/{layer}") == [1, 2, 3]
    for name in ("layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.4.bias"):
        assert f"parameters/{name}" in tags["histograms"] and f"gradients/{name}" in tags["histograms"]
        assert [event.step for event in events.Histograms(f"parameters/{name}")] == [1, 2, 3]
    assert tags["graph"]
    assert set(events.PluginTagToContent("hparams")) == {
        "_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info",
    }  # fmt: skip
    assert events.Scalars("hparams/final_val_accuracy")[-1].value == pytest.approx(history[-1]["val_accuracy"])

    lines = (run_dir / "metrics_10601.txt").read_text().splitlines()
    assert lines[0] == f"epoch=1 crossentropy(train): {history[0]['train_loss']}"
    assert lines[1] == f"epoch=1 crossentropy(validation): {history[0]['val_loss']}"
    assert len(lines) == 2 * 3 + 2
    assert re.fullmatch(r"error\(train\): [0-9.]+", lines[-2])
    assert float(lines[-1].split(": ")[1]) == pytest.approx(1 - history[-1]["val_accuracy"])


def test_a_run_imports_neither_torch_dynamo_nor_sympy(tmp_path):
    # the two imports that made a fresh `python train.py` 1.8x slower than it is now:
    # torch.optim's first use imports torch._dynamo; add_graph's trace check imports sympy
    argv = [*FAST, "--epochs", "1", "--logdir", str(tmp_path)]
    code = (
        "import sys, train\n"
        "for optimizer in ('adam', 'sgd'):\n"
        f"    assert train.main({argv!r} + ['--optimizer', optimizer]) == 0\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sympy' or m.startswith('torch._dynamo')))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=subprocess_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[-2] == "[]"


def test_logged_graph_is_add_graphs_own_traced_without_the_check():
    from torch.utils.tensorboard._pytorch_graph import graph

    from models import MLP
    from training.logging import trace_for_graph

    model, x = MLP(4, (8, 6), 3, "sigmoid"), torch.randn(2, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logged, reference = graph(trace_for_graph(model, x), x)[0], graph(model, x)[0]
    assert logged == reference and len(logged.node) > 8
    assert model.training  # traced in eval mode, as add_graph does, and put back


def test_relu_and_tanh_diagnostics_are_logged(tmp_path):
    assert run(tmp_path, "--activation", "relu", "--epochs", "2", "--run-name", "relu") == 0
    assert run(tmp_path, "--activation", "tanh", "--epochs", "1", "--run-name", "tanh") == 0
    relu = read_events(tmp_path / "runs" / "relu")
    for tag in ("diagnostics/layer1/relu_zero_grad_fraction", "diagnostics/layer1/relu_dead_fraction"):
        values = [event.value for event in relu.Scalars(tag)]
        assert len(values) == 2 and all(0 <= v <= 1 for v in values)
    tanh = read_events(tmp_path / "runs" / "tanh")
    assert 0 < tanh.Scalars("diagnostics/layer1/tanh_mean_derivative")[0].value <= 1


def test_dead_relu_fraction_counts_units_that_never_fire():
    from models import MLP
    from training import ActivationMonitor

    model = MLP(2, [4], 2, "relu")
    with torch.no_grad():
        model.layers[0].weight.zero_()
        model.layers[0].bias.copy_(torch.tensor([-1.0, -1.0, 1.0, 1.0]))  # units 1, 2 never fire
    monitor = ActivationMonitor(model)
    with monitor.recording():
        model(torch.randn(10, 2))
    stats = monitor.summary()
    assert stats["layer1/relu_dead_fraction"] == 0.5
    assert stats["layer1/relu_zero_grad_fraction"] == 0.5


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_combined_shard_statistics_are_those_of_the_whole_batch(activation):
    """What each rank of a torchrun job does (Group.all_reduce_activation_stats), with the
    all-reduce played by hand: rank 1's tensors are added to (or maxed with) rank 0's."""
    from models import MLP
    from training import ActivationMonitor

    torch.manual_seed(0)
    model = MLP(3, [6, 5], 2, activation)
    with torch.no_grad():
        model.layers[0].bias[:2] = -10.0  # dead on both shards
        model.layers[0].bias[2] = 10.0
    x = torch.randn(12, 3)
    x[:7, 0] = 5.0  # the shards differ, and are of unequal sizes
    whole, rank0, rank1 = (ActivationMonitor(model) for _ in range(3))
    for monitor, batch in ((whole, x), (rank0, x[:7]), (rank1, x[7:])):
        with monitor.recording():
            model(batch)
    rank1_tensors: list[torch.Tensor] = []

    def keep(tensor: torch.Tensor) -> torch.Tensor:  # rank 1's side of each all-reduce
        rank1_tensors.append(tensor)
        return tensor

    rank1.combine(add_up=keep, any_of=keep)
    rank0.combine(add_up=lambda t: t + rank1_tensors.pop(0), any_of=lambda t: torch.maximum(t, rank1_tensors.pop(0)))
    assert not rank1_tensors
    assert rank0.summary() == pytest.approx(whole.summary(), rel=1e-6)  # each shard sums in float32
    assert rank0.summary().keys() == whole.summary().keys()


def test_logistic_regression_binary_and_zero_init_train(tmp_path, capsys):
    code = train.main(["--model", "lr", "--dataset", "breast_cancer", "--epochs", "2", "--init", "zero",
                       "--threads", "1", "--logdir", str(tmp_path), "--run-name", "lr"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "lr 30-2" in out and out.count("\nepoch") + out.startswith("epoch") == 2
    history = json.loads((tmp_path / "lr" / "metrics.json").read_text())["history"]
    assert history[-1]["val_accuracy"] > 0.85
    assert "diagnostics/layer1/relu_dead_fraction" not in read_events(tmp_path / "lr").Tags()["scalars"]


def test_quiet_prints_nothing(tmp_path, capsys):
    assert run(tmp_path, "--epochs", "1") == 0
    assert capsys.readouterr() == ("", "")


def test_checkpoint_loads_with_weights_only(tmp_path):
    assert run(tmp_path, "--epochs", "1", "--run-name", "ckpt") == 0
    checkpoint = torch.load(tmp_path / "runs" / "ckpt" / "last.pt", weights_only=True)
    assert checkpoint["format"] == train.CHECKPOINT_FORMAT and checkpoint["epoch"] == 1
    assert {"model", "optimizer", "rng", "config", "history", "best", "data"} <= set(checkpoint)
    assert isinstance(checkpoint["rng"]["torch"], torch.Tensor)
    assert checkpoint["config"]["hidden"] == [8]


def test_auto_run_names_never_collide(tmp_path):
    assert run(tmp_path, "--epochs", "1") == 0
    assert run(tmp_path, "--epochs", "1") == 0
    names = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(names) == 2 and "mlp8-relu-iris-adam" in names[0]
    # same second, same settings: the second gets a suffix
    first = create_run_dir(tmp_path / "x", "name", auto_named=True)
    second = create_run_dir(tmp_path / "x", "name", auto_named=True)
    assert (first.name, second.name) == ("name", "name-2")
    with pytest.raises(UserError, match="already exists"):
        create_run_dir(tmp_path / "x", "name", auto_named=False)


# ------------------------------------------------------------------------------ resume


def final_state(run_dir: Path) -> tuple[dict, list]:
    checkpoint = torch.load(run_dir / "last.pt", weights_only=True)
    return checkpoint, json.loads((run_dir / "metrics.json").read_text())


def assert_same_training(straight: Path, resumed: Path) -> None:
    a, metrics_a = final_state(straight)
    b, metrics_b = final_state(resumed)
    assert a["epoch"] == b["epoch"] == 4 and a["global_step"] == b["global_step"]
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    for index, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][index][key]), key
    assert metrics_a == metrics_b


def test_resume_equals_uninterrupted_run(tmp_path):
    args = ["--optimizer", "adam", "--seed", "7"]
    assert run(tmp_path, *args, "--epochs", "4", "--run-name", "straight") == 0
    assert run(tmp_path, *args, "--epochs", "2", "--run-name", "resumed") == 0
    resumed = tmp_path / "runs" / "resumed"
    assert train.main(["--resume", str(resumed / "last.pt"), "--epochs", "4", "--threads", "1", "--quiet"]) == 0
    assert_same_training(tmp_path / "runs" / "straight", resumed)
    assert json.loads((resumed / "config.json").read_text())["resumed_from_epoch"] == 2
    # TensorBoard sees each epoch and each step once, across both event files
    events = read_events(resumed)
    assert steps(events, "val/accuracy") == [1, 2, 3, 4]
    assert steps(events, "train/loss_step") == list(range(1, 4 * math.ceil(120 / 16) + 1))


def test_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch, capsys):
    assert run(tmp_path, "--epochs", "4", "--run-name", "straight", "--optimizer", "sgd") == 0
    real_evaluate, calls = train.evaluate, []

    def interrupt_in_epoch_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # epochs 1, 2 each evaluate twice; the 5th call is in epoch 3
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train, "evaluate", interrupt_in_epoch_3)
    assert run(tmp_path, "--epochs", "4", "--run-name", "cut", "--optimizer", "sgd") == 130
    assert "--resume" in capsys.readouterr().err
    cut = tmp_path / "runs" / "cut"
    assert torch.load(cut / "last.pt", weights_only=True)["epoch"] == 2
    monkeypatch.setattr(train, "evaluate", real_evaluate)
    assert (
        train.main(["--resume", str(cut / "last.pt"), "--threads", "1", "--quiet"]) == 0
    )  # --epochs from the checkpoint
    assert_same_training(tmp_path / "runs" / "straight", cut)


# ------------------------------------------------------------------------------ data


def test_csv_reader_header_labels_and_blank_lines(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("label,a,b\n7,1.0,2\n\n3,0.5,-1e-3\n7,2,2\n5,0,0\n")
    dataset = read_csv(path)
    assert dataset.features.tolist() == [[1.0, 2.0], [0.5, -0.001], [2.0, 2.0], [0.0, 0.0]]
    assert dataset.labels.tolist() == [2, 0, 2, 1] and dataset.class_names == ["3", "5", "7"]
    no_header = tmp_path / "plain.csv"
    no_header.write_text("1,0.5\n0,0.25\n1.0,3\n")
    assert read_csv(no_header).labels.tolist() == [1, 0, 1]  # 1.0 is the integer 1


def test_csv_dataset_trains_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.standard_normal((60, 3))
    labels = (features[:, 0] > 0).astype(int)
    path = tmp_path / "hw.csv"
    path.write_text(
        "".join(
            f"{label}," + ",".join(f"{v:.6f}" for v in row) + "\n" for label, row in zip(labels, features, strict=True)
        )
    )
    assert train.main(["--dataset", str(path), "--epochs", "2", "--threads", "1", "--quiet", "--logdir",
                       str(tmp_path / "runs"), "--run-name", "csv"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "runs" / "csv" / "config.json").read_text())["dataset"] == str(path)


def test_split_is_stratified_reproducible_and_standardized_on_train_only():
    dataset = load_dataset("wine")
    a, b = split_and_standardize(dataset, 0.2, seed=3), split_and_standardize(dataset, 0.2, seed=3)
    assert np.array_equal(a.x_val, b.x_val) and np.array_equal(a.y_train, b.y_train)
    c = split_and_standardize(dataset, 0.2, seed=4)
    assert not np.array_equal(a.y_val, c.y_val) or not np.array_equal(a.x_val, c.x_val)
    assert len(a.y_val) == math.ceil(0.2 * len(dataset.labels))
    share = np.bincount(dataset.labels) / len(dataset.labels)
    assert np.allclose(np.bincount(a.y_val) / len(a.y_val), share, atol=0.03)
    assert np.allclose(a.x_train.mean(0), 0, atol=1e-5) and np.allclose(a.x_train.std(0), 1, atol=1e-4)
    assert not np.allclose(a.x_val.mean(0), 0, atol=1e-5)  # val used the training statistics


def test_constant_features_do_not_divide_by_zero():
    split = split_and_standardize(load_dataset("digits"), 0.2, seed=0)  # digits has all-zero pixels
    assert np.isfinite(split.x_train).all() and np.isfinite(split.x_val).all()


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    codes = {np.dtype("uint8"): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    data = header + array.tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


@pytest.mark.parametrize("compress", [True, False], ids=["gzipped", "plain"])
def test_idx_reader_and_mnist_loader(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 4, 4), dtype=np.uint8)
    labels = np.repeat(np.arange(4, dtype=np.uint8), 10)
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images, compress)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels, compress)
    assert np.array_equal(read_idx(tmp_path / f"train-images-idx3-ubyte{suffix}"), images)
    floats = rng.standard_normal((3, 2)).astype(">f4")
    write_idx(tmp_path / "floats.idx", floats, compress)
    assert np.array_equal(read_idx(tmp_path / "floats.idx"), floats)

    dataset = load_dataset("mnist", tmp_path)
    assert dataset.features.shape == (40, 16) and dataset.num_classes == 4
    assert train.main(["--dataset", "mnist", "--data-dir", str(tmp_path), "--epochs", "1", "--threads", "1",
                       "--quiet", "--logdir", str(tmp_path / "runs")]) == 0  # fmt: skip


def test_idx_reader_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01\x00\x00\x00\x01\x00")
    with pytest.raises(UserError, match="bad magic number"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", np.zeros((10, 3), np.uint8), compress=False)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-5])
    with pytest.raises(UserError, match="header promises"):
        read_idx(tmp_path / "short")


# ------------------------------------------------------------------------------ bad input


@pytest.fixture(scope="module")
def existing_run(tmp_path_factory):
    """A finished run in a logdir: bad input must leave it exactly as it is."""
    logdir = tmp_path_factory.mktemp("logdir")
    assert train.main([*FAST, "--epochs", "2", "--logdir", str(logdir), "--run-name", "kept"]) == 0
    return logdir


def write(tmp_path: Path, name: str, content: str | bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


BAD_CSV = {
    "non_numeric": ("1,2,3\n0,abc,1\n", r"line 2, column 2: 'abc' is not a number"),
    "nan": ("1,2,3\n0,nan,1\n", r"line 2, column 2: nan is not a finite number"),
    "empty_cell": ("1,2,3\n0,,1\n", r"line 2, column 2 is empty"),
    "ragged": ("1,2,3\n0,1\n", r"line 2 has 2 columns, but the first row has 3"),
    "single_class": ("1,2,3\n1,4,5\n1,0,0\n", r"same label \(1\)"),
    "empty": ("", r"is empty"),
    "header_only": ("label,x\n", r"header but no data rows"),
    "float_labels": ("1,2\n0.5,3\n", r"line 2: label 0.5 is not an integer"),
    "string_labels": ("label,x\ncat,1\ndog,2\n", r"line 2: label 'cat' is not an integer"),
    "label_only": ("1\n0\n", r"single column"),
    "binary": (b"\xff\xfe\x00\x01", r"not valid UTF-8"),
}


@pytest.mark.parametrize("case", sorted(BAD_CSV))
def test_bad_csv_exits_with_one_line(case, tmp_path, existing_run, capsys):
    content, message = BAD_CSV[case]
    path = write(tmp_path, f"{case}.csv", content)
    expect_user_error(["--dataset", path], message, existing_run, capsys)


def expect_user_error(argv: list[str], message: str, logdir: Path, capsys) -> None:
    before = snapshot(logdir)
    code = train.main([*argv, "--logdir", str(logdir)] if "--resume" not in argv else argv)
    captured = capsys.readouterr()
    assert code == 2
    assert_one_error_line(captured.err, message)
    assert captured.out == ""
    assert snapshot(logdir) == before


BAD_FLAGS = {
    "unknown_dataset": (["--dataset", "imagenet"], r"unknown dataset 'imagenet'"),
    "missing_csv": (["--dataset", "nowhere/data.csv"], r"CSV file nowhere/data.csv not found"),
    "zero_epochs": (["--epochs", "0"], r"--epochs: must be a positive integer"),
    "negative_batch": (["--batch-size", "-4"], r"--batch-size: must be a positive integer"),
    "zero_lr": (["--lr", "0"], r"--lr: must be a positive number"),
    "nan_lr": (["--lr", "nan"], r"--lr: must be a positive number"),
    "text_epochs": (["--epochs", "ten"], r"expected a positive integer"),
    "bad_hidden": (["--hidden", "64,x"], r"--hidden: expected comma-separated layer sizes"),
    "bad_device": (["--device", "tpu"], r"--device: expected auto, cpu, cuda or cuda:N"),
    "unknown_flag": (["--colour"], r"unrecognized arguments: --colour"),
    "bad_choice": (["--model", "svm"], r"--model: invalid choice"),
    "hidden_for_lr": (["--model", "lr", "--hidden", "4"], r"--hidden and --activation apply to --model mlp only"),
    "run_name_path": (["--run-name", "../escape"], r"not a plain directory name"),
    "run_name_taken": (["--run-name", "kept"], r"already exists"),
    "val_fraction": (["--val-fraction", "1.5"], r"between 0 and 1"),
    "mnist_missing": (["--dataset", "mnist", "--data-dir", "/nonexistent/mnist"],
                      r"MNIST files not found in /nonexistent/mnist/: put train-images-idx3-ubyte.gz and "
                      r"train-labels-idx1-ubyte.gz"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_FLAGS))
def test_bad_flags_exit_with_one_line(case, existing_run, capsys):
    argv, message = BAD_FLAGS[case]
    expect_user_error([*FAST, "--epochs", "1", *argv], message, existing_run, capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_gpu_is_a_user_error(existing_run, capsys):
    expect_user_error([*FAST, "--device", "cuda"], r"--device cuda: no CUDA GPU is available", existing_run, capsys)
    expect_user_error([*FAST, "--device", "cuda:1"], r"no CUDA GPU", existing_run, capsys)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_run_stays_on_the_gpu(tmp_path):
    assert run(tmp_path, "--device", "cuda", "--epochs", "2", "--run-name", "gpu") == 0
    config = json.loads((tmp_path / "runs" / "gpu" / "config.json").read_text())
    assert config["device_used"].startswith("cuda")
    checkpoint = torch.load(tmp_path / "runs" / "gpu" / "last.pt", weights_only=True, map_location="cpu")
    assert checkpoint["rng"]["cuda"]
    # a CUDA checkpoint resumes (on the GPU or, with --device cpu, on the CPU)
    assert train.main(["--resume", str(tmp_path / "runs" / "gpu" / "last.pt"), "--epochs", "3", "--quiet"]) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_device_index_out_of_range(existing_run, capsys):
    index = torch.cuda.device_count()
    expect_user_error([*FAST, "--device", f"cuda:{index}"], rf"there is no GPU {index}", existing_run, capsys)


def resume_case(existing_run: Path, tmp_path: Path, case: str) -> tuple[list[str], str]:
    last = existing_run / "kept" / "last.pt"
    if case == "missing":
        return ["--resume", str(tmp_path / "none.pt")], r"checkpoint .*none.pt not found"
    if case == "corrupt":
        path = tmp_path / "corrupt.pt"
        path.write_bytes(last.read_bytes()[:2000])
        return ["--resume", str(path)], r"is corrupt or not a PyTorch file"
    if case == "garbage":
        return ["--resume", write(tmp_path, "garbage.pt", b"not a checkpoint at all")], r"is corrupt"
    if case == "foreign":
        torch.save({"weight": torch.zeros(3)}, tmp_path / "foreign.pt")
        return ["--resume", str(tmp_path / "foreign.pt")], r"is not a checkpoint written by train.py"
    if case == "pickle":
        torch.save({"format": train.CHECKPOINT_FORMAT, "object": Path("x")}, tmp_path / "pickle.pt")
        return ["--resume", str(tmp_path / "pickle.pt")], r"loading it is refused"
    if case == "shape":
        checkpoint = torch.load(last, weights_only=True)
        checkpoint["config"]["hidden"] = [16]  # the weights are still those of --hidden 8
        torch.save(checkpoint, tmp_path / "shape.pt")
        return ["--resume", str(tmp_path / "shape.pt")], r"holds a model of another shape: layers.0.weight is \(8, 4\)"
    if case == "damaged":
        checkpoint = torch.load(last, weights_only=True)
        del checkpoint["optimizer"]
        torch.save(checkpoint, tmp_path / "damaged.pt")
        return ["--resume", str(tmp_path / "damaged.pt")], r"'optimizer' entry is missing"
    if case == "optimizer_state":
        checkpoint = torch.load(last, weights_only=True)
        checkpoint["optimizer"]["state"][0]["exp_avg"] = torch.zeros(3, 3)
        torch.save(checkpoint, tmp_path / "optimizer_state.pt")
        return ["--resume", str(tmp_path / "optimizer_state.pt")], (
            r"optimizer state that does not fit: the state dict's exp_avg has shape \(3, 3\), its parameter \(8, 4\)"
        )
    if case == "bad_config":
        checkpoint = torch.load(last, weights_only=True)
        checkpoint["config"]["batch_size"] = "many"
        torch.save(checkpoint, tmp_path / "bad_config.pt")
        return ["--resume", str(tmp_path / "bad_config.pt")], r"damaged: its config does not hold valid settings"
    if case == "conflict":
        return ["--resume", str(last), "--lr", "0.5"], r"--lr 0.5 differs from the checkpoint's 0.003"
    if case == "done":
        return ["--resume", str(last), "--epochs", "2"], r"has trained 2 epochs already: pass --epochs N with N > 2"
    if case == "run_name":
        return ["--resume", str(last), "--run-name", "other"], r"cannot be combined with --resume"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "corrupt",
        "garbage",
        "foreign",
        "pickle",
        "shape",
        "damaged",
        "optimizer_state",
        "bad_config",
        "conflict",
        "done",
        "run_name",
    ],
)
def test_bad_resume_exits_with_one_line(case, existing_run, tmp_path, capsys):
    argv, message = resume_case(existing_run, tmp_path, case)
    expect_user_error([*argv, "--threads", "1"], message, existing_run, capsys)


def test_resume_refuses_changed_data(tmp_path, capsys):
    path = tmp_path / "data.csv"
    path.write_text("".join(f"{i % 2},{i},{i * i % 7}\n" for i in range(40)))
    logdir = tmp_path / "runs"
    assert train.main([*FAST, "--dataset", str(path), "--epochs", "1", "--logdir", str(logdir), "--run-name", "a"]) == 0
    path.write_text("".join(f"{i % 2},{i},{i * i % 5}\n" for i in range(40)))
    expect_user_error(["--resume", str(logdir / "a" / "last.pt"), "--epochs", "2"], r"is not the data checkpoint",
                      logdir, capsys)  # fmt: skip


def test_bad_input_in_a_subprocess_prints_one_line_and_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--dataset", "nope", "--logdir", str(tmp_path / "runs")],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert (
        result.stderr == "error: unknown dataset 'nope': use one of digits, breast_cancer, iris, wine, mnist, "
        "or the path to a CSV file\n"
    )
    assert not (tmp_path / "runs").exists()
