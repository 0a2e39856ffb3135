"""A gallery of deliberately broken autograd.Functions, one classic mistake each.

`check_function` must catch every one with the right message (tests/test_check_function.py),
and pass `GoodSigmoid`, written the way every op of custom_ops is. The command line test
loads this file as a user's module: `python -m custom_ops.check tests/broken_ops.py:WrongSignSin`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable


class GoodSigmoid(torch.autograd.Function):
    """The right way: forward + setup_context, save_for_backward, backward and jvp from the saved output."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return torch.sigmoid(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * y * (1 - y)

    @staticmethod
    def jvp(ctx, dx):
        (y,) = ctx.saved_for_forward
        return dx * y * (1 - y)


class _Sin(torch.autograd.Function):
    """A correct sin, the base the broken ones below change one thing of."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return torch.sin(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.save_for_forward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.cos(x)

    @staticmethod
    def jvp(ctx, dx):
        (x,) = ctx.saved_for_forward
        return dx * torch.cos(x)


class WrongSignSin(_Sin):
    """backward returns −cos(x) g: the sign of the derivative is wrong."""

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return -g * torch.cos(x)


class HalfSquare(torch.autograd.Function):
    """y = x², but backward forgot the factor 2."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x * x

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.save_for_forward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * x

    @staticmethod
    def jvp(ctx, dx):
        (x,) = ctx.saved_for_forward
        return 2 * x * dx


class MissingJvpSin(torch.autograd.Function):
    """Right backward, no jvp: forward-mode AD (torch.func.jvp, jacfwd) cannot run."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return torch.sin(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.cos(x)


class CtxTensorTanh(torch.autograd.Function):
    """Keeps 1 − y² on ctx as an attribute: computed without grad, it is a constant to double backward."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return torch.tanh(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.dy_dx = 1 - output * output  # the mistake: a tensor on ctx, not ctx.save_for_backward
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.dy_dx

    @staticmethod
    def jvp(ctx, dx):
        (y,) = ctx.saved_for_forward
        return dx * (1 - y * y)


class CtxInputTanh(CtxTensorTanh):
    """Keeps the input on ctx: double backward happens to work, the saved-tensor checks do not."""

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.x = inputs[0]
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, g):
        return g * (1 - torch.tanh(ctx.x) ** 2)


class WrongGradCountScale(torch.autograd.Function):
    """y = k·x for a number k; backward returns one gradient for two inputs."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, k):
        return x * k

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.k = inputs[1]

    @staticmethod
    def backward(ctx, g):
        return g * ctx.k  # the mistake: should be `return g * ctx.k, None`

    @staticmethod
    def jvp(ctx, dx, dk):
        return dx * ctx.k


class OnceDifferentiableSin(_Sin):
    """@once_differentiable backward: first derivatives right, double backward lost."""

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.cos(x)


class UnstableSigmoid(torch.autograd.Function):
    """σ(x) = 1 / (1 + e^(−x)) and σ' = e^(−x) / (1 + e^(−x))²: e^(1000) = inf, inf / inf = NaN."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return 1 / (1 + torch.exp(-x))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.save_for_forward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        e = torch.exp(-x)
        return g * e / (1 + e) ** 2

    @staticmethod
    def jvp(ctx, dx):
        (x,) = ctx.saved_for_forward
        e = torch.exp(-x)
        return dx * e / (1 + e) ** 2


class Float32UpcastSin(_Sin):
    """forward computes in float64 and returns float64 for a float32 input."""

    @staticmethod
    def forward(x):
        return torch.sin(x.double())


class UpcastBackwardSin(_Sin):
    """backward returns a float64 gradient for a float32 input (autograd casts it back silently)."""

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return (g * torch.cos(x)).to(torch.float64)


class OldStyleSin(torch.autograd.Function):
    """forward(ctx, x): the old style, which torch.func (vmap, jacrev, jvp) refuses."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)
        return torch.sin(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.cos(x)

    @staticmethod
    def jvp(ctx, dx):
        (x,) = ctx.saved_for_forward
        return dx * torch.cos(x)


class NoVmapRuleSin(_Sin):
    """setup_context style, but neither generate_vmap_rule = True nor a vmap staticmethod."""

    generate_vmap_rule = False


@dataclass(frozen=True)
class Broken:
    """One gallery entry: the Function, its reference, and the row and words check_function must report."""

    function: type
    reference: object
    check: str  # the row that must fail
    message: str  # a regular expression its detail must match
    hint: str  # a regular expression its fix hint must match
    args: tuple = ()  # arguments after the tensor, e.g. the number of y = k·x


GALLERY = [
    Broken(WrongSignSin, torch.sin, "gradcheck", r"input 0 .*the gradient has the wrong sign", r"flip the sign"),
    Broken(HalfSquare, torch.square, "gradcheck", r"off by a factor of 0\.5", r"constant factors"),
    Broken(MissingJvpSin, torch.sin, "forward_ad", r"missing jvp", r"define a jvp staticmethod"),
    Broken(CtxTensorTanh, torch.tanh, "ctx_tensors", r"CtxTensorTanh keeps a tensor \(4, 5\) as ctx\.dy_dx "
           r"\(setup_context, line \d+: `ctx\.dy_dx = 1 - output \* output", r"ctx\.save_for_backward"),
    Broken(CtxTensorTanh, torch.tanh, "gradgradcheck",
           r"double backward mismatch.*a tensor kept on ctx \(ctx\.dy_dx\) is used in backward; "
           r"save it with ctx\.save_for_backward", r"ctx\.save_for_backward"),
    Broken(CtxInputTanh, torch.tanh, "ctx_tensors", r"keeps a tensor \(4, 5\) as ctx\.x", r"ctx\.save_for_backward"),
    Broken(WrongGradCountScale, None, "runs", r"wrong number of gradients.*expected 2, got 1",
           r"one gradient per forward input \(None for non-tensors\)", args=(2.5,)),
    Broken(OnceDifferentiableSin, torch.sin, "once_differentiable", r"OnceDifferentiableSin\.backward is "
           r"@once_differentiable", r"remove @once_differentiable"),
    Broken(OnceDifferentiableSin, torch.sin, "gradgradcheck", r"double backward mismatch.*@once_differentiable",
           r"remove @once_differentiable"),
    Broken(UnstableSigmoid, None, "finite", r"non-finite gradient of input 0 at x = .*-1000\b",
           r"stable formula"),
    Broken(UnstableSigmoid, torch.sigmoid, "finite", r"non-finite gradient of input 0 at x = .*-1000\b.*where the "
           r"reference's is finite", r"stable formula"),
    Broken(Float32UpcastSin, None, "float32", r"give a torch\.float64 output", r"keep the input dtype"),
    Broken(UpcastBackwardSin, torch.sin, "float32", r"UpcastBackwardSin\.backward returns a torch\.float64 gradient",
           r"keep the input dtype"),
    Broken(OldStyleSin, torch.sin, "setup_context", r"old style: OldStyleSin\.forward\(ctx, \.\.\.\)",
           r"split forward\(ctx, \.\.\.\) into forward\(\.\.\.\) \+ setup_context"),
    Broken(OldStyleSin, torch.sin, "vmap", r"refuses the Function: forward\(ctx, \.\.\.\) without setup_context",
           r"generate_vmap_rule = True"),
    Broken(NoVmapRuleSin, torch.sin, "vmap", r"neither generate_vmap_rule = True nor a vmap staticmethod",
           r"set generate_vmap_rule = True"),
]
