"""Losses, fused with their last step so the gradient is the short closed form.

reduction: 'none' keeps one loss per element, 'sum' adds them, 'mean' divides the sum
by their number. backward first turns g into dL/dloss_i (reduction_grad), which
broadcasts over the elements.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .function import Op, may_fuse, reduce_loss, reduction_grad, save_for_jvp, unbroadcast


_IGNORE_NOTHING = torch.iinfo(torch.int64).min
_REDUCTION_ENUM = {"none": 0, "mean": 1, "sum": 2}  # torch.nn._reduction.get_enum's numbering


def class_dim(logits: torch.Tensor) -> int:
    """torch's layout: (C,) unbatched, else (N, C, d1, …) with classes on dim 1."""
    return 0 if logits.dim() == 1 else 1


def one_hot(target: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[c = t] laid out like the logits: 1 at each target's class, 0 elsewhere."""
    dim = class_dim(like)
    classes = torch.arange(like.shape[dim], device=like.device).view(-1, *[1] * (like.dim() - dim - 1))
    return (target.unsqueeze(dim) == classes).to(like.dtype)  # a comparison batches under vmap; scatter_ does not


class CrossEntropy(Op):
    """ℓ = −log softmax(z)[t] = logsumexp(z) − z_t   (per sample; classes along dim 1)

    saves:    z, t (softmax is recomputed in backward: saving it from forward would make
              it a constant to autograd, and double backward wrong)
    backward: dL/dz = (softmax(z) − onehot(t)) · g
    jvp:      ℓ̇ = Σ_c (softmax(z) − onehot(t))_c · ż_c
    """

    autocast = "float32"

    @staticmethod
    def forward(z, target, reduction):
        # torch's cross-entropy kernel, the one F.cross_entropy ends in, without its Python
        # (as MSELoss); every target counts here: torch would silently skip targets equal to
        # its default ignore_index (−100), which our backward does not
        return torch._C._nn.cross_entropy_loss(z, target, None, _REDUCTION_ENUM[reduction], _IGNORE_NOTHING, 0.0)

    @staticmethod
    def setup_context(ctx, inputs, output):
        z, target, ctx.reduction = inputs
        ctx.save_for_backward(z, target)
        save_for_jvp(ctx, z, target)

    @staticmethod
    def _dloss_dz(z, target):
        return torch.softmax(z, class_dim(z)) - one_hot(target, z)

    @staticmethod
    def backward(ctx, g):
        z, target = ctx.saved_tensors
        dim = class_dim(z)
        g = reduction_grad(g, target.shape, ctx.reduction)
        g = g.unsqueeze(dim) if ctx.reduction == "none" else g  # one per sample: broadcast over classes
        if may_fuse(g):  # softmax, then −1 at each target, then · g: all in one fresh tensor
            return torch.softmax(z, dim).scatter_(dim, target.unsqueeze(dim), -1.0, reduce="add").mul_(g), None, None
        return CrossEntropy._dloss_dz(z, target) * g, None, None

    @staticmethod
    def jvp(ctx, dz, _, __):
        z, target = ctx.saved_for_forward
        dloss = (CrossEntropy._dloss_dz(z, target) * dz).sum(class_dim(z))
        return reduce_loss(dloss, ctx.reduction)


class BinaryCrossEntropyWithLogits(Op):
    """ℓ = −[y log σ(z) + (1 − y) log(1 − σ(z))] = max(z, 0) − z y + log(1 + e^(−|z|))

    saves:    z, y
    backward: dL/dz = (σ(z) − y) · g,   dL/dy = −z · g
    jvp:      ℓ̇ = (σ(z) − y) · ż − z · ẏ
    Stable at z = ±1e4: the right-hand form never exponentiates a positive number.
    """

    autocast = "float32"

    @staticmethod
    def forward(z, y, reduction):
        return F.binary_cross_entropy_with_logits(z, y, reduction=reduction)

    @staticmethod
    def setup_context(ctx, inputs, output):
        z, y, ctx.reduction = inputs
        ctx.save_for_backward(z, y)
        save_for_jvp(ctx, z, y)

    @staticmethod
    def backward(ctx, g):
        z, y = ctx.saved_tensors
        g = reduction_grad(g, z.shape, ctx.reduction)
        dz = dy = None
        if ctx.needs_input_grad[0]:
            dz = torch.sigmoid(z).sub_(y).mul_(g) if may_fuse(g) else (torch.sigmoid(z) - y) * g
        if ctx.needs_input_grad[1]:
            dy = -z * g
        return dz, dy, None

    @staticmethod
    def jvp(ctx, dz, dy, _):
        z, y = ctx.saved_for_forward
        return reduce_loss((torch.sigmoid(z) - y) * dz - z * dy, ctx.reduction)


class MSELoss(Op):
    """ℓ = (x − y)²   (x and y broadcast against each other, as torch allows)

    saves:    x, y
    backward: dL/dx = unbroadcast(2 (x − y) · g),   dL/dy = −unbroadcast(2 (x − y) · g)
    jvp:      ℓ̇ = 2 (x − y) · (ẋ − ẏ)
    """

    autocast = "float32"

    @staticmethod
    def forward(x, y, reduction):
        # torch's MSE kernel, the one F.mse_loss ends in; its Python before that (a size
        # warning, which the public function gives, and broadcast_tensors even for equal
        # shapes) was 3 µs of the 8 µs a 64×64 forward takes
        if x.shape != y.shape:
            x, y = torch.broadcast_tensors(x, y)
        return torch._C._nn.mse_loss(x, y, _REDUCTION_ENUM[reduction])

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, y, ctx.reduction = inputs
        ctx.save_for_backward(x, y)
        save_for_jvp(ctx, x, y)

    @staticmethod
    def backward(ctx, g):
        x, y = ctx.saved_tensors
        diff = x - y
        g = reduction_grad(g, diff.shape, ctx.reduction, scale=2.0)  # 2 g (/ n)
        d_diff = diff.mul_(g) if may_fuse(g) else diff * g
        dx = unbroadcast(d_diff, x.shape) if ctx.needs_input_grad[0] else None
        dy = -unbroadcast(d_diff, y.shape) if ctx.needs_input_grad[1] else None
        return dx, dy, None

    @staticmethod
    def jvp(ctx, dx, dy, _):
        x, y = ctx.saved_for_forward
        return reduce_loss(2 * (x - y) * (dx - dy), ctx.reduction)
