"""Fused steps: a linear layer whose backward also takes plain SGD's step.

A training step computes dL/dW = gᵀx, stores it in W.grad, and then the optimizer
reads it back to write W − lr·dL/dW: one more pass over every weight and gradient,
outside the matrix products (≈1 ms of a 25 ms 784→1024→1024→10 step here). Fusing the
update into the product, W ← W − lr·gᵀx as one `addmm_` (GEMM with β = 1, α = −lr),
leaves the step with only the matrix products it needs; the weight gradient never
exists as a tensor (the idea of LOMO, Lv et al. 2023). The price is what that tensor
was for: there is no W.grad to clip, log, all-reduce or feed to another optimizer.

With `activation`, the layer's activation (relu, sigmoid, tanh) runs in the same op, in
place on the product's fresh output, as in custom_ops.linear_relu and the like: backward
first turns g into dL/dz = f'(z) g, then steps with dL/dz.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .elementwise import relu_grad, sigmoid_grad, tanh_grad
from .function import call_backward_directly, unbroadcast
from .functional import check_linear_shapes
from .linalg import batch_rows


class LinearSGDStep(torch.autograd.Function):
    """y = f(x Wᵀ + b), f the identity or an activation (relu, sigmoid, tanh, run in place
    on the product's fresh output); backward returns dL/dx and steps W and b by plain SGD
    in place

    saves:    x, W and b (the parameters, to step them: no copies), and y if f is an activation
    backward: dz = f'(z) g                (from y as f's own op: [y > 0], y (1 − y), 1 − y²)
              dL/dx = dz W                (first: with W as forward saw it)
              W ← W − lr Σ_batch dzᵀ x    (one addmm_: dL/dW = Σ_batch dzᵀ x is never stored)
              b ← b − lr Σ_batch dz       (dL/db = Σ_batch dz)
              returns no gradient for W or b: they have been used (lr = 0: no step)
    """

    @staticmethod
    def forward(x, weight, bias, lr, activation):
        z = F.linear(x, weight, bias)
        return z if activation is None else ACTIVATIONS[activation][0](z)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, ctx.lr, ctx.activation = inputs
        ctx.save_for_backward(x, weight, bias, None if ctx.activation is None else output)

    @staticmethod
    def backward(ctx, g):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "fused_linear_sgd: backward takes an SGD step in place, so it cannot build a graph for "
                "double backward (create_graph=True); use custom_ops.linear and an optimizer for that"
            )
        x, weight, bias, y = ctx.saved_tensors
        need_dx, need_dweight, need_dbias, _, _ = ctx.needs_input_grad
        if not ctx.lr:  # lr = 0: no step to take
            need_dweight = need_dbias = False
        dz = g if ctx.activation is None else ACTIVATIONS[ctx.activation][1](y, g)
        dz = dz.to(weight.dtype)  # under autocast g comes in the lower dtype; the step is in W's
        # everything else before the two matrix products, as in Linear.backward
        if need_dbias:
            bias.add_(unbroadcast(dz, bias.shape), alpha=-ctx.lr)
        dz_rows, x_rows = (batch_rows(dz), batch_rows(x).to(weight.dtype)) if need_dweight else (None, None)
        dx = dz @ weight if need_dx else None  # before W moves
        if need_dweight:
            weight.addmm_(dz_rows.mT, x_rows, alpha=-ctx.lr)
        return dx, None, None, None, None


# each activation: in place on a fresh tensor, and its derivative from its output
ACTIVATIONS = {"relu": (Tensor.relu_, relu_grad), "sigmoid": (Tensor.sigmoid_, sigmoid_grad),
               "tanh": (Tensor.tanh_, tanh_grad)}  # fmt: skip


_apply = super(torch.autograd.Function, LinearSGDStep).apply  # C++ apply: see function._dispatcher
call_backward_directly(LinearSGDStep)


def fused_linear_sgd(
    input: Tensor, weight: Tensor, bias: Tensor | None = None, *, lr: float, activation: str | None = None
) -> Tensor:
    """`linear(input, weight, bias)`, or with `activation` ('relu', 'sigmoid', 'tanh')
    `linear_relu(input, weight, bias)` and the like, whose backward also takes
    `torch.optim.SGD(lr=lr)`'s step (no momentum, no weight decay) on `weight` and `bias`,
    each only if it requires grad, instead of accumulating their `.grad`. Eager mode only,
    one backward per forward (a second finds W changed and raises, as autograd does for
    any in-place change of a saved tensor)."""
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        raise RuntimeError("fused_linear_sgd runs in eager mode only (not under torch.compile or torch.func)")
    check_learning_rate(lr)
    if activation is not None and activation not in ACTIVATIONS:
        raise ValueError(f"fused_linear_sgd: unknown activation {activation!r}: choose one of {', '.join(ACTIVATIONS)}")
    check_linear_shapes("fused_linear_sgd", input, weight)
    for name, param in (("weight", weight), ("bias", bias)):
        if param is not None and param.requires_grad and not param.is_leaf:
            raise ValueError(
                f"fused_linear_sgd: {name} is computed from other tensors (not a leaf): the step would "
                "change that result, not a parameter; pass the parameter itself"
            )
    return _apply(input, weight, bias, float(lr), activation)


def check_learning_rate(lr: object) -> None:
    if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr) and lr >= 0):
        raise ValueError(f"invalid learning rate {lr!r}: it must be a finite number ≥ 0")
