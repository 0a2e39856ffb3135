"""TensorBoard logging for a run: scalars, histograms, the model graph and hparams,
all in the run directory itself (so the HParams tab lists one row per run)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary

# the metrics the HParams tab shows for each run (scalars logged under these tags)
HPARAM_METRICS = (
    "hparams/final_val_accuracy", "hparams/final_val_loss", "hparams/final_train_accuracy",
    "hparams/final_train_loss", "hparams/best_val_accuracy",
)  # fmt: skip


class RunLogger:
    """One SummaryWriter on the run directory.

    Step axes: per-epoch scalars and histograms use the epoch number (1, 2, …); the
    per-step training loss uses the global step, the number of optimizer steps taken.
    """

    def __init__(self, run_dir: Path, resume_global_step: int | None = None) -> None:
        # On resume, purge_step makes TensorBoard drop what the interrupted run logged
        # after its checkpoint (steps > the checkpoint's global step), so no step shows twice.
        purge_step = None if resume_global_step is None else resume_global_step + 1
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step, flush_secs=30)

    def graph(self, model: nn.Module, example_input: Tensor) -> None:
        # add_graph would trace the model with torch.jit.trace's check on: two more traces,
        # compared with torch.testing, which imports torch.distributed.tensor and sympy (0.7 s
        # of a cold default run). Traced here without the check, add_graph logs it as it is.
        # (The deprecation and tracer warnings say nothing about the user's run.)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.writer.add_graph(trace_for_graph(model, example_input), example_input)

    def step_losses(self, first_step: int, losses: list[float]) -> None:
        for offset, loss in enumerate(losses):
            self.writer.add_scalar("train/loss_step", loss, first_step + offset)

    def epoch(
        self,
        epoch: int,
        metrics: dict[str, float],
        learning_rate: float,
        model: nn.Module,
        diagnostics: dict[str, float],
        grad_norms: dict[str, float],
    ) -> None:
        for split in ("train", "val"):
            self.writer.add_scalar(f"{split}/loss", metrics[f"{split}_loss"], epoch)
            self.writer.add_scalar(f"{split}/accuracy", metrics[f"{split}_accuracy"], epoch)
        self.writer.add_scalar("train/learning_rate", learning_rate, epoch)
        for key, value in diagnostics.items():
            self.writer.add_scalar(f"diagnostics/{key}", value, epoch)
        for layer, value in grad_norms.items():
            self.writer.add_scalar(f"grad_norm/{layer}", value, epoch)
        # histograms once an epoch, not every step: they are the costly part of an event file
        for name, parameter in model.named_parameters():
            self.writer.add_histogram(f"parameters/{name}", parameter.detach(), epoch)
            if parameter.grad is not None:
                self.writer.add_histogram(f"gradients/{name}", parameter.grad.detach(), epoch)

    def hparams(self, config: dict[str, Any], final: dict[str, float], best: dict[str, float], epoch: int) -> None:
        """The run's settings and final metrics, for the HParams tab, in this run's own
        directory (SummaryWriter.add_hparams would make a subdirectory, a separate run)."""
        hparam_values = {key: _hparam_value(value) for key, value in config.items()}
        metrics = {
            "hparams/final_val_accuracy": final["val_accuracy"],
            "hparams/final_val_loss": final["val_loss"],
            "hparams/final_train_accuracy": final["train_accuracy"],
            "hparams/final_train_loss": final["train_loss"],
            "hparams/best_val_accuracy": best["val_accuracy"],
        }
        file_writer = self.writer._get_file_writer()
        for summary in hparams_summary(hparam_values, metrics):
            file_writer.add_summary(summary)
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, epoch)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _hparam_value(value: Any) -> bool | int | float | str:
    """HParams takes bool, int, float, str: show lists as '256,128' and None as 'none'."""
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "none"
    if isinstance(value, torch.Tensor):
        return value.item()
    return "none" if value is None else str(value)


class NullLogger:
    """RunLogger's interface, writing nothing: the logger of every rank but 0 in a
    distributed run (rank 0 alone writes the run's TensorBoard events)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def trace_for_graph(model: nn.Module, example_input: Tensor) -> torch.jit.ScriptModule:
    """The model traced in eval mode, as add_graph traces it, but without trace checking."""
    was_training = model.training
    model.eval()
    try:
        return torch.jit.trace(model, example_input, check_trace=False)
    finally:
        model.train(was_training)
