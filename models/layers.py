"""Layers whose forward pass is made only of `custom_ops` functions.

Each layer is the twin of a torch.nn layer (same constructor, parameters, state-dict
keys and initialization), so a plain-PyTorch model loaded with the same weights must
compute the same values and gradients; the difference is that our derivatives are the
hand-derived ones in custom_ops.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

import custom_ops


class Linear(nn.Module):
    """y = x Wᵀ + b, the twin of nn.Linear (W: (out_features, in_features))."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype)) if bias else None
        self.fused_sgd_lr: float | None = None
        """When set, backward takes plain SGD's step on W and b itself, with this
        learning rate, and leaves no .grad (custom_ops.fused_linear_sgd)."""
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Linear's initialization, drawing from the RNG in the same order, so that
        the same seed gives the same weights as nn.Linear: W, b ~ U(−1/√in, 1/√in)
        (kaiming_uniform_ with a = √5 works out to that bound for W)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def zero_parameters(self) -> None:
        """All weights and biases 0: the homework's `--init zero`."""
        with torch.no_grad():
            self.weight.zero_()
            if self.bias is not None:
                self.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        if self.fused_sgd_lr is not None and torch.is_grad_enabled():
            return custom_ops.fused_linear_sgd(x, self.weight, self.bias, lr=self.fused_sgd_lr)
        return custom_ops.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        fused = "" if self.fused_sgd_lr is None else f", fused_sgd_lr={self.fused_sgd_lr}"
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}{fused}"


class Sigmoid(nn.Module):
    """σ(z) = 1 / (1 + e^(−z)); σ'(z) = σ(z)(1 − σ(z)) ≤ 1/4, so deep sigmoid stacks
    shrink gradients (training logs the mean of σ' to show that saturation)."""

    def forward(self, x: Tensor) -> Tensor:
        return custom_ops.sigmoid(x)


class Tanh(nn.Module):
    """tanh(z); tanh'(z) = 1 − tanh²(z)."""

    def forward(self, x: Tensor) -> Tensor:
        return custom_ops.tanh(x)


class ReLU(nn.Module):
    """max(z, 0); its subgradient is 0 for z ≤ 0, so a unit that is never positive
    learns nothing (a dead unit: training logs how many there are)."""

    def forward(self, x: Tensor) -> Tensor:
        return custom_ops.relu(x)


ACTIVATIONS: dict[str, type[nn.Module]] = {"sigmoid": Sigmoid, "tanh": Tanh, "relu": ReLU}


def make_activation(name: str) -> nn.Module:
    """The activation module called `name` ('sigmoid', 'tanh' or 'relu')."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}: choose one of {', '.join(ACTIVATIONS)}") from None
