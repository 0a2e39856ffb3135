"""Train a classifier whose forward and backward passes are custom_ops' hand-derived ops.

    python train.py                                      # an MLP on digits, a few seconds on 2 CPU cores
    python train.py --model lr --dataset breast_cancer   # logistic regression
    python train.py --resume runs/NAME/last.pt --epochs 50
    tensorboard --logdir runs

Reads top to bottom: config, data, model and optimizer, then the loop: an epoch of
mini-batch steps, evaluation, logging, checkpoints. Everything a run writes goes to
runs/<run-name>/ (see docs/README-training.md).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import threading
import time
import unicodedata
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch
from tqdm import tqdm

from models import ACTIVATIONS, INITS, build_classifier, count_parameters
from training import (
    BUILTIN_DATASETS,
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    SGD,
    ActivationMonitor,
    Adam,
    NullLogger,
    RunLogger,
    UserError,
    check_run_name,
    compile_model,
    create_run_dir,
    evaluate,
    layer_grad_norms,
    linear_layers,
    load_checkpoint,
    load_dataset,
    load_model_state,
    resolve_device,
    restore_rng_state,
    rng_state,
    save_checkpoint,
    split_and_standardize,
    write_json,
)
from training import distributed
from training.checkpoint import atomic_write, remove_stale_temp_files
from training.runs import default_run_name
from training.runtime import DEVICE_PATTERN

DEFAULT_LR = {"adam": 3e-3, "sgd": 0.1}
# the run's hyperparameters: shown in TensorBoard's HParams tab, fixed for a resumed run
HPARAMS = ("model", "hidden", "activation", "dataset", "val_fraction", "optimizer", "lr", "batch_size", "epochs",
           "seed", "init", "amp")  # fmt: skip
# what a resumed run may change (given: the flag's value, else the checkpoint's); every
# other flag must match the checkpoint's. --quiet and --threads are never taken from it.
RESUME_MAY_CHANGE = ("epochs", "device", "metrics_format", "data_dir", "compile")
PER_INVOCATION = ("threads", "quiet", "detect_anomaly")
# the exit status of a run stopped by a non-finite loss, gradient or weight (2: bad input)
EXIT_NON_FINITE = 3
CONFIG_KEYS = (*HPARAMS, "data_dir", "device", "threads", "logdir", "run_name", "metrics_format", "quiet", "compile")


# ------------------------------------------------------------------------------ config


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # one line, through main's UserError path, instead of argparse's usage block
        raise UserError(f"{message} (see python train.py --help)")


def checked_number(cast: type, is_valid: Callable[[Any], bool], expected: str) -> Callable[[str], Any]:
    """An argparse type: cast the text, then check it; either failure is one line."""

    def parse(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not is_valid(value):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text}")
        return value

    return parse


positive_int = checked_number(int, lambda value: value > 0, "a positive integer")
positive_float = checked_number(float, lambda value: math.isfinite(value) and value > 0, "a positive number")
fraction = checked_number(float, lambda value: 0 < value < 1, "a number between 0 and 1 (exclusive)")
seed_value = checked_number(int, lambda value: 0 <= value < 2**32, "an integer from 0 to 2**32 - 1")


def hidden_sizes(text: str) -> list[int]:
    try:
        sizes = [int(size) for size in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer sizes such as 128 or 256,128, got {text!r}"
        ) from None
    if any(size <= 0 for size in sizes):
        raise argparse.ArgumentTypeError(f"layer sizes must be positive, got {text!r}")
    return sizes


def device_name(text: str) -> str:
    if not DEVICE_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    return text


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="train.py",
        description="Train a classifier built from custom_ops (hand-derived autograd ops) and log the run "
        "to TensorBoard.",
    )
    parser.add_argument(
        "--model", choices=("lr", "mlp"), default="mlp", help="logistic regression or MLP (default mlp)"
    )
    parser.add_argument(
        "--hidden", type=hidden_sizes, default=[512], help="MLP hidden sizes, e.g. 512 or 256,128 (default 512)"
    )
    parser.add_argument(
        "--activation", choices=tuple(ACTIVATIONS), default="relu", help="MLP activation (default relu)"
    )
    parser.add_argument(
        "--dataset",
        default="digits",
        help=f"{', '.join(BUILTIN_DATASETS)}, or a CSV file: label first, then features (default digits)",
    )
    parser.add_argument("--data-dir", default="data", help="folder with MNIST's IDX files (default data)")
    parser.add_argument("--val-fraction", type=fraction, default=0.2, help="validation share of the data (default 0.2)")
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default="adam", help="default adam")
    parser.add_argument(
        "--lr",
        type=positive_float,
        default=None,
        help=f"learning rate (default {DEFAULT_LR['adam']} for adam, {DEFAULT_LR['sgd']} for sgd)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=32, help="default 32")
    parser.add_argument("--epochs", type=positive_int, default=20, help="total epochs, also on --resume (default 20)")
    parser.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument(
        "--seed", type=seed_value, default=0, help="seeds the split, the init and the shuffles (default 0)"
    )
    parser.add_argument(
        "--init",
        choices=INITS,
        default="random",
        help="random: PyTorch's nn.Linear init; zero: all weights 0 (default random)",
    )
    # one thread by default: the default model is too small to gain from more, and on a
    # shared 2-core machine two threads beside a busy process ran a step ~180x slower
    parser.add_argument(
        "--threads", type=positive_int, default=1, help="torch intra-op threads (default 1; raise it for big models)"
    )
    parser.add_argument("--logdir", default="runs", help="parent folder of run directories (default runs)")
    parser.add_argument("--run-name", default=None, help="run directory name (default: time and settings)")
    parser.add_argument(
        "--resume", default=None, metavar="PATH", help="continue the run of this checkpoint, e.g. runs/NAME/last.pt"
    )
    parser.add_argument(
        "--metrics-format",
        choices=("10601",),
        default=None,
        help="also write metrics_10601.txt in the course homework's format",
    )
    parser.add_argument(
        "--amp",
        action="store_true",
        help="mixed precision: torch.autocast with bfloat16 on CPU, float16 and a GradScaler on CUDA",
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the model's forward and loss (fullgraph=True)"
    )
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    parser.add_argument(
        "--detect-anomaly",
        action="store_true",
        help="PyTorch's anomaly mode, for debugging a NaN: backward stops at the op whose gradient is NaN and "
        "shows where forward called it (slow)",
    )
    return parser


def check_arguments(argv: list[str]) -> None:
    """Refuse an argument holding a control character (a NUL byte, a newline) or bytes
    that are not UTF-8 (lone surrogates): no file may have such a name here, and they
    would break the one-line error messages and the run's files."""
    for arg in argv:
        bad = next((c for c in arg if unicodedata.category(c) in ("Cc", "Cs")), None)
        if bad is not None:
            kind = "bytes that are not UTF-8" if unicodedata.category(bad) == "Cs" else f"a control character {bad!r}"
            raise UserError(f"argument {arg!r} holds {kind}: pass plain text (rename the file if it is a path)")


def explicit_flags(argv: list[str] | None) -> set[str]:
    """The settings given on the command line (not left at their defaults)."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def new_config(args: argparse.Namespace, explicit: set[str]) -> dict[str, Any]:
    if args.model == "lr" and explicit & {"hidden", "activation"}:
        raise UserError("--hidden and --activation apply to --model mlp only")
    if args.run_name is not None:
        check_run_name(args.run_name)
    mlp = args.model == "mlp"
    return {
        "model": args.model,
        "hidden": args.hidden if mlp else [],
        "activation": args.activation if mlp else "none",
        "dataset": args.dataset,
        "val_fraction": args.val_fraction,
        "optimizer": args.optimizer,
        "lr": args.lr if args.lr is not None else DEFAULT_LR[args.optimizer],
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "seed": args.seed,
        "init": args.init,
        "data_dir": args.data_dir,
        "device": args.device,
        "threads": args.threads,
        "logdir": args.logdir,
        "run_name": args.run_name,
        "metrics_format": args.metrics_format,
        "quiet": args.quiet,
        "detect_anomaly": args.detect_anomaly,
        "amp": args.amp,
        "compile": args.compile,
    }


def resumed_config(saved: dict[str, Any], args: argparse.Namespace, explicit: set[str]) -> dict[str, Any]:
    """The checkpoint's settings, with the few a resumed run may change taken from the flags."""
    missing = [key for key in CONFIG_KEYS if key not in saved]
    if missing:
        raise UserError(f"checkpoint {args.resume} is damaged: its config lacks {', '.join(missing)}")
    check_saved_config(saved, args.resume)
    if explicit & {"logdir", "run_name"}:
        raise UserError(
            "--logdir and --run-name cannot be combined with --resume: a resumed run continues in the "
            "checkpoint's own directory"
        )
    config = dict(saved)
    for key in PER_INVOCATION:
        config[key] = getattr(args, key)
    for key in sorted(explicit - {"resume", *PER_INVOCATION}):
        value = getattr(args, key)
        if key in RESUME_MAY_CHANGE:
            config[key] = value
        elif value != saved[key]:
            flag = "--" + key.replace("_", "-")
            raise UserError(
                f"{flag} {value} differs from the checkpoint's {saved[key]}: a resumed run keeps its "
                "settings (drop the flag, or start a new run)"
            )
    run_dir = Path(args.resume).resolve().parent  # the run continues where its checkpoint is
    config["logdir"], config["run_name"] = str(run_dir.parent), run_dir.name
    return config


def check_saved_config(saved: dict[str, Any], path: str) -> None:
    """Put a checkpoint's settings through the same checks as the command line's."""
    try:
        argv = [f"--{key.replace('_', '-')}={saved[key]}" for key in
                ("model", "dataset", "data_dir", "val_fraction", "optimizer", "lr", "batch_size", "epochs", "device",
                 "seed", "init")]  # fmt: skip
        if saved["model"] == "mlp":
            argv += [
                "--hidden=" + ",".join(str(size) for size in saved["hidden"]),
                f"--activation={saved['activation']}",
            ]
        build_parser().parse_args(argv)
    except (UserError, TypeError) as error:
        raise UserError(f"checkpoint {path} is damaged: its config does not hold valid settings ({error})") from None


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's shuffle: a function of (seed, epoch) only, so a resumed run
    draws exactly the batches the uninterrupted run would have."""
    return (seed * 1_000_003 + epoch) % 2**63


def is_better(metrics: dict[str, float], best: dict[str, float] | None) -> bool:
    """Higher val accuracy wins; a tie goes to the lower val loss."""
    if best is None:
        return True
    return (metrics["val_accuracy"], -metrics["val_loss"]) > (best["val_accuracy"], -best["val_loss"])


def leave_os_errors_to_main(hook: Any) -> Any:
    """A threading.excepthook that stays silent on an OSError: TensorBoard's writer thread
    dies of a full disk with a traceback, then the main thread gets the same error on its
    next flush, and main prints it as one line."""

    def excepthook(args: Any) -> None:
        if not issubclass(args.exc_type, OSError):
            hook(args)

    return excepthook


def first_non_finite(step_flags: list[torch.Tensor]) -> tuple[int, int] | None:
    """(step index in the epoch, 0 for the loss or k for layer k's gradient) of the first
    non-finite value, or None. step_flags holds one row a step, [loss finite, layer 1's
    gradient finite, ...], kept on the device: this reads them once an epoch, one sync."""
    if not step_flags:
        return None
    flags = torch.stack(step_flags).cpu()
    if bool(flags.all()):
        return None
    step, what = (~flags).nonzero()[0].tolist()
    return step, what


def non_finite_message(what: str, epoch: int, step: int, steps: int, global_step: int, lr: float, last: Path) -> str:
    """The one line train.py prints when training diverges."""
    checkpoint = (
        f"the last good checkpoint, of epoch {epoch - 1}, is {last}" if last.is_file()
        else "no checkpoint was written (the first epoch diverged)"
    )  # fmt: skip
    find_op = "" if torch.is_anomaly_enabled() else ", and run with --detect-anomaly to find the op"
    return (
        f"non-finite {what} at epoch {epoch}, step {step} of {steps} (global step {global_step}): training diverged; "
        f"lower --lr (it is {lr:g}) or check the data{find_op}; {checkpoint}"
    )


def metrics_10601(history: list[dict[str, float]], final_errors: tuple[float, float]) -> str:
    """The course homework's metrics file: cross-entropy per epoch, then the final error rates."""
    lines = []
    for entry in history:
        lines.append(f"epoch={entry['epoch']} crossentropy(train): {entry['train_loss']}")
        lines.append(f"epoch={entry['epoch']} crossentropy(validation): {entry['val_loss']}")
    lines.append(f"error(train): {final_errors[0]}")
    lines.append(f"error(validation): {final_errors[1]}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    anomaly_mode = torch.is_anomaly_enabled()
    thread_hook = threading.excepthook
    threading.excepthook = leave_os_errors_to_main(thread_hook)
    try:
        return train(argv)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a write outside atomic_write: TensorBoard's event file, on a full disk
        print(f"error: cannot write the run's files: {error.strerror or error}; free some space or fix the "
              "permissions, then continue with --resume (the checkpoints written so far are intact)",
              file=sys.stderr)  # fmt: skip
        return 2
    finally:
        threading.excepthook = thread_hook
        torch.autograd.set_detect_anomaly(anomaly_mode)  # --detect-anomaly holds for this run only
        distributed.close()  # under torchrun: leave the process group (otherwise nothing to do)


def train(argv: list[str] | None = None) -> int:
    started = time.perf_counter()

    # -------------------------------------------------------------------- config
    check_arguments(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    explicit = explicit_flags(argv)
    # started by torchrun (RANK, WORLD_SIZE, ... in the environment)? None for `python train.py`
    launch = distributed.launch_from_env()
    # torchrun restarted the workers after a failure: go on from the run's last checkpoint
    earlier = distributed.earlier_attempt(launch, args.resume, args.logdir, args.run_name) if launch else None
    restarted = earlier is not None
    if restarted and (earlier / "last.pt").is_file():
        args.resume, explicit = str(earlier / "last.pt"), explicit - {"logdir", "run_name"}
    checkpoint = load_checkpoint(args.resume) if args.resume is not None else None
    config = resumed_config(checkpoint["config"], args, explicit) if checkpoint else new_config(args, explicit)
    group = None  # the process group under torchrun: DDP, sharded data, rank 0 writes the files
    if launch:
        local_batch_size = distributed.check_batch_size(config["batch_size"], launch)
        if launch.max_restarts and not checkpoint and config["run_name"] is None:
            raise UserError(
                f"torchrun --max-restarts={launch.max_restarts} needs --run-name: a restarted group resumes from "
                "the run's last.pt, which it finds by name"
            )
        device = distributed.rank_device(config["device"], launch)
        group = distributed.Group(launch, device)
    else:
        local_batch_size = config["batch_size"]
        device = resolve_device(config["device"])
    is_rank0 = group is None or group.is_rank0
    if config["threads"]:
        torch.set_num_threads(config["threads"])
    if config["detect_anomaly"]:  # main restores the previous mode when the run ends
        torch.autograd.set_detect_anomaly(True)
    say = (lambda *_: None) if config["quiet"] or not is_rank0 else print

    # -------------------------------------------------------------------- data
    dataset = load_dataset(config["dataset"], config["data_dir"])
    split = split_and_standardize(dataset, config["val_fraction"], config["seed"])
    # the whole split lives on the device: batches are index lookups, no loader needed
    x_train, y_train = torch.from_numpy(split.x_train).to(device), torch.from_numpy(split.y_train).to(device)
    x_val, y_val = torch.from_numpy(split.x_val).to(device), torch.from_numpy(split.y_val).to(device)
    if group and min(len(y_train), len(y_val)) < group.world_size:
        raise UserError(f"{len(y_train)} train / {len(y_val)} val samples are too few for {group.world_size} processes")

    # -------------------------------------------------------------------- model and optimizer
    torch.manual_seed(config["seed"])
    try:
        model = build_classifier(
            config["model"],
            dataset.num_features,
            dataset.num_classes,
            config["hidden"],
            config["activation"],
            config["init"],
        )
    except (ValueError, TypeError) as error:  # only a damaged checkpoint's config gets here
        raise UserError(f"cannot build the model: {error}") from None
    model.to(device)
    # torch.optim's updates, without its import of torch._dynamo (training/optim.py says why)
    optimizer_class = {"adam": Adam, "sgd": SGD}[config["optimizer"]]
    optimizer = optimizer_class(model.parameters(), lr=config["lr"])
    # --amp: autocast picks each op's dtype by its policy (custom_ops.Op.autocast); float16
    # on CUDA needs a GradScaler against underflowing gradients, bfloat16 on the CPU does not
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=config["amp"] and amp_dtype == torch.float16)

    def forward_and_loss(x: torch.Tensor, y: torch.Tensor, global_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=config["amp"]):
            logits = step_model(x)  # the model, or DDP around it under torchrun
            if group is None:
                return logits, model.loss(logits, y)
            # this rank's share of the global batch's mean loss: DDP averages the ranks' gradients
            return logits, group.share_of_mean_loss(model, logits, y, global_batch)

    if config["compile"] and group is None:  # (under torchrun the model inside DDP is compiled instead, below)
        forward_and_loss = compile_model(forward_and_loss)

    history: list[dict[str, float]] = []
    best: dict[str, float] | None = None
    epochs_done, global_step = 0, 0
    fingerprint = dataset.fingerprint()
    if checkpoint:
        if checkpoint["data"].get("fingerprint") != fingerprint:
            raise UserError(
                f"dataset {config['dataset']} is not the data checkpoint {args.resume} was trained on "
                "(the file changed since): a resumed run must see the same data"
            )
        load_model_state(model, checkpoint["model"], args.resume)
        try:
            optimizer.load_state_dict(checkpoint["optimizer"])
        except (ValueError, KeyError, RuntimeError, TypeError) as error:
            raise UserError(f"checkpoint {args.resume} has an optimizer state that does not fit: {error}") from None
        restore_rng_state(checkpoint["rng"])
        history, best = list(checkpoint["history"]), checkpoint.get("best")
        epochs_done, global_step = checkpoint["epoch"], checkpoint["global_step"]
        if restarted and epochs_done >= config["epochs"]:
            say(f"run {Path(args.resume).parent} had finished its {epochs_done} epochs before the restart")
            return 0
        if epochs_done >= config["epochs"]:
            raise UserError(
                f"checkpoint {args.resume} has trained {epochs_done} epochs already: pass --epochs N with "
                f"N > {epochs_done} to train further"
            )

    # under torchrun, the training step runs DDP around the model (whose constructor gives
    # every rank rank 0's weights); everything else uses the model itself. With --compile,
    # DDP runs the compiled model: DDP's own forward cannot be traced into one graph
    if group:
        step_model = group.wrap(compile_model(model) if config["compile"] else model)
    else:
        step_model = model

    # -------------------------------------------------------------------- run directory
    # only now, with every input checked: a mistake above leaves no trace on disk
    if checkpoint:
        run_dir = Path(args.resume).parent
    else:
        auto_named = config["run_name"] is None
        run_name = default_run_name(config) if auto_named else config["run_name"]
        if group is None:
            run_dir = create_run_dir(config["logdir"], run_name, auto_named)
        else:  # rank 0 makes it, the other ranks learn its name
            run_dir = group.on_rank0(lambda: distributed.make_run_dir(config["logdir"], run_name, auto_named, earlier))
        config["run_name"] = run_dir.name
    if is_rank0:  # under torchrun, rank 0 alone writes the run directory's files
        write_json(
            run_dir / "config.json",
            {
                **config,
                "device_used": str(device),
                "torch_version": torch.__version__,
                "resumed_from_epoch": epochs_done if checkpoint else None,
                # under torchrun: how many processes, and the job's id (a restart recognizes its run by it)
                **({"world_size": group.world_size, "backend": group.backend, "torchelastic_run_id": launch.run_id}
                   if group else {}),  # fmt: skip
            },
        )
    if checkpoint and is_rank0:
        # after a crash: drop the killed process's temporary files, and bring metrics.json
        # up to last.pt (a kill between the two writes leaves it an epoch behind)
        remove_stale_temp_files(run_dir)
        if Path(args.resume).resolve() == (run_dir / "last.pt").resolve():
            write_json(run_dir / "metrics.json", {"history": history, "final": history[-1], "best": best})
    # (a restart before the first checkpoint starts over in the same directory: purge its events)
    logger = (
        RunLogger(run_dir, resume_global_step=global_step if checkpoint or restarted else None)
        if is_rank0
        else NullLogger()
    )
    if not checkpoint:
        logger.graph(model, x_val[:1])
    data_info = {
        "fingerprint": fingerprint,
        "class_names": dataset.class_names,
        "num_features": dataset.num_features,
        "mean": torch.from_numpy(split.mean),
        "std": torch.from_numpy(split.std),
    }

    layers = linear_layers(model)
    monitor = ActivationMonitor(model)
    batch_size, epochs = config["batch_size"], config["epochs"]
    steps_per_epoch = math.ceil(len(y_train) / batch_size)
    world_size = group.world_size if group else 1
    # what this process evaluates each epoch: the whole splits, or under torchrun its shard of them
    train_shard = (x_train, y_train) if group is None else (group.shard(x_train), group.shard(y_train))
    val_shard = (x_val, y_val) if group is None else (group.shard(x_val), group.shard(y_val))
    show_bar = not config["quiet"] and sys.stderr.isatty() and is_rank0
    shape = "-".join(str(n) for n in [dataset.num_features, *config["hidden"], dataset.num_classes])
    say(
        f"{'resuming' if checkpoint else 'training'} {config['model']} {shape}"
        f"{' ' + config['activation'] if config['model'] == 'mlp' else ''} ({count_parameters(model):,} parameters) "
        f"on {config['dataset']}: {len(y_train)} train / {len(y_val)} val samples; device {device}; run {run_dir}"
    )
    if group:
        say(
            f"data parallel: {world_size} processes ({group.backend}), each computing {local_batch_size} samples "
            f"of every global batch of {batch_size}{'; restarted by torchrun' if restarted else ''}"
        )

    def diverged(what: str, epoch: int, step: int, global_step: int) -> int:
        """Stop on a non-finite value: one line on stderr, last.pt left at the last good epoch."""
        logger.close()
        if is_rank0:
            lr, last = optimizer.param_groups[0]["lr"], run_dir / "last.pt"
            print(f"error: {non_finite_message(what, epoch, step, steps_per_epoch, global_step, lr, last)}",
                  file=sys.stderr)  # fmt: skip
        return EXIT_NON_FINITE

    # -------------------------------------------------------------------- training loop
    try:
        for epoch in range(epochs_done + 1, epochs + 1):
            epoch_started = time.perf_counter()
            model.train()
            if group is None:
                # drawn on the CPU, so the same seed gives the same batches on any device
                order = torch.randperm(
                    len(y_train), generator=torch.Generator().manual_seed(epoch_seed(config["seed"], epoch))
                )
            else:  # this rank's shard of that same permutation (DistributedSampler, seeded epoch_seed(seed, 0) + epoch)
                order = group.epoch_shard(len(y_train), epoch_seed(config["seed"], 0), epoch)
            order = order.to(device)
            step_losses: list[torch.Tensor] = []
            step_finite: list[torch.Tensor] = []  # per step: [loss finite, each layer's gradient finite]
            grad_norm_sum = torch.zeros(len(layers), device=device)
            bar = tqdm(
                total=steps_per_epoch,
                desc=f"epoch {epoch}/{epochs}",
                unit="batch",
                leave=False,
                disable=not show_bar,
                dynamic_ncols=True,
            )
            seen, correct, loss_sum = 0, 0, 0.0
            for step in range(steps_per_epoch):
                # this process's part of the step's global batch (all of it without torchrun)
                batch = order[step * local_batch_size : (step + 1) * local_batch_size]
                global_batch = min(batch_size, len(y_train) - step * batch_size)
                x, y = x_train[batch], y_train[batch]
                logits, loss = forward_and_loss(x, y, global_batch)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)  # so the logged gradient norms are the true ones
                grad_norms = layer_grad_norms(layers)
                grad_norm_sum += grad_norms
                # (an fp16 GradScaler expects inf gradients now and then: it skips those steps itself)
                grads_finite = grad_norms.isfinite() | scaler.is_enabled()
                step_finite.append(torch.cat([loss.detach().isfinite().reshape(1), grads_finite]))
                scaler.step(optimizer)
                scaler.update()
                step_losses.append(loss.detach())
                if show_bar:  # running means for the bar (syncs a GPU, so only when shown)
                    seen += len(y)
                    loss_sum += loss.item() * global_batch / world_size  # this process's summed loss
                    correct += int((model.predict(logits.detach()) == y).sum())
                    bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.2%}", refresh=False)
                    bar.update(1)
            bar.close()
            first_step = global_step + 1
            global_step += len(step_losses)
            # a non-finite loss or gradient (or weights an overflowing step made inf): stop before
            # this epoch is evaluated, logged or saved, so last.pt stays the last good epoch
            bad = first_non_finite(step_finite)
            if bad is None and not bool(torch.stack([p.isfinite().all() for p in model.parameters()]).all()):
                bad = (len(step_losses) - 1, -1)
            if bad is not None:
                step, what = bad
                name = {0: f"loss ({step_losses[step].item()})", -1: "weights"}.get(what, f"gradient (layer{what})")
                return diverged(name, epoch, step + 1, first_step + step)

            # evaluation: the whole training split (recording activation statistics), then validation
            model.eval()
            with monitor.recording():
                train_eval = evaluate(model, *train_shard)
            val_eval = evaluate(model, *val_shard)
            if group:  # each rank evaluated its shard: sums over all ranks give the whole splits' numbers
                train_eval, val_eval = group.all_reduce_evaluation(train_eval), group.all_reduce_evaluation(val_eval)
                group.all_reduce_activation_stats(monitor)
            metrics = {
                "epoch": epoch,
                "train_loss": train_eval.loss,
                "train_accuracy": train_eval.accuracy,
                "val_loss": val_eval.loss,
                "val_accuracy": val_eval.accuracy,
            }
            for split in ("train", "val"):  # finite weights can still overflow the logits
                if not math.isfinite(metrics[f"{split}_loss"]):
                    what = f"{split} loss ({metrics[f'{split}_loss']}) in the evaluation after the last step"
                    return diverged(what, epoch, len(step_losses), global_step)
            history.append(metrics)
            improved = is_better(metrics, best)
            if improved:
                best = metrics

            # logging
            losses = torch.stack(step_losses)
            if group:  # the mean of the ranks' shares is each global batch's mean loss
                losses = group.average(losses)
            logger.step_losses(first_step, losses.tolist())
            mean_grad_norms = (grad_norm_sum / len(step_losses)).tolist()
            logger.epoch(
                epoch,
                metrics,
                optimizer.param_groups[0]["lr"],
                model,
                monitor.summary(),
                {f"layer{i}": norm for i, norm in enumerate(mean_grad_norms, 1)},
            )
            logger.flush()

            # checkpoints and metrics: last.pt every epoch, best.pt when val accuracy improved; best.pt
            # first: replacing last.pt commits the epoch (a kill before it redoes the epoch on --resume)
            # (under torchrun rank 0 alone writes them; at the barrier every rank has finished the epoch)
            if is_rank0:
                state = {
                    "format": CHECKPOINT_FORMAT,
                    "version": CHECKPOINT_VERSION,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch,
                    "global_step": global_step,
                    "history": history,
                    "best": best,
                    "rng": rng_state(),
                    "config": config,
                    "data": data_info,
                }
                if improved:
                    save_checkpoint(run_dir / "best.pt", state)
                save_checkpoint(run_dir / "last.pt", state)
                write_json(run_dir / "metrics.json", {"history": history, "final": metrics, "best": best})
            if group:
                group.barrier()
            say(
                f"epoch {epoch:>3}/{epochs}  train loss {metrics['train_loss']:.4f} acc {metrics['train_accuracy']:.2%}"
                f"  val loss {metrics['val_loss']:.4f} acc {metrics['val_accuracy']:.2%}"
                f"  {time.perf_counter() - epoch_started:.2f}s{'  *best' if improved else ''}"
            )
    except KeyboardInterrupt:
        logger.close()
        if is_rank0:
            print(f"interrupted; continue with: python train.py --resume {run_dir / 'last.pt'}", file=sys.stderr)
        return 130
    except RuntimeError as error:
        # --detect-anomaly: backward raised at the op whose gradient is NaN (PyTorch has
        # printed the forward traceback of that op above as a warning)
        if not (torch.is_anomaly_enabled() and "nan values" in str(error)):
            raise
        what = f"gradient ({str(error).rstrip('.')})"
        return diverged(what, epoch, len(step_losses) + 1, global_step + len(step_losses) + 1)

    # -------------------------------------------------------------------- the run's summary
    final = history[-1]
    assert best is not None
    logger.hparams({key: config[key] for key in HPARAMS}, final, best, epochs)
    logger.close()
    if config["metrics_format"] == "10601" and is_rank0:
        text = metrics_10601(history, (train_eval.error, val_eval.error))
        atomic_write(run_dir / "metrics_10601.txt", lambda tmp: tmp.write_text(text))
    say(
        f"done in {time.perf_counter() - started:.1f}s: final val accuracy {final['val_accuracy']:.2%}, best "
        f"{best['val_accuracy']:.2%} at epoch {best['epoch']}; saved in {run_dir}"
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # `python train.py | head`: the reader left early, nothing failed here
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        sys.exit(1)
