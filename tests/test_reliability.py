"""Reliability and security of train.py: crash safety under SIGKILL, a full disk or an
unwritable run directory, a diverging run (NaN/Inf), planted pickles and mismatched
checkpoints, two runs racing for one run directory.

The kill test runs train.py as a subprocess and kills it with SIGKILL at points drawn
from a fixed seed: inside an epoch, while a checkpoint is being written (the
CUSTOM_OPS_TEST_SLOW_CHECKPOINT_WRITE hook of training/checkpoint.py holds the write
open), at a random instant. After every kill the last checkpoint must load, hold every
epoch the process reported finished, and the run must resume; the final weights must
equal an uninterrupted run's, bit for bit.
"""

from __future__ import annotations

import errno
import json
import math
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import assert_one_error_line, subprocess_env
import train
from training import UserError, create_run_dir, load_checkpoint
from training import checkpoint as checkpoint_module
from training.checkpoint import SLOW_WRITE_ENV, TEMP_INFIX, WRITING_MARKER, atomic_write

REPO = Path(__file__).resolve().parents[1]
FAST = ["--dataset", "iris", "--hidden", "8", "--batch-size", "16", "--threads", "1", "--quiet", "--device", "cpu"]


def temp_files(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir() if TEMP_INFIX in p.name)


def assert_same_state(a: dict, b: dict) -> None:
    """Two checkpoints hold the same training state, tensor for tensor, bit for bit."""
    assert (a["epoch"], a["global_step"], a["history"], a["best"]) == (b["epoch"], b["global_step"], b["history"],
                                                                        b["best"])  # fmt: skip
    assert a["model"].keys() == b["model"].keys()
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    for index, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["optimizer"]["state"][index][key])), key
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])


# ------------------------------------------------------------------------------ SIGKILL


class TrainProcess:
    """train.py in a subprocess; its stdout lines are collected as they come."""

    def __init__(self, argv: list[str], cwd: Path, slow_write: float | None = None) -> None:
        extra = {SLOW_WRITE_ENV: str(slow_write)} if slow_write else {}
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "train.py"), *argv], cwd=cwd, env=subprocess_env(**extra),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self.times: list[float] = []  # when each line arrived
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.times.append(time.monotonic())
            self.lines.append(line)

    def wait_until(self, condition, what: str, limit: float = 180) -> bool:
        """Poll condition(); False if the process ended first. The limit only guards against a hang."""
        deadline = time.monotonic() + limit
        while not condition():
            if self.proc.poll() is not None:
                return False
            assert time.monotonic() < deadline, f"waited {limit} s for {what}"
            time.sleep(0.002)
        return True

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.finish()

    def finish(self) -> int:
        code = self.proc.wait(timeout=300)
        self.reader.join(timeout=60)
        self.stderr = self.proc.stderr.read()
        self.proc.stderr.close()
        return code


KILL_ARGS = ["--dataset", "digits", "--hidden", "16", "--batch-size", "16", "--threads", "1", "--device", "cpu",
             "--seed", "3"]  # fmt: skip
KILL_EPOCHS = 24  # a kill advances the run by at most 3 epochs: 6 kills always fit
KILL_KINDS = ("during the checkpoint write", "inside an epoch", "at a random instant")
KILLS = 6  # kill points per test run; each costs a train.py process (~3 s of imports here)
SLOW_WRITE_SECONDS = 0.5


def kill_plan(seed: int) -> list[str]:
    """Each kind twice, in an order drawn from the seed; the first kill comes after an
    epoch is saved (a run killed before its first checkpoint has nothing to resume)."""
    rng = random.Random(seed)
    kinds = [*KILL_KINDS, *KILL_KINDS]
    rng.shuffle(kinds)
    if kinds[0] == "at a random instant":
        kinds[0], kinds[1] = kinds[1], kinds[0]
    return kinds[:KILLS]


def test_sigkill_at_random_points_loses_no_epoch_and_resumes_bit_exact(tmp_path, capsys):
    rng = random.Random(1234)
    logdir = tmp_path / "runs"
    run_dir, last = logdir / "killed", logdir / "killed" / "last.pt"
    landed: list[str] = []  # where each kill came, for the failure message
    processes: list[TrainProcess] = []
    try:
        kill_at_random_points(rng, tmp_path, logdir, processes, landed)
    finally:  # a failed assertion leaves no train.py running
        for process in processes:
            if process.proc.poll() is None:
                process.kill()

    assert len(landed) == KILLS, landed
    print(*landed, sep="\n")  # shown with pytest -rA

    # resume to the end, in-process; then the same run uninterrupted
    assert train.main(["--resume", str(last), "--threads", "1", "--quiet"]) == 0, (capsys.readouterr().err, landed)
    assert train.main([*KILL_ARGS, "--epochs", str(KILL_EPOCHS), "--logdir", str(logdir), "--run-name", "straight",
                       "--quiet"]) == 0  # fmt: skip
    straight = logdir / "straight"
    assert_same_state(torch.load(last, weights_only=True), torch.load(straight / "last.pt", weights_only=True))
    assert_same_state(torch.load(run_dir / "best.pt", weights_only=True),
                      torch.load(straight / "best.pt", weights_only=True))  # fmt: skip
    assert json.loads((run_dir / "metrics.json").read_text()) == json.loads((straight / "metrics.json").read_text())
    assert temp_files(run_dir) == [] and not (run_dir / WRITING_MARKER).exists()
    # TensorBoard has every epoch; an epoch logged by a process killed before its checkpoint
    # was redone on resume and may show twice, with the same value (the redo is bit-exact)
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    history = torch.load(last, weights_only=True)["history"]
    logged = events.Scalars("val/accuracy")
    assert sorted({event.step for event in logged}) == list(range(1, KILL_EPOCHS + 1))
    for event in logged:
        assert event.value == pytest.approx(history[event.step - 1]["val_accuracy"], abs=1e-7), event


def kill_at_random_points(rng: random.Random, tmp_path: Path, logdir: Path, processes: list, landed: list) -> None:
    """Start train.py (then --resume it) and SIGKILL it, KILLS times, checking what each kill left."""
    run_dir, last = logdir / "killed", logdir / "killed" / "last.pt"
    committed = 0  # epochs in last.pt
    for number, kind in enumerate(kill_plan(seed=1234), 1):
        if committed >= KILL_EPOCHS - 3:
            break
        argv = [*KILL_ARGS, "--epochs", str(KILL_EPOCHS), "--logdir", str(logdir), "--run-name", "killed"]
        if committed:
            argv = ["--resume", str(last), "--threads", "1"]
        if kind == "during the checkpoint write":
            # the write of last.pt for epoch `target`: the kill lands between the complete
            # temporary file and the rename, so last.pt must still hold epoch target - 1
            target = min(committed + rng.randint(1, 2) + (committed == 0), KILL_EPOCHS)
            process = TrainProcess(argv, tmp_path, slow_write=SLOW_WRITE_SECONDS)
            processes.append(process)
            marker = run_dir / WRITING_MARKER
            expected = f"{process.proc.pid} {target} last.pt"

            def writing(marker=marker, expected=expected) -> bool:
                try:
                    return marker.read_text().strip() == expected
                except OSError:
                    return False

            assert process.wait_until(writing, f"the write of epoch {target}"), process.proc.stderr.read()
            process.kill()
            assert f".last.pt{TEMP_INFIX}{process.proc.pid}" in temp_files(run_dir)  # the kill hit the write
            marker.unlink()
        elif kind == "inside an epoch":
            target = min(committed + rng.randint(1, 2), KILL_EPOCHS - 1)
            process = TrainProcess(argv, tmp_path)
            processes.append(process)
            reached = process.wait_until(lambda: reported_epoch(process, 0) >= target, f"epoch {target}")
            assert reached, process.proc.stderr.read()
            time.sleep(rng.uniform(0.05, 0.8) * epoch_seconds(process))  # inside the next epoch
            process.kill()
        else:  # anywhere in the two epochs after the first one this process finishes
            process = TrainProcess(argv, tmp_path)
            processes.append(process)
            first = committed + 1
            reached = process.wait_until(lambda: reported_epoch(process, 0) >= first, f"epoch {first}")
            assert reached, process.proc.stderr.read()
            time.sleep(rng.uniform(0, 2 * epoch_seconds(process)))
            process.kill()
        assert process.proc.returncode == -signal.SIGKILL, (process.proc.returncode, process.stderr)
        reported = reported_epoch(process, committed)
        landed.append(f"kill {number} {kind}: after epoch {reported} was reported")

        # the last checkpoint loads (weights_only) and holds every epoch reported finished
        checkpoint = load_checkpoint(last)
        assert checkpoint["epoch"] >= max(committed, reported), (checkpoint["epoch"], committed, reported)
        if kind == "during the checkpoint write":
            assert checkpoint["epoch"] == target - 1
        if (run_dir / "best.pt").exists():
            assert load_checkpoint(run_dir / "best.pt")["epoch"] <= checkpoint["epoch"] + 1
        history = json.loads((run_dir / "metrics.json").read_text())["history"]  # whole JSON: written atomically
        assert [entry["epoch"] for entry in history] == list(range(1, len(history) + 1))
        assert checkpoint["epoch"] - 1 <= len(history) <= checkpoint["epoch"]
        assert history == checkpoint["history"][: len(history)]
        committed = checkpoint["epoch"]


def reported_epoch(process: TrainProcess, committed: int) -> int:
    """The highest epoch the process printed as finished ("epoch   7/10 ...", printed once
    the epoch is saved), else committed."""
    epochs = [int(m.group(1)) for line in list(process.lines) if (m := re.match(r"epoch\s+(\d+)/", line))]
    return max(epochs, default=committed)


def epoch_seconds(process: TrainProcess) -> float:
    """How long an epoch takes in this process: from its first line ("training ..." or
    "resuming ...") to its first epoch line."""
    times = list(process.times)
    return times[1] - times[0] if len(times) >= 2 else 0.1


# ------------------------------------------------------------------------------ full disk, unwritable directory


@pytest.fixture
def two_epochs(tmp_path):
    """The arguments of a 3-epoch run on iris in tmp_path/runs/r, and its directory."""
    return [*FAST, "--epochs", "3", "--logdir", str(tmp_path / "runs"), "--run-name", "r"], tmp_path / "runs" / "r"


class FullDisk:
    """A file that takes `room` bytes, then fails every write with ENOSPC, as a full disk
    does; everything else is the real file's."""

    def __init__(self, file, room: int) -> None:
        self.file, self.room = file, room

    def write(self, data) -> int:
        if len(data) > self.room:
            self.file.write(bytes(data[: self.room]))
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)


def fail_on_epoch(monkeypatch, epoch: int, name: str, room: int) -> list[str]:
    """From `epoch` on, the disk is full when the checkpoint `name` is written: torch.save
    itself runs and meets ENOSPC after `room` bytes (0: at the first write)."""
    real_save, failures = torch.save, []

    def save(obj, file, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch", 0) >= epoch and Path(file.name).name.startswith(f".{name}"):
            failures.append(file.name)
            file = FullDisk(file, room)
        return real_save(obj, file, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", save)
    return failures


@pytest.mark.parametrize("room", [0, 1000], ids=["first-write", "mid-write"])
def test_disk_full_stops_with_one_line_and_keeps_the_previous_checkpoint(two_epochs, monkeypatch, capsys, room):
    argv, run_dir = two_epochs
    failures = fail_on_epoch(monkeypatch, 2, "last.pt", room)
    assert train.main(argv) == 2
    assert_one_error_line(capsys.readouterr().err, r"cannot write .*last\.pt: No space left on device; the disk is full.*"
                                            r"the previous last\.pt, if any, is intact")  # fmt: skip
    assert failures and temp_files(run_dir) == []  # the half-written temporary file is gone
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 1
    assert json.loads((run_dir / "metrics.json").read_text())["final"]["epoch"] == 1
    # space freed: the run resumes and ends as an uninterrupted one would
    monkeypatch.undo()
    assert train.main(["--resume", str(run_dir / "last.pt"), "--threads", "1", "--quiet"]) == 0
    assert train.main([*argv[:-1], "straight"]) == 0
    assert_same_state(torch.load(run_dir / "last.pt", weights_only=True),
                      torch.load(run_dir.parent / "straight" / "last.pt", weights_only=True))  # fmt: skip


def run_on_a_small_disk(tmp_path: Path, size: str, argv: list[str]) -> tuple[subprocess.CompletedProcess, Path]:
    """train.py writing to a real tmpfs of `size`, mounted in a private mount namespace
    (unshare: nothing outside this process sees it, and it vanishes with it); what it held
    is copied out before. Skips where namespaces or mounts are not allowed."""
    disk, copy = tmp_path / f"disk-{size}", tmp_path / f"copy-{size}"
    disk.mkdir()
    copy.mkdir()
    script = ('mount -t tmpfs -o size="$SIZE" tmpfs "$DISK" || exit 97; "$PYTHON" "$TRAIN" "$@"; code=$?; '
              'cp -a "$DISK"/. "$COPY"/; exit $code')  # fmt: skip
    env = subprocess_env(SIZE=size, DISK=str(disk), COPY=str(copy), PYTHON=sys.executable, TRAIN=str(REPO / "train.py"))
    try:
        result = subprocess.run(["unshare", "--mount", "sh", "-c", script, "sh", *argv, "--logdir", str(disk)],
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    except FileNotFoundError:
        pytest.skip("no unshare here")
    if result.returncode == 97 or "unshare:" in result.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    return result, copy


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tmpfs in a mount namespace: Linux only")
def test_a_real_full_disk_stops_with_one_line_and_keeps_what_was_saved(tmp_path):
    """Sizes where the disk fills up during a checkpoint's write and during TensorBoard's."""
    argv = ["--dataset", "digits", "--hidden", "128", "--epochs", "30", "--threads", "1", "--device", "cpu",
            "--quiet", "--run-name", "full"]  # fmt: skip
    for size in ("260k", "400k"):
        result, copy = run_on_a_small_disk(tmp_path, size, argv)
        assert result.returncode == 2, result.stderr
        assert_one_error_line(result.stderr, r"cannot write .*No space left on device")
        run_dir = copy / "full"
        assert temp_files(run_dir) == []
        if (run_dir / "last.pt").exists():
            checkpoint = load_checkpoint(run_dir / "last.pt")
            history = json.loads((run_dir / "metrics.json").read_text())["history"]
            assert checkpoint["epoch"] - 1 <= len(history) <= checkpoint["epoch"]
        if (run_dir / "best.pt").exists():
            load_checkpoint(run_dir / "best.pt")


def test_unwritable_run_directory_stops_with_one_line(two_epochs, monkeypatch, capsys):
    """EACCES on the rename (a run directory made read-only mid-run): simulated, as the
    tests may run as root, whom chmod does not stop."""
    argv, run_dir = two_epochs
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == "last.pt" and torch.load(src, weights_only=True)["epoch"] >= 2:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.os, "replace", replace)
    assert train.main(argv) == 2
    assert_one_error_line(capsys.readouterr().err, r"cannot write .*last\.pt: Permission denied; .* is not writable")
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 1 and temp_files(run_dir) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_run_directory_for_real(two_epochs, capsys):
    argv, run_dir = two_epochs
    assert train.main([*argv[:argv.index("--epochs")], "--epochs", "1", *argv[argv.index("--epochs") + 2:]]) == 0
    before = (run_dir / "last.pt").read_bytes()
    run_dir.chmod(0o500)
    try:
        assert train.main(["--resume", str(run_dir / "last.pt"), "--epochs", "2", "--threads", "1", "--quiet"]) == 2
    finally:
        run_dir.chmod(0o700)
    assert_one_error_line(capsys.readouterr().err, r"cannot write .*Permission denied")
    assert (run_dir / "last.pt").read_bytes() == before


def test_atomic_write_never_leaves_a_half_file(tmp_path):
    target = tmp_path / "data.json"
    target.write_text("old")

    def write_half(tmp: Path) -> None:
        tmp.write_text("ne")
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(UserError, match=r"cannot write .*data.json: Input/output error"):
        atomic_write(target, write_half)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["data.json"]
    with pytest.raises(ZeroDivisionError):  # not an OSError: passes through, still no temporary file left
        atomic_write(target, lambda tmp: (tmp.write_text("x"), 1 / 0))
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["data.json"]
    atomic_write(target, lambda tmp: tmp.write_text("new"))
    assert target.read_text() == "new"


def test_stale_temporary_files_of_dead_processes_are_removed_on_resume(tmp_path):
    assert train.main([*FAST, "--epochs", "1", "--logdir", str(tmp_path), "--run-name", "r"]) == 0
    run_dir = tmp_path / "r"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = run_dir / f".last.pt{TEMP_INFIX}{dead.pid}"
    alive = run_dir / f".last.pt{TEMP_INFIX}{os.getppid()}"  # a live process's write in progress
    stale.write_bytes(b"half")
    alive.write_bytes(b"half")
    assert train.main(["--resume", str(run_dir / "last.pt"), "--epochs", "2", "--threads", "1", "--quiet"]) == 0
    assert not stale.exists() and alive.exists()


# ------------------------------------------------------------------------------ NaN / Inf


def test_diverging_run_stops_naming_epoch_and_step(tmp_path, capsys):
    """A learning rate of 1e6: the loss overflows in the first epoch; nothing is saved."""
    code = train.main([*FAST, "--optimizer", "sgd", "--lr", "1e6", "--epochs", "3", "--logdir", str(tmp_path),
                       "--run-name", "r"])  # fmt: skip
    assert code == train.EXIT_NON_FINITE == 3
    assert_one_error_line(capsys.readouterr().err, r"non-finite .* at epoch 1, step \d+ of 8 \(global step \d+\): training "
                                            r"diverged; lower --lr \(it is 1e\+06\).*no checkpoint was written")
    assert not (tmp_path / "r" / "last.pt").exists()
    code = train.main([*FAST, "--optimizer", "adam", "--lr", "1e30", "--epochs", "3", "--logdir", str(tmp_path),
                       "--run-name", "adam"])  # fmt: skip
    assert code == 3
    assert_one_error_line(capsys.readouterr().err, r"non-finite loss \(nan\) at epoch 1, step 2 of 8 \(global step 2\)")


def test_nan_gradient_after_good_epochs_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    real_norms, calls = train.layer_grad_norms, []
    steps_per_epoch = 8  # iris: 120 training samples, batches of 16

    def norms(layers):
        calls.append(1)
        result = real_norms(layers)
        if len(calls) == 2 * steps_per_epoch + 3:  # epoch 3, step 3
            result[1] = math.nan
        return result

    monkeypatch.setattr(train, "layer_grad_norms", norms)
    code = train.main([*FAST, "--epochs", "5", "--logdir", str(tmp_path), "--run-name", "r"])
    assert code == 3
    assert_one_error_line(capsys.readouterr().err, r"non-finite gradient \(layer2\) at epoch 3, step 3 of 8 \(global step 19\)"
                                            r".*the last good checkpoint, of epoch 2, is .*r/last\.pt$")  # fmt: skip
    checkpoint = load_checkpoint(tmp_path / "r" / "last.pt")
    assert checkpoint["epoch"] == 2 and all(torch.isfinite(t).all() for t in checkpoint["model"].values())
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["final"]["epoch"] == 2
    assert temp_files(tmp_path / "r") == []


def test_detect_anomaly_names_the_backward_op_and_is_switched_off_after(tmp_path, capsys):
    assert not torch.is_anomaly_enabled()
    with pytest.warns(UserWarning, match="Traceback of forward call"):  # anomaly mode's pointer to the op
        code = train.main([*FAST, "--optimizer", "adam", "--lr", "1e30", "--epochs", "2", "--logdir", str(tmp_path),
                           "--detect-anomaly"])  # fmt: skip
    assert code == 3
    line = assert_one_error_line(capsys.readouterr().err, r"non-finite gradient \(Function '\w+Backward' returned nan values")
    assert "at epoch 1, step 2 of 8" in line
    assert not torch.is_anomaly_enabled()


def test_finite_training_is_not_flagged(tmp_path):
    """The checks see nothing wrong in an ordinary run, --detect-anomaly included."""
    assert train.main([*FAST, "--epochs", "2", "--logdir", str(tmp_path), "--detect-anomaly"]) == 0
    assert not torch.is_anomaly_enabled()


# ------------------------------------------------------------------------------ planted pickles, mismatched checkpoints


class Payload:
    """Unpickling this calls open(marker, "w"): it creates the marker file. A stand-in for
    any code a malicious checkpoint could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory) -> Path:
    logdir = tmp_path_factory.mktemp("real")
    assert train.main([*FAST, "--epochs", "1", "--logdir", str(logdir), "--run-name", "r"]) == 0
    return logdir / "r" / "last.pt"


PLANTS = ["torch_save", "raw_pickle", "inside_real_checkpoint", "pickle_protocol_0"]


def plant(kind: str, path: Path, marker: Path, real_checkpoint: Path) -> None:
    if kind == "torch_save":
        torch.save({"format": train.CHECKPOINT_FORMAT, "version": 1, "model": Payload(marker)}, path)
    elif kind == "raw_pickle":  # not a zip archive: torch.load's legacy path
        path.write_bytes(pickle.dumps({"format": train.CHECKPOINT_FORMAT, "model": Payload(marker)}))
    elif kind == "pickle_protocol_0":
        path.write_bytes(pickle.dumps(Payload(marker), protocol=0))
    else:  # a real checkpoint with one extra entry
        checkpoint = torch.load(real_checkpoint, weights_only=True)
        checkpoint["history"].append(Payload(marker))
        torch.save(checkpoint, path)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind", PLANTS)
def test_resume_refuses_a_planted_pickle_and_runs_none_of_it(kind, tmp_path, real_checkpoint, capsys):
    run_dir = tmp_path / "runs" / "evil"
    run_dir.mkdir(parents=True)
    marker = tmp_path / "pwned"
    plant(kind, run_dir / "last.pt", marker, real_checkpoint)
    assert train.main(["--resume", str(run_dir / "last.pt"), "--threads", "1"]) == 2
    assert_one_error_line(capsys.readouterr().err, r"loading it is refused \(it could run code\)|is corrupt or not a PyTorch")
    assert not marker.exists()
    assert sorted(p.name for p in run_dir.iterdir()) == ["last.pt"]  # nothing written
    # the payload is live: an unsafe load runs it (so the test above could fail)
    with pytest.raises(Exception):  # noqa: B017, PT011 - whatever the object does afterwards
        result = torch.load(run_dir / "last.pt", weights_only=False) if kind != "raw_pickle" else \
            pickle.loads((run_dir / "last.pt").read_bytes())  # fmt: skip
        if hasattr(result, "close"):
            result.close()
        raise RuntimeError("loaded")
    assert marker.exists()


def test_planted_pickle_is_refused_with_the_refusal_message(tmp_path, real_checkpoint, capsys):
    """torch.save'd payloads are named as refused, not merely as corrupt."""
    for kind in ("torch_save", "inside_real_checkpoint"):
        path = tmp_path / f"{kind}.pt"
        plant(kind, path, tmp_path / "pwned", real_checkpoint)
        assert train.main(["--resume", str(path), "--threads", "1"]) == 2
        assert_one_error_line(capsys.readouterr().err, r"holds Python objects other than tensors .* loading it is refused")
    assert not (tmp_path / "pwned").exists()


def test_checkpoint_of_another_model_shape_gets_a_mismatch_message(tmp_path, real_checkpoint, capsys):
    """Weights of --hidden 4 in a checkpoint whose settings say --hidden 8."""
    assert train.main([*FAST, "--hidden", "4", "--epochs", "1", "--logdir", str(tmp_path), "--run-name", "small"]) == 0
    small = torch.load(tmp_path / "small" / "last.pt", weights_only=True)
    checkpoint = torch.load(real_checkpoint, weights_only=True)
    checkpoint["model"] = small["model"]
    torch.save(checkpoint, tmp_path / "mixed.pt")
    assert train.main(["--resume", str(tmp_path / "mixed.pt"), "--epochs", "2", "--threads", "1"]) == 2
    assert_one_error_line(capsys.readouterr().err, r"holds a model of another shape: layers\.0\.weight is \(4, 4\) there, "
                                            r"\(8, 4\) here")  # fmt: skip


# ------------------------------------------------------------------------------ two runs, one name


def test_two_runs_started_at_once_with_one_run_name_never_share_a_directory(tmp_path):
    logdir = tmp_path / "runs"
    runs = [
        subprocess.Popen(
            [sys.executable, str(REPO / "train.py"), *FAST, "--epochs", "2", "--seed", str(seed), "--logdir",
             str(logdir), "--run-name", "same"],
            cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for seed in (1, 2)
    ]  # fmt: skip
    results = [(run.wait(timeout=300), *run.communicate()) for run in runs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    winner = 1 + [code for code, _, _ in results].index(0)
    loser_err = next(err for code, _, err in results if code == 2)
    assert_one_error_line(loser_err, r"run directory .*same already exists: pick another --run-name")
    # the directory is the winner's alone: its config, its checkpoint, its metrics
    assert sorted(p.name for p in logdir.iterdir()) == ["same"]
    run_dir = logdir / "same"
    assert json.loads((run_dir / "config.json").read_text())["seed"] == winner
    checkpoint = load_checkpoint(run_dir / "last.pt")
    assert checkpoint["config"]["seed"] == winner and checkpoint["epoch"] == 2
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1


def test_create_run_dir_under_a_thread_race(tmp_path):
    """Eight threads, one name: exactly one gets it; auto-named runs all get their own."""
    outcomes: list[object] = []
    barrier = threading.Barrier(8)

    def claim(auto_named: bool) -> None:
        barrier.wait()
        try:
            outcomes.append(create_run_dir(tmp_path / ("auto" if auto_named else "fixed"), "name", auto_named))
        except UserError as error:
            outcomes.append(error)

    for auto_named in (False, True):
        outcomes.clear()
        threads = [threading.Thread(target=claim, args=(auto_named,)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        made = [o for o in outcomes if isinstance(o, Path)]
        assert len(made) == (8 if auto_named else 1) and len(set(made)) == len(made)
