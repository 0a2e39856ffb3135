"""Per-layer diagnostics that follow from the derivatives the backward pass multiplies by.

Backprop through an activation multiplies the gradient by its derivative, so:
  sigmoid: σ'(z) = σ(z)(1 − σ(z)) ≤ 1/4, near 0 when units saturate → vanishing gradients;
  tanh:    tanh'(z) = 1 − tanh²(z), near 0 when saturated;
  relu:    the subgradient is 0 where z ≤ 0; a unit that is 0 on every sample is dead
           (no gradient ever reaches its incoming weights).
These are read from the activations' outputs (σ' and tanh' are functions of the output;
relu's output is 0 exactly where z ≤ 0) by forward hooks during an evaluation pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from models import Linear, ReLU, Sigmoid, Tanh


def linear_layers(model: nn.Module) -> list[Linear]:
    """The model's Linear layers in order: layer1 is the first."""
    return [module for module in model.modules() if isinstance(module, Linear)]


class ActivationMonitor:
    """Accumulates activation statistics over every batch run inside `recording()`."""

    def __init__(self, model: nn.Module) -> None:
        # an activation belongs to the Linear layer just before it
        self.activations: list[tuple[str, nn.Module]] = []
        layer = 0
        for module in model.modules():
            if isinstance(module, Linear):
                layer += 1
            elif isinstance(module, (Sigmoid, Tanh, ReLU)):
                self.activations.append((f"layer{layer}", module))
        self._sums: dict[str, Tensor] = {}
        self._counts: dict[str, int] = {}
        self._ever_active: dict[str, Tensor] = {}

    @contextmanager
    def recording(self) -> Iterator[None]:
        self._sums, self._counts, self._ever_active = {}, {}, {}
        handles = [module.register_forward_hook(self._hook(name)) for name, module in self.activations]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, layer: str):
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            out = output.detach().reshape(-1, output.shape[-1])
            if isinstance(module, Sigmoid):
                self._add(f"{layer}/sigmoid_mean_derivative", (out * (1 - out)).sum(), out.numel())
            elif isinstance(module, Tanh):
                self._add(f"{layer}/tanh_mean_derivative", (1 - out * out).sum(), out.numel())
            else:
                inactive = out <= 0
                self._add(f"{layer}/relu_zero_grad_fraction", inactive.sum(), out.numel())
                active = (~inactive).any(dim=0)
                previous = self._ever_active.get(layer)
                self._ever_active[layer] = active if previous is None else previous | active

        return hook

    def _add(self, key: str, total: Tensor, count: int) -> None:
        self._sums[key] = self._sums.get(key, 0) + total.double()
        self._counts[key] = self._counts.get(key, 0) + count

    def combine(self, add_up: Callable[[Tensor], Tensor], any_of: Callable[[Tensor], Tensor]) -> None:
        """Make this recording's statistics those of several monitors that each saw a
        shard of the data (`training.distributed` passes all-reduces): sums and counts
        add up, element by element (`add_up`); a unit was active if it was active in
        any shard (`any_of`, given 0/1 ints)."""
        keys = sorted(self._sums)
        if keys:
            sums = add_up(torch.stack([self._sums[key].double() for key in keys]))
            counts = add_up(torch.tensor([self._counts[key] for key in keys], dtype=torch.float64))
            self._sums = dict(zip(keys, sums, strict=True))
            self._counts = {key: round(count) for key, count in zip(keys, counts.tolist(), strict=True)}
        for layer, active in sorted(self._ever_active.items()):
            self._ever_active[layer] = any_of(active.to(torch.int32)).bool()

    def summary(self) -> dict[str, float]:
        """{'layer1/sigmoid_mean_derivative': …, 'layer1/relu_dead_fraction': …} for the recording."""
        stats = {key: (self._sums[key] / max(self._counts[key], 1)).item() for key in self._sums}
        for layer, active in self._ever_active.items():
            stats[f"{layer}/relu_dead_fraction"] = 1.0 - active.double().mean().item()
        return dict(sorted(stats.items()))


def layer_grad_norms(layers: list[Linear]) -> Tensor:
    """‖∇(W, b)‖₂ of each layer, as one tensor on the parameters' device (no sync)."""
    norms = []
    for layer in layers:
        grads = [p.grad for p in layer.parameters() if p.grad is not None]
        if not grads:
            norms.append(torch.zeros((), device=layer.weight.device))
            continue
        norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
    return torch.stack(norms)
