"""Matrix products: matmul (with broadcast batch dims), linear (y = x Wᵀ + b), and linear
with its activation as one op (y = f(x Wᵀ + b) for relu, sigmoid and tanh)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .elementwise import relu_grad, sigmoid_grad, tanh_grad
from .function import Op, save_crosswise, save_for_jvp, unbroadcast


class Matmul(Op):
    """y = a @ b   (batch dims broadcast; a 1-D operand acts as a row / column vector)

    saves:    b if a needs a gradient, a if b does (each serves only the other's)
    backward: dL/da = unbroadcast(g @ bᵀ),  dL/db = unbroadcast(aᵀ @ g)
    jvp:      ẏ = ȧ @ b + a @ ḃ
    """

    autocast = "lower"

    @staticmethod
    def forward(a, b):
        return torch.matmul(a, b)

    @staticmethod
    def setup_context(ctx, inputs, output):
        save_crosswise(ctx, *inputs)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        a_shape, b_shape = ctx.shapes
        # torch.matmul reads a 1-D a as a row (1, k) and a 1-D b as a column (k, 1);
        # g lost those unit dims, so put them back before the products
        a_rows = a_shape if len(a_shape) > 1 else (1, *a_shape)
        b_cols = b_shape if len(b_shape) > 1 else (*b_shape, 1)
        g = g.unsqueeze(-1) if len(b_shape) == 1 else g
        g = g.unsqueeze(-2) if len(a_shape) == 1 else g
        # (sizes passed as separate ints: torch parses a torch.Size ~1 µs slower, see unbroadcast)
        da = unbroadcast(g @ b.reshape(*b_cols).mT, a_rows).reshape(*a_shape) if ctx.needs_input_grad[0] else None
        db = unbroadcast(a.reshape(*a_rows).mT @ g, b_cols).reshape(*b_shape) if ctx.needs_input_grad[1] else None
        return da, db

    @staticmethod
    def jvp(ctx, da, db):
        a, b = ctx.saved_for_forward
        return da @ b + a @ db


def batch_rows(t: torch.Tensor) -> torch.Tensor:
    """(*, n) as (rows, n): every leading dim of a linear layer's input is a batch dim, so
    one matrix product gᵀ x over the rows sums dL/dW over all of them. The usual (N, n)
    comes back as it is, with no reshape (this runs in every backward of every layer).
    (Explicit rows, not -1: a (0, 0) tensor has no unique -1.)"""
    return t if t.dim() == 2 else t.reshape(math.prod(t.shape[:-1]), t.shape[-1])


class Linear(Op):
    """y = x Wᵀ + b   (x: (*, in), W: (out, in), b: (out,) or None)

    saves:    W if x needs a gradient, x if W does (b is never needed: dy/db = 1)
    backward: dL/dx = g W,  dL/dW = Σ_batch gᵀ x,  dL/db = Σ_batch g
    jvp:      ẏ = ẋ Wᵀ + x Ẇᵀ + ḃ
    """

    autocast = "lower"

    @staticmethod
    def forward(x, weight, bias):
        return F.linear(x, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        save_linear(ctx, *inputs)

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        return linear_grads(ctx, g, x, weight)

    @staticmethod
    def jvp(ctx, dx, dweight, dbias):
        x, weight = ctx.saved_for_forward
        return linear_jvp(x, weight, dx, dweight, dbias)


def save_linear(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, *more: Tensor) -> None:
    """Saves for y = x Wᵀ + b, and `more` (an activation's output) after them: W only if
    x needs a gradient, x only if W does, as torch's own autograd does."""
    need_dx, need_dweight, _ = ctx.needs_input_grad
    ctx.bias_shape = None if bias is None else bias.shape
    ctx.save_for_backward(x if need_dweight else None, weight if need_dx else None, *more)
    save_for_jvp(ctx, x, weight, *more)


def linear_grads(ctx: Any, g: Tensor, x: Tensor | None, weight: Tensor | None) -> tuple:
    """dL/dx = g W,  dL/dW = Σ_batch gᵀ x,  dL/db = Σ_batch g, each only if needed."""
    need_dx, need_dweight, need_dbias = ctx.needs_input_grad
    # the bias sum and the views first, the matrix products last: Python run right after
    # a large product finds the caches swept by it and runs slower (benchmarks/RESULTS.md)
    dbias = unbroadcast(g, ctx.bias_shape) if need_dbias else None
    g_rows, x_rows = (batch_rows(g), batch_rows(x)) if need_dweight else (None, None)
    dx = g @ weight if need_dx else None
    dweight = g_rows.mT @ x_rows if need_dweight else None
    return dx, dweight, dbias


def linear_jvp(x: Tensor, weight: Tensor, dx: Tensor, dweight: Tensor, dbias: Tensor | None) -> Tensor:
    """ẏ = ẋ Wᵀ + x Ẇᵀ + ḃ"""
    dy = dx @ weight.mT + x @ dweight.mT
    return dy if dbias is None else dy + dbias


# ---------------------------------------------------------------- a linear layer and its activation as one op
# y = f(x Wᵀ + b) as one Function: f runs in place on the product's fresh output (no
# second tensor of activations) and autograd runs one node where it would run two. The
# chain rule through z = x Wᵀ + b: dz = dL/dz = f'(z) · g, computed from y as f's own
# op computes it, then Linear's three products with dz in place of g.


class LinearRelu(Op):
    """y = relu(x Wᵀ + b)

    saves:    as Linear, and y
    backward: dL/dx = dz W,  dL/dW = Σ_batch dzᵀ x,  dL/db = Σ_batch dz,  where dz = dL/dz = g · [y > 0]
    jvp:      ẏ = [y > 0] · (ẋ Wᵀ + x Ẇᵀ + ḃ)
    """

    autocast = "lower"

    @staticmethod
    def forward(x, weight, bias):
        return F.linear(x, weight, bias).relu_()

    @staticmethod
    def setup_context(ctx, inputs, output):
        save_linear(ctx, *inputs, output)

    @staticmethod
    def backward(ctx, g):
        x, weight, y = ctx.saved_tensors
        return linear_grads(ctx, relu_grad(y, g), x, weight)

    @staticmethod
    def jvp(ctx, dx, dweight, dbias):
        x, weight, y = ctx.saved_for_forward
        return torch.sign(y) * linear_jvp(x, weight, dx, dweight, dbias)


class LinearSigmoid(Op):
    """y = σ(x Wᵀ + b)

    saves:    as Linear, and y
    backward: dL/dx = dz W,  dL/dW = Σ_batch dzᵀ x,  dL/db = Σ_batch dz,  where dz = dL/dz = g · y (1 − y)
    jvp:      ẏ = y (1 − y) · (ẋ Wᵀ + x Ẇᵀ + ḃ)
    """

    autocast = "lower"

    @staticmethod
    def forward(x, weight, bias):
        return F.linear(x, weight, bias).sigmoid_()

    @staticmethod
    def setup_context(ctx, inputs, output):
        save_linear(ctx, *inputs, output)

    @staticmethod
    def backward(ctx, g):
        x, weight, y = ctx.saved_tensors
        return linear_grads(ctx, sigmoid_grad(y, g), x, weight)

    @staticmethod
    def jvp(ctx, dx, dweight, dbias):
        x, weight, y = ctx.saved_for_forward
        return y * (1 - y) * linear_jvp(x, weight, dx, dweight, dbias)


class LinearTanh(Op):
    """y = tanh(x Wᵀ + b)

    saves:    as Linear, and y
    backward: dL/dx = dz W,  dL/dW = Σ_batch dzᵀ x,  dL/db = Σ_batch dz,  where dz = dL/dz = g · (1 − y²)
    jvp:      ẏ = (1 − y²) · (ẋ Wᵀ + x Ẇᵀ + ḃ)
    """

    autocast = "lower"

    @staticmethod
    def forward(x, weight, bias):
        return F.linear(x, weight, bias).tanh_()

    @staticmethod
    def setup_context(ctx, inputs, output):
        save_linear(ctx, *inputs, output)

    @staticmethod
    def backward(ctx, g):
        x, weight, y = ctx.saved_tensors
        return linear_grads(ctx, tanh_grad(y, g), x, weight)

    @staticmethod
    def jvp(ctx, dx, dweight, dbias):
        x, weight, y = ctx.saved_for_forward
        return (1 - y * y) * linear_jvp(x, weight, dx, dweight, dbias)
