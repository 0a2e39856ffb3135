"""Fused steps: a linear layer whose backward also takes plain SGD's step.

A training step computes dL/dW = gᵀx, stores it in W.grad, and then the optimizer
reads it back to write W − lr·dL/dW: one more pass over every weight and gradient,
outside the matrix products (≈1 ms of a 25 ms 784→1024→1024→10 step here). Fusing the
update into the product, W ← W − lr·gᵀx as one `addmm_` (GEMM with β = 1, α = −lr),
leaves the step with only the matrix products it needs; the weight gradient never
exists as a tensor (the idea of LOMO, Lv et al. 2023). The price is what that tensor
was for: there is no W.grad to clip, log, all-reduce or feed to another optimizer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .function import call_backward_directly, unbroadcast
from .functional import check_linear_shapes
from .linalg import batch_rows


class LinearSGDStep(torch.autograd.Function):
    """y = x Wᵀ + b; backward returns dL/dx and steps W and b by plain SGD in place

    saves:    x, W and b (the parameters, to step them: no copies)
    backward: dL/dx = g W                 (first: with W as forward saw it)
              W ← W − lr Σ_batch gᵀ x     (one addmm_: dL/dW = Σ_batch gᵀ x is never stored)
              b ← b − lr Σ_batch g        (dL/db = Σ_batch g)
              returns no gradient for W or b: they have been used (lr = 0: no step)
    """

    @staticmethod
    def forward(x, weight, bias, lr):
        return F.linear(x, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, ctx.lr = inputs
        ctx.save_for_backward(x, weight, bias)

    @staticmethod
    def backward(ctx, g):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "fused_linear_sgd: backward takes an SGD step in place, so it cannot build a graph for "
                "double backward (create_graph=True); use custom_ops.linear and an optimizer for that"
            )
        x, weight, bias = ctx.saved_tensors
        need_dx, need_dweight, need_dbias, _ = ctx.needs_input_grad
        if not ctx.lr:  # lr = 0: no step to take
            need_dweight = need_dbias = False
        g = g.to(weight.dtype)  # under autocast g comes in the lower dtype; the step is in W's
        # everything else before the two matrix products, as in Linear.backward
        if need_dbias:
            bias.add_(unbroadcast(g, bias.shape), alpha=-ctx.lr)
        g_rows, x_rows = (batch_rows(g), batch_rows(x).to(weight.dtype)) if need_dweight else (None, None)
        dx = g @ weight if need_dx else None  # before W moves
        if need_dweight:
            weight.addmm_(g_rows.mT, x_rows, alpha=-ctx.lr)
        return dx, None, None, None


_apply = super(torch.autograd.Function, LinearSGDStep).apply  # C++ apply: see function._dispatcher
call_backward_directly(LinearSGDStep)


def fused_linear_sgd(input: Tensor, weight: Tensor, bias: Tensor | None = None, *, lr: float) -> Tensor:
    """`linear(input, weight, bias)` whose backward also takes `torch.optim.SGD(lr=lr)`'s
    step (no momentum, no weight decay) on `weight` and `bias`, each only if it requires
    grad, instead of accumulating their `.grad`. Eager mode only, one backward per
    forward (a second finds W changed and raises, as autograd does for any in-place
    change of a saved tensor)."""
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        raise RuntimeError("fused_linear_sgd runs in eager mode only (not under torch.compile or torch.func)")
    check_learning_rate(lr)
    check_linear_shapes("fused_linear_sgd", input, weight)
    for name, param in (("weight", weight), ("bias", bias)):
        if param is not None and param.requires_grad and not param.is_leaf:
            raise ValueError(
                f"fused_linear_sgd: {name} is computed from other tensors (not a leaf): the step would "
                "change that result, not a parameter; pass the parameter itself"
            )
    return _apply(input, weight, bias, float(lr))


def check_learning_rate(lr: object) -> None:
    if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr) and lr >= 0):
        raise ValueError(f"invalid learning rate {lr!r}: it must be a finite number ≥ 0")
