"""train.py under torchrun: DistributedDataParallel on gloo (CPU), 2 processes.

- the sharding and the loss scaling that make N processes take a single process's steps
  (unit tests, in this process);
- 2 processes train the same weights as 1, with the same global batch (torchrun);
- two "nodes" (two torchrun agents, one process each) on loopback do too;
- a worker killed with SIGKILL (rank 1 mid-epoch; rank 0 while it writes last.pt):
  torchrun --max-restarts restarts the group, which resumes from last.pt and finishes
  with the weights of an uninterrupted run.

The torchrun runs take about a minute together on 2 CPU cores.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import assert_one_error_line, subprocess_env
import train
from models import build_classifier
from training import distributed
from training.checkpoint import SLOW_WRITE_ENV, WRITING_MARKER

REPO = Path(__file__).resolve().parents[1]
# iris with --val-fraction 0.26: 111 training samples, global batch 10, so 12 steps an epoch.
# 111 is odd: DistributedSampler pads it to 112 (the padding must not be trained on), and the
# last batch holds 1 sample: rank 0 gets it, rank 1 an empty batch.
SETTINGS = ["--dataset", "iris", "--val-fraction", "0.26", "--hidden", "8", "--batch-size", "10", "--threads", "1",
            "--device", "cpu", "--quiet"]  # fmt: skip
SMALL = [*SETTINGS, "--epochs", "3"]
STEPS_PER_EPOCH = 12
TOLERANCE = {"rtol": 0, "atol": 1e-5}
TIMEOUT = 240


def torchrun(*argv: str, launcher: tuple[str, ...] = ("--nproc_per_node=2", "--standalone"),
             environ: dict[str, str] | None = None) -> subprocess.Popen:  # fmt: skip
    """Start `python -m torch.distributed.run … train.py argv` in its own session (so a
    test can end it and all its workers at once)."""
    command = [sys.executable, "-m", "torch.distributed.run", *launcher, str(REPO / "train.py"), *argv]
    return subprocess.Popen(command, env=environ or subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)  # fmt: skip


def finish(process: subprocess.Popen, timeout: float = TIMEOUT) -> str:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"torchrun did not finish in {timeout} s:\n{output[-5000:]}")
    assert process.returncode == 0, output[-5000:]
    return output


def load(run_dir: Path) -> tuple[dict, dict]:
    return torch.load(run_dir / "last.pt", weights_only=True), json.loads((run_dir / "metrics.json").read_text())


def assert_same_training(single: Path, parallel: Path, epochs: int) -> None:
    """Same weights, optimizer state and metrics, up to float rounding (the sums are
    taken in another order)."""
    (a, metrics_a), (b, metrics_b) = load(single), load(parallel)
    assert a["epoch"] == b["epoch"] == epochs and a["global_step"] == b["global_step"]
    for key, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][key], tensor, **TOLERANCE, msg=key)
    for index, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(b["optimizer"]["state"][index][key], value, **TOLERANCE, msg=key)
    assert [entry["epoch"] for entry in metrics_b["history"]] == list(range(1, epochs + 1))
    for entry_a, entry_b in zip(metrics_a["history"], metrics_b["history"], strict=True):
        assert entry_b == pytest.approx(entry_a, rel=1e-5, abs=1e-6)
    assert metrics_b["final"] == metrics_b["history"][-1] and metrics_b["best"]["epoch"] == metrics_a["best"]["epoch"]


def events(run_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def single_process(tmp_path_factory) -> Path:
    """The reference: `python train.py` (in this process), global batch 10."""
    logdir = tmp_path_factory.mktemp("single")
    assert train.main([*SMALL, "--logdir", str(logdir), "--run-name", "one"]) == 0
    assert not torch.distributed.is_initialized()  # a plain run sets up nothing distributed
    return logdir / "one"


# ------------------------------------------------------------------------------ the arithmetic


@pytest.mark.parametrize("samples, batch, world", [(111, 10, 2), (120, 16, 2), (37, 12, 3), (5, 4, 4), (9, 8, 4)])
def test_rank_shards_make_up_the_single_process_batches(samples, batch, world):
    seed, local = 7, batch // world
    for epoch in (1, 2, 5):
        order = torch.randperm(samples, generator=torch.Generator().manual_seed(train.epoch_seed(seed, epoch)))
        shards = [distributed.epoch_shard(samples, train.epoch_seed(seed, 0), epoch, rank, world) for rank in
                  range(world)]  # fmt: skip
        assert sorted(torch.cat(shards).tolist()) == list(range(samples))  # each sample once: no padding
        for step in range(math.ceil(samples / batch)):
            together = torch.cat([shard[step * local : (step + 1) * local] for shard in shards])
            assert sorted(together.tolist()) == sorted(order[step * batch : (step + 1) * batch].tolist())


def test_sampler_seed_plus_epoch_is_the_epoch_seed():
    for seed in (0, 1, 2**32 - 1):
        for epoch in (1, 2, 10_000):
            assert train.epoch_seed(seed, 0) + epoch == train.epoch_seed(seed, epoch)


@pytest.mark.parametrize("model, classes", [("mlp", 3), ("lr", 2)], ids=["cross_entropy", "bce"])
@pytest.mark.parametrize("sizes", [(4, 3), (4, 3, 0), (2, 2, 2, 1)], ids=str)
def test_shares_of_the_mean_loss_average_to_the_global_gradient(model, classes, sizes):
    """DDP averages the ranks' gradients: the shares' average must be the gradient of the
    global batch's mean loss, also when the ranks hold unequal parts (the last batch)."""
    torch.manual_seed(0)
    net = build_classifier(model, 5, classes, [6], "tanh")
    x, y = torch.randn(sum(sizes), 5), torch.randint(0, classes, (sum(sizes),))
    parameters = list(net.parameters())
    expected = torch.autograd.grad(net.loss(net(x), y), parameters)
    world, averaged = len(sizes), [torch.zeros_like(p) for p in parameters]
    for part_x, part_y in zip(x.split(list(sizes)), y.split(list(sizes)), strict=True):
        share = distributed.share_of_mean_loss(net, net(part_x), part_y, len(y), world)
        for total, grad in zip(averaged, torch.autograd.grad(share, parameters), strict=True):
            total += grad / world
    for got, want in zip(averaged, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_launch_is_read_from_torchruns_environment():
    assert distributed.launch_from_env({}) is None  # python train.py
    launch = distributed.launch_from_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2",
                                          "TORCHELASTIC_RESTART_COUNT": "1", "TORCHELASTIC_MAX_RESTARTS": "2",
                                          "TORCHELASTIC_RUN_ID": "job"})  # fmt: skip
    assert launch == distributed.Launch(3, 1, 4, 2, 1, 2, "job")
    assert distributed.rank_device("cpu", launch) == torch.device("cpu")
    if not torch.cuda.is_available():
        assert distributed.rank_device("auto", launch) == torch.device("cpu")


def test_a_restart_recognizes_its_run_by_the_job_id(tmp_path):
    launch = distributed.launch_from_env({"RANK": "0", "WORLD_SIZE": "2", "TORCHELASTIC_MAX_RESTARTS": "2",
                                          "TORCHELASTIC_RUN_ID": "job-1"})  # fmt: skip
    run_dir = tmp_path / "name"
    assert distributed.earlier_attempt(launch, None, str(tmp_path), "name") is None  # no such run yet
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"torchelastic_run_id": "job-0"}))
    assert distributed.earlier_attempt(launch, None, str(tmp_path), "name") is None  # another job's run
    (run_dir / "config.json").write_text(json.dumps({"torchelastic_run_id": "job-1"}))
    assert distributed.earlier_attempt(launch, None, str(tmp_path), "name") == run_dir
    assert distributed.earlier_attempt(launch, str(run_dir / "best.pt"), "runs", None) == run_dir  # --resume
    no_restarts = distributed.Launch(0, 0, 2, 2, 0, 0, "job-1")
    assert distributed.earlier_attempt(no_restarts, None, str(tmp_path), "name") is None


TORCHRUN_ENV = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1", "TORCHELASTIC_RUN_ID": "x"}  # fmt: skip


@pytest.mark.parametrize(
    "argv, extra_env, message",
    [
        (["--batch-size", "15"], {}, r"--batch-size 15 is the global batch and does not split evenly over 2 processes"),
        ([], {"TORCHELASTIC_MAX_RESTARTS": "3"}, r"torchrun --max-restarts=3 needs --run-name"),
    ],
    ids=["indivisible_batch", "restarts_without_run_name"],
)
def test_torchrun_mistakes_are_one_line_errors_before_any_set_up(argv, extra_env, message, tmp_path, monkeypatch,
                                                                 capsys):  # fmt: skip
    for key, value in {**TORCHRUN_ENV, **extra_env}.items():
        monkeypatch.setenv(key, value)
    assert train.main([*SMALL, *argv, "--logdir", str(tmp_path / "runs")]) == 2
    assert message in assert_one_error_line(capsys.readouterr().err)
    assert not torch.distributed.is_initialized() and not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------ torchrun


def test_two_processes_train_the_same_weights_as_one(single_process, tmp_path):
    logdir = tmp_path / "runs"
    output = finish(torchrun(*SMALL, "--logdir", str(logdir), "--run-name", "two"))
    two = logdir / "two"
    assert_same_training(single_process, two, epochs=3)

    # rank 0 alone wrote the run directory: one event file, no stray temporary files
    assert sorted(p.name for p in two.iterdir() if not p.name.startswith("events.")) == [
        "best.pt", "config.json", "last.pt", "metrics.json"]  # fmt: skip
    assert len(list(two.glob("events.out.tfevents.*"))) == 1
    config = json.loads((two / "config.json").read_text())
    assert (config["world_size"], config["backend"], config["batch_size"]) == (2, "gloo", 10)
    assert "error" not in output.lower()

    # TensorBoard: each step once, with the global batch's mean loss; the diagnostics of the
    # whole training split (each rank measured its shard)
    one, parallel = events(single_process), events(two)
    assert [e.step for e in parallel.Scalars("train/loss_step")] == list(range(1, 3 * STEPS_PER_EPOCH + 1))
    for tag in ("train/loss_step", "val/loss", "grad_norm/layer1", "diagnostics/layer1/relu_zero_grad_fraction",
                "diagnostics/layer1/relu_dead_fraction"):  # fmt: skip
        got, want = [e.value for e in parallel.Scalars(tag)], [e.value for e in one.Scalars(tag)]
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6), tag


def test_two_processes_resume_a_single_process_checkpoint(single_process, tmp_path):
    """--batch-size is the global batch: a run may go on with another number of processes."""
    logdir = tmp_path / "runs"
    assert train.main([*SETTINGS, "--epochs", "2", "--logdir", str(logdir), "--run-name", "r"]) == 0
    finish(torchrun("--resume", str(logdir / "r" / "last.pt"), "--epochs", "3", "--quiet"))
    assert_same_training(single_process, logdir / "r", epochs=3)
    assert json.loads((logdir / "r" / "config.json").read_text())["resumed_from_epoch"] == 2


def test_two_nodes_on_loopback(single_process, tmp_path):
    """The multi-node command, both "nodes" on this machine: two torchrun agents with one
    process each meet at a c10d rendezvous endpoint."""
    logdir, port = tmp_path / "runs", free_port()
    launcher = ("--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
                f"--rdzv-id=test-{uuid.uuid4().hex[:8]}")  # fmt: skip
    nodes = [torchrun(*SMALL, "--logdir", str(logdir), "--run-name", "nodes", launcher=launcher) for _ in range(2)]
    for node in nodes:
        finish(node)
    assert_same_training(single_process, logdir / "nodes", epochs=3)
    assert json.loads((logdir / "nodes" / "config.json").read_text())["world_size"] == 2


def workers(token: str) -> dict[int, dict[str, str]]:
    """The torchrun workers started with KILL_TEST_TOKEN=token: pid -> environment."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "environ").read_bytes().decode(errors="replace")
        except OSError:  # gone, or not ours
            continue
        environ = dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)
        if environ.get("KILL_TEST_TOKEN") == token and "RANK" in environ:
            found[int(entry.name)] = environ
    return found


def rank1_mid_epoch(run_dir: Path, token: str) -> int | None:
    """Rank 1 once two epochs are done, wherever it is in the third."""
    try:
        done = len(json.loads((run_dir / "metrics.json").read_text())["history"])
    except (OSError, ValueError):
        return None
    return next((pid for pid, environ in workers(token).items() if environ["RANK"] == "1"), None) if done >= 2 else None


def rank0_writing_a_checkpoint(run_dir: Path, token: str) -> int | None:
    """Rank 0 while it writes epoch 2's last.pt: the temporary file is whole, not yet renamed."""
    try:
        pid, epoch, name = (run_dir / WRITING_MARKER).read_text().split()
    except (OSError, ValueError):
        return None
    if int(epoch) < 2 or name != "last.pt" or workers(token).get(int(pid), {}).get("RANK") != "0":
        return None
    return int(pid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the workers' pids in /proc")
@pytest.mark.parametrize(
    "victim, extra_env",
    [(rank1_mid_epoch, {}), (rank0_writing_a_checkpoint, {SLOW_WRITE_ENV: "0.3"})],
    ids=["rank1_mid_epoch", "rank0_writing_last_pt"],
)
def test_a_killed_worker_is_restarted_and_the_run_resumes_from_its_checkpoint(victim, extra_env, tmp_path):
    epochs = 10
    argv = ["--dataset", "digits", "--hidden", "32", "--batch-size", "32", "--epochs", str(epochs), "--threads", "1",
            "--device", "cpu", "--quiet", "--logdir", str(tmp_path / "runs"), "--run-name", "k"]  # fmt: skip
    assert train.main([*argv[:-4], "--logdir", str(tmp_path / "straight"), "--run-name", "k"]) == 0
    token = uuid.uuid4().hex
    process = torchrun(*argv, launcher=("--nproc_per_node=2", "--standalone", "--max-restarts=2"),
                       environ=subprocess_env(KILL_TEST_TOKEN=token, **extra_env))  # fmt: skip
    run_dir, killed, deadline = tmp_path / "runs" / "k", None, time.monotonic() + TIMEOUT
    while killed is None and process.poll() is None and time.monotonic() < deadline:
        pid = victim(run_dir, token)
        if pid is not None and workers(token).get(pid, {}).get("TORCHELASTIC_RESTART_COUNT") == "0":
            os.kill(pid, signal.SIGKILL)  # once, in torchrun's first attempt
            killed = pid
        time.sleep(0.005)
    output = finish(process, timeout=max(deadline - time.monotonic(), 1))
    assert killed is not None, f"the run ended before a worker could be killed:\n{output}"

    # the restarted group resumed from last.pt and finished: a full metrics.json, whole checkpoints
    config = json.loads((run_dir / "config.json").read_text())
    assert config["resumed_from_epoch"] is not None and config["resumed_from_epoch"] >= 1
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [entry["epoch"] for entry in metrics["history"]] == list(range(1, epochs + 1))
    assert metrics["final"] == metrics["history"][-1]
    for name in ("last.pt", "best.pt"):
        train.load_checkpoint(run_dir / name)  # loads with weights_only, and has every entry
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".")]  # no temporary file left
    logged = [e.step for e in events(run_dir).Scalars("val/accuracy")]
    if victim is rank1_mid_epoch:
        assert logged == list(range(1, epochs + 1))
    else:  # rank 0 had logged the epoch whose last.pt it was writing: the resumed run logs it again
        assert sorted(set(logged)) == list(range(1, epochs + 1)) and len(logged) <= epochs + 1
    # and it is the run that nothing interrupted
    assert_same_training(tmp_path / "straight" / "k", run_dir, epochs=epochs)
