"""Matrix products: matmul (with broadcast batch dims) and linear (y = x Wᵀ + b)."""

from __future__ import annotations

import math

import torch

from .function import Op, save_crosswise, unbroadcast


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
        da = unbroadcast(g @ b.reshape(b_cols).mT, a_rows).reshape(a_shape) if ctx.needs_input_grad[0] else None
        db = unbroadcast(a.reshape(a_rows).mT @ g, b_cols).reshape(b_shape) if ctx.needs_input_grad[1] else None
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
        return torch.nn.functional.linear(x, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias = inputs
        need_dx, need_dweight, _ = ctx.needs_input_grad
        ctx.bias_shape = None if bias is None else bias.shape
        ctx.save_for_backward(x if need_dweight else None, weight if need_dx else None)
        ctx.save_for_forward(x, weight)

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        need_dx, need_dweight, need_dbias = ctx.needs_input_grad
        # the bias sum and the views first, the matrix products last: Python run right after
        # a large product finds the caches swept by it and runs slower (benchmarks/RESULTS.md)
        dbias = unbroadcast(g, ctx.bias_shape) if need_dbias else None
        g_rows, x_rows = (batch_rows(g), batch_rows(x)) if need_dweight else (None, None)
        dx = g @ weight if need_dx else None
        dweight = g_rows.mT @ x_rows if need_dweight else None
        return dx, dweight, dbias

    @staticmethod
    def jvp(ctx, dx, dweight, dbias):
        x, weight = ctx.saved_for_forward
        dy = dx @ weight.mT + x @ dweight.mT
        return dy if dbias is None else dy + dbias
