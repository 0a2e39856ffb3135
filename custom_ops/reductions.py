"""Reductions along dims: sum, mean, softmax and log-softmax."""

from __future__ import annotations

import torch

from .function import Op, may_fuse, save_for_jvp


def reduced_dims(ndim: int, dim) -> tuple[int, ...]:
    """The dims that `dim` names, non-negative and sorted; None or () mean all of them.
    A dim out of range raises torch's IndexError (a 0-d tensor takes 0 or -1 and
    reduces nothing)."""
    if type(dim) is int:  # the common case, first: this runs on every call
        checked = check_dim(dim, ndim)
        return (checked,) if ndim else ()
    if dim is None or (isinstance(dim, (tuple, list)) and len(dim) == 0):
        return tuple(range(ndim))
    dims = sorted(check_dim(d, ndim) for d in ((dim,) if isinstance(dim, int) else dim))
    for first, second in zip(dims, dims[1:]):
        if first == second:
            raise RuntimeError(f"dim {first} appears multiple times in the list of dims")
    return tuple(dims) if ndim else ()


def check_dim(dim: int, ndim: int) -> int:
    """dim as a non-negative index into ndim dims, or torch's IndexError."""
    rank = max(ndim, 1)  # torch lets a 0-d tensor be indexed as if it had one dim
    if not -rank <= dim < rank:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-rank}, {rank - 1}], but got {dim})")
    return dim % rank


def expand_reduced(g, shape, dims, keepdim):
    """Copy g back along the reduced dims: the adjoint of a sum is a broadcast."""
    # expand aligns trailing dims, so g needs its unit dims back only where a reduced dim
    # follows a kept one; leading dims (a full reduction, a batch sum) expand as they are
    if not keepdim and dims and dims[-1] != len(dims) - 1:
        for d in dims:  # sorted, so each unit dim lands where its reduced dim was
            g = g.unsqueeze(d)
    # sizes as separate ints: torch parses a torch.Size argument ~1 µs slower (see unbroadcast)
    return g.expand(*shape) if shape else g


class Sum(Op):
    """y = Σ_dims x

    saves:    nothing (only the shape)
    backward: dL/dx = g copied along the summed dims
    jvp:      ẏ = Σ_dims ẋ
    """

    autocast = "float32"

    @staticmethod
    def forward(x, dims, keepdim):
        if len(dims) == x.dim() and not keepdim:  # every dim: torch parses no dim list
            return torch.sum(x)
        return torch.sum(x, dim=dims, keepdim=keepdim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, ctx.dims, ctx.keepdim = inputs
        ctx.shape = x.shape

    @staticmethod
    def backward(ctx, g):
        return expand_reduced(g, ctx.shape, ctx.dims, ctx.keepdim), None, None

    @staticmethod
    def jvp(ctx, dx, _, __):
        return torch.sum(dx, dim=ctx.dims, keepdim=ctx.keepdim)


class Mean(Op):
    """y = (1/n) Σ_dims x,   n = the number of elements reduced

    saves:    nothing (only the shape)
    backward: dL/dx = g / n copied along the reduced dims
    jvp:      ẏ = (1/n) Σ_dims ẋ
    """

    autocast = "float32"

    @staticmethod
    def forward(x, dims, keepdim):
        if len(dims) == x.dim() and not keepdim:  # every dim: torch parses no dim list
            return torch.mean(x)
        return torch.mean(x, dim=dims, keepdim=keepdim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, ctx.dims, ctx.keepdim = inputs
        ctx.shape = x.shape
        ctx.n = 1
        for d in ctx.dims:
            ctx.n *= x.shape[d]

    @staticmethod
    def backward(ctx, g):
        return expand_reduced(g / ctx.n, ctx.shape, ctx.dims, ctx.keepdim), None, None

    @staticmethod
    def jvp(ctx, dx, _, __):
        return torch.mean(dx, dim=ctx.dims, keepdim=ctx.keepdim)


class Softmax(Op):
    """y_i = e^(x_i − m) / Σ_j e^(x_j − m)   along dim (m = max x: the shift changes nothing
    but keeps e^(·) ≤ 1, so logits of 1e4 do not overflow)

    saves:    y (the output)
    backward: dL/dx = y ⊙ (g − Σ_dim g ⊙ y)        (J = diag(y) − y yᵀ)
    jvp:      ẏ = y ⊙ (ẋ − Σ_dim ẋ ⊙ y)
    """

    autocast = "float32"

    @staticmethod
    def forward(x, dim):
        return torch.softmax(x, dim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.dim = inputs[1]
        ctx.save_for_backward(output)
        save_for_jvp(ctx, output)

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        if may_fuse(g):  # g⊙y − y⊙Σ(g⊙y), in place on the fresh g⊙y
            gy = g * y
            return gy.addcmul_(y, gy.sum(ctx.dim, keepdim=True), value=-1), None
        return y * (g - (g * y).sum(ctx.dim, keepdim=True)), None

    @staticmethod
    def jvp(ctx, dx, _):
        (y,) = ctx.saved_for_forward
        return y * (dx - (dx * y).sum(ctx.dim, keepdim=True))


class LogSoftmax(Op):
    """y_i = x_i − m − log Σ_j e^(x_j − m)   along dim (m = max x, for stability)

    saves:    y (the output; softmax is e^y)
    backward: dL/dx = g − e^y ⊙ Σ_dim g
    jvp:      ẏ = ẋ − Σ_dim e^y ⊙ ẋ
    """

    autocast = "float32"

    @staticmethod
    def forward(x, dim):
        return torch.log_softmax(x, dim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.dim = inputs[1]
        ctx.save_for_backward(output)
        save_for_jvp(ctx, output)

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        if may_fuse(g):  # g − eʸ ⊙ Σg: one addcmul, written over the fresh eʸ
            softmax = torch.exp(y)
            return torch.addcmul(g, softmax, g.sum(ctx.dim, keepdim=True), value=-1, out=softmax), None
        return g - torch.exp(y) * g.sum(ctx.dim, keepdim=True), None

    @staticmethod
    def jvp(ctx, dx, _):
        (y,) = ctx.saved_for_forward
        return dx - (torch.exp(y) * dx).sum(ctx.dim, keepdim=True)
