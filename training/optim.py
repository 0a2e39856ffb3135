"""Adam and SGD for train.py: the updates torch.optim.Adam and torch.optim.SGD make
(Adam with all settings but lr, betas and eps at their defaults; SGD without momentum or
weight decay), written with foreach ops, with torch.optim's state-dict format, so a
checkpoint's optimizer state loads into either.

Why not torch.optim itself: every torch.optim optimizer imports torch._dynamo at its
first use (its methods are wrapped in torch._disable_dynamo, and `step` imports it on
every call), and that import took 0.9 s on a 2-core machine: 40 % of a fresh
`python train.py` until the model reached 97 % on digits. tests/test_optim.py checks
these updates against torch.optim's, bit for bit on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor


class Optimizer:
    """What train.py uses of torch.optim.Optimizer: `param_groups` (one group), `state`,
    `zero_grad`, `step`, `state_dict` and `load_state_dict`."""

    defaults: dict[str, Any]  # the options this optimizer takes, with their defaults
    fixed: dict[str, Any]  # torch.optim's other options, at the values this update implements
    state_keys: tuple[str, ...] = ()  # what the state of a parameter holds once it has been stepped

    def __init__(self, params: Iterable[Tensor], **options: Any) -> None:
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        for p in params:
            if not p.is_leaf:
                raise ValueError("can't optimize a non-leaf Tensor")
            if not p.is_floating_point():
                raise ValueError(f"can only optimize floating-point tensors, got {p.dtype}")
        unknown = set(options) - set(self.defaults)
        if unknown:
            raise TypeError(f"{type(self).__name__} takes {sorted(self.defaults)}, not {sorted(unknown)}")
        self.param_groups: list[dict[str, Any]] = [{"params": params, **self.defaults, **options}]
        self.state: dict[Tensor, dict[str, Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.param_groups[0]["params"]:
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self.update(group, params, [p.grad for p in params])
        return loss

    def update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's format: state by parameter index, then the groups' options (all
        but torch.optim's implementation flags, foreach, fused and the like, which it
        sets to its defaults when it loads this)."""
        index = {p: i for i, p in enumerate(self.param_groups[0]["params"])}
        groups = [{**group, **self.fixed, "params": [index[p] for p in group["params"]]} for group in self.param_groups]
        return {"state": {index[p]: state for p, state in self.state.items()}, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Takes this class's state dicts and torch.optim's; refuses one whose options
        ask for an update this class does not make (ValueError)."""
        if len(state_dict["param_groups"]) != 1:
            raise ValueError(f"the state dict has {len(state_dict['param_groups'])} parameter groups, this optimizer 1")
        (saved,) = state_dict["param_groups"]
        params = self.param_groups[0]["params"]
        if len(saved["params"]) != len(params):
            raise ValueError(f"the state dict has {len(saved['params'])} parameters, this optimizer {len(params)}")
        name = type(self).__name__
        for key, value in self.fixed.items():
            if saved.get(key, value) != value:
                raise ValueError(f"the state dict sets {key}={saved[key]!r}; this {name} makes {key}={value!r} only")
        state = {}
        for p, index in zip(params, saved["params"]):
            if index in state_dict["state"]:
                saved_state = state_dict["state"][index]
                if sorted(saved_state) != sorted(self.state_keys):
                    raise ValueError(f"the state dict's state holds {sorted(saved_state)}, not {list(self.state_keys)}")
                state[p] = {key: self.placed(key, value, p) for key, value in saved_state.items()}
        self.state = state
        self.param_groups[0].update({key: saved[key] for key in self.defaults})

    @staticmethod
    def placed(key: str, value: Tensor, p: Tensor) -> Tensor:
        """As torch.optim loads state: the step count stays where it is (on the CPU), the
        rest goes to the parameter's device and dtype, and must have its shape."""
        if not isinstance(value, Tensor):
            raise ValueError(f"the state dict's {key} is a {type(value).__name__}, not a tensor")
        if key == "step":
            return value
        if value.shape != p.shape:
            raise ValueError(f"the state dict's {key} has shape {tuple(value.shape)}, its parameter {tuple(p.shape)}")
        return value.to(device=p.device, dtype=p.dtype)


class SGD(Optimizer):
    """θ ← θ − lr · g: torch.optim.SGD without momentum, dampening or weight decay."""

    defaults = {"lr": 1e-3}
    fixed = {"momentum": 0, "dampening": 0, "weight_decay": 0, "nesterov": False, "maximize": False}

    def update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        torch._foreach_add_(params, grads, alpha=-group["lr"])


class Adam(Optimizer):
    """Adam (Kingma and Ba), as torch.optim.Adam steps with its defaults beyond lr, betas, eps:

        t ← t + 1
        m ← β₁ m + (1 − β₁) g          (a lerp of m toward g)
        v ← β₂ v + (1 − β₂) g²
        θ ← θ − lr / (1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)

    State per parameter, as torch.optim names it: step (t, a 0-d tensor on the CPU),
    exp_avg (m), exp_avg_sq (v)."""

    defaults = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8}
    fixed = {"weight_decay": 0, "amsgrad": False, "maximize": False, "decoupled_weight_decay": False}
    state_keys = ("step", "exp_avg", "exp_avg_sq")

    def update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        (beta1, beta2), lr, eps = group["betas"], group["lr"], group["eps"]
        for p in params:
            if p not in self.state:
                self.state[p] = self.fresh_state(p)
        states = [self.state[p] for p in params]
        steps, m, v = ([state[key] for state in states] for key in self.state_keys)
        torch._foreach_add_(steps, 1)
        torch._foreach_lerp_(m, grads, 1 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, grads, grads, 1 - beta2)
        t = [step.item() for step in steps]
        denominators = torch._foreach_sqrt(v)
        torch._foreach_div_(denominators, [(1 - beta2**ti) ** 0.5 for ti in t])
        torch._foreach_add_(denominators, eps)
        torch._foreach_addcdiv_(params, m, denominators, [-lr / (1 - beta1**ti) for ti in t])

    @staticmethod
    def fresh_state(p: Tensor) -> dict[str, Tensor]:
        # torch.optim's dtype for the step count: float64 only under a float64 default dtype
        step_dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
        return {
            "step": torch.tensor(0.0, dtype=step_dtype),
            "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
            "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
        }
