"""Loss and accuracy of a classifier over a whole split."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from models import Classifier


@dataclass
class Evaluation:
    loss: float  # mean loss per sample
    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total

    @property
    def error(self) -> float:
        return (self.total - self.correct) / self.total


@torch.no_grad()
def evaluate(model: Classifier, features: Tensor, labels: Tensor, batch_size: int = 8192) -> Evaluation:
    """Sum the per-sample losses batch by batch, then divide once: the exact mean."""
    loss_sum = torch.zeros((), dtype=torch.float64, device=features.device)
    correct = torch.zeros((), dtype=torch.int64, device=features.device)
    for start in range(0, len(labels), batch_size):
        x, y = features[start : start + batch_size], labels[start : start + batch_size]
        logits = model(x)
        loss_sum += model.loss(logits, y, reduction="sum").double()
        correct += (model.predict(logits) == y).sum()
    total = len(labels)
    return Evaluation(loss=loss_sum.item() / total, correct=int(correct.item()), total=total)
