"""Elementwise ops: y_i = f(x_i) or y_i = f(a_i, b_i), with torch's broadcasting.

Each docstring states the four parts of a differentiation rule: the primal, what is
saved for backward, the vector-Jacobian product (backward) and the Jacobian-vector
product (jvp). g is dL/dy, the gradient flowing in; ẋ is a tangent.
"""

from __future__ import annotations

import torch

from .function import Op, may_fuse, save_crosswise, save_for_jvp, scaled, unbroadcast

_ONE = torch.tensor(1.0)  # a CPU scalar: broadcasts into CPU addcmul at any dtype (CUDA refuses it as self)

# ---------------------------------------------------------------- binary, broadcasting


class Add(Op):
    """y = a + α·b

    saves:    nothing (only the shapes, to undo broadcasting)
    backward: dL/da = unbroadcast(g),  dL/db = α·unbroadcast(g)
    jvp:      ẏ = ȧ + α·ḃ
    """

    autocast = "as_is"

    @staticmethod
    def forward(a, b, alpha):
        return torch.add(a, b, alpha=alpha)

    @staticmethod
    def setup_context(ctx, inputs, output):
        a, b, ctx.alpha = inputs
        ctx.shapes = a.shape, b.shape

    @staticmethod
    def backward(ctx, g):
        a_shape, b_shape = ctx.shapes
        da = unbroadcast(g, a_shape) if ctx.needs_input_grad[0] else None
        db = scaled(unbroadcast(g, b_shape), ctx.alpha) if ctx.needs_input_grad[1] else None
        return da, db, None

    @staticmethod
    def jvp(ctx, da, db, _):
        return da + db * ctx.alpha


class Sub(Add):
    """y = a − α·b = a + (−α)·b: Add's rule with −α

    saves:    nothing (only the shapes)
    backward: dL/da = unbroadcast(g),  dL/db = −α·unbroadcast(g)
    jvp:      ẏ = ȧ − α·ḃ
    """

    autocast = "as_is"

    @staticmethod
    def forward(a, b, alpha):
        return torch.sub(a, b, alpha=alpha)

    @staticmethod
    def setup_context(ctx, inputs, output):
        a, b, alpha = inputs
        Add.setup_context(ctx, (a, b, -alpha), output)


class Mul(Op):
    """y = a · b

    saves:    b if a needs a gradient, a if b does (each factor serves only the other's)
    backward: dL/da = unbroadcast(g · b),  dL/db = unbroadcast(g · a)
    jvp:      ẏ = ȧ · b + a · ḃ
    """

    autocast = "as_is"

    @staticmethod
    def forward(a, b):
        return torch.mul(a, b)

    @staticmethod
    def setup_context(ctx, inputs, output):
        save_crosswise(ctx, *inputs)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        a_shape, b_shape = ctx.shapes
        da = unbroadcast(g * b, a_shape) if ctx.needs_input_grad[0] else None
        db = unbroadcast(g * a, b_shape) if ctx.needs_input_grad[1] else None
        return da, db

    @staticmethod
    def jvp(ctx, da, db):
        a, b = ctx.saved_for_forward
        return da * b + a * db


class Div(Op):
    """y = a / b

    saves:    b; a only if b needs a gradient
    backward: dL/da = unbroadcast(g / b),  dL/db = unbroadcast(−g · a / b²)
    jvp:      ẏ = ȧ / b − a · ḃ / b²
    """

    autocast = "as_is"

    @staticmethod
    def forward(a, b):
        return torch.div(a, b)

    @staticmethod
    def setup_context(ctx, inputs, output):
        a, b = inputs
        ctx.a_shape = a.shape
        ctx.save_for_backward(a if ctx.needs_input_grad[1] else None, b)
        save_for_jvp(ctx, a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        da = unbroadcast(g / b, ctx.a_shape) if ctx.needs_input_grad[0] else None
        db = unbroadcast(-g * a / (b * b), b.shape) if ctx.needs_input_grad[1] else None
        return da, db

    @staticmethod
    def jvp(ctx, da, db):
        a, b = ctx.saved_for_forward
        return da / b - a * db / (b * b)


class Maximum(Op):
    """y = max(a, b)

    saves:    a, b
    backward: dL/da = unbroadcast(g · [a > b]),  dL/db = unbroadcast(g · [b > a])
              At a tie, max is not differentiable; we take the subgradient that splits
              g evenly (½ to each, as torch does), so the two parts still sum to g.
    jvp:      ẏ = ȧ · w + ḃ · (1 − w),  w = [a > b] + ½[a = b]
    """

    autocast = "as_is"

    @staticmethod
    def forward(a, b):
        return torch.maximum(a, b)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)
        save_for_jvp(ctx, *inputs)

    @staticmethod
    def _weight_of_a(a, b, like):
        """∂y/∂a: 1 where a wins, ½ at a tie, 0 where b wins (then ∂y/∂b = 1 − that)."""
        return torch.where(a == b, 0.5, (a > b).to(like.dtype))

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        w = Maximum._weight_of_a(a, b, g)
        da = unbroadcast(g * w, a.shape) if ctx.needs_input_grad[0] else None
        db = unbroadcast(g * (1 - w), b.shape) if ctx.needs_input_grad[1] else None
        return da, db

    @staticmethod
    def jvp(ctx, da, db):
        a, b = ctx.saved_for_forward
        w = Maximum._weight_of_a(a, b, da)
        return da * w + db * (1 - w)


# ---------------------------------------------------------------- unary


class Square(Op):
    """y = x²

    saves:    x
    backward: dL/dx = g · 2x
    jvp:      ẏ = 2x · ẋ
    """

    autocast = "as_is"

    @staticmethod
    def forward(x):
        return torch.square(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)
        save_for_jvp(ctx, *inputs)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (2 * x)

    @staticmethod
    def jvp(ctx, dx):
        (x,) = ctx.saved_for_forward
        return dx * (2 * x)


class Pow(Op):
    """y = x^p  (p a number)

    saves:    x
    backward: dL/dx = g · p · x^(p−1)   (0 when p = 0: y is the constant 1)
    jvp:      ẏ = p · x^(p−1) · ẋ
    """

    autocast = "float32"

    @staticmethod
    def forward(x, p):
        return torch.pow(x, p)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, ctx.p = inputs
        ctx.save_for_backward(x)
        save_for_jvp(ctx, x)

    @staticmethod
    def _dy_dx(x, p):
        # p = 0 would give 0 · x^(−1), a NaN at x = 0, for the derivative of a constant
        return torch.zeros_like(x) if p == 0 else p * torch.pow(x, p - 1)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * Pow._dy_dx(x, ctx.p), None

    @staticmethod
    def jvp(ctx, dx, _):
        (x,) = ctx.saved_for_forward
        return dx * Pow._dy_dx(x, ctx.p)


class Sin(Op):
    """y = sin x

    saves:    x
    backward: dL/dx = g · cos x
    jvp:      ẏ = cos x · ẋ
    """

    autocast = "as_is"

    @staticmethod
    def forward(x):
        return torch.sin(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)
        save_for_jvp(ctx, *inputs)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        if may_fuse(g):
            return torch.cos(x).mul_(g)
        return g * torch.cos(x)

    @staticmethod
    def jvp(ctx, dx):
        (x,) = ctx.saved_for_forward
        return dx * torch.cos(x)


class Cos(Op):
    """y = cos x

    saves:    x
    backward: dL/dx = −g · sin x
    jvp:      ẏ = −sin x · ẋ
    """

    autocast = "as_is"

    @staticmethod
    def forward(x):
        return torch.cos(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)
        save_for_jvp(ctx, *inputs)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        if may_fuse(g):
            return torch.sin(x).mul_(g).neg_()
        return -g * torch.sin(x)

    @staticmethod
    def jvp(ctx, dx):
        (x,) = ctx.saved_for_forward
        return -dx * torch.sin(x)


class Exp(Op):
    """y = eˣ

    saves:    y (the output: dy/dx = eˣ = y, so x is not needed)
    backward: dL/dx = g · y
    jvp:      ẏ = y · ẋ
    """

    autocast = "float32"

    @staticmethod
    def forward(x):
        return torch.exp(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        save_for_jvp(ctx, output)

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * y

    @staticmethod
    def jvp(ctx, dx):
        (y,) = ctx.saved_for_forward
        return dx * y


class Log(Op):
    """y = ln x

    saves:    x
    backward: dL/dx = g / x
    jvp:      ẏ = ẋ / x
    """

    autocast = "float32"

    @staticmethod
    def forward(x):
        return torch.log(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)
        save_for_jvp(ctx, *inputs)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g / x

    @staticmethod
    def jvp(ctx, dx):
        (x,) = ctx.saved_for_forward
        return dx / x


class Tanh(Op):
    """y = tanh x

    saves:    y (the output)
    backward: dL/dx = g · (1 − y²)
    jvp:      ẏ = (1 − y²) · ẋ
    """

    autocast = "as_is"

    @staticmethod
    def forward(x):
        return torch.tanh(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        save_for_jvp(ctx, output)

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return tanh_grad(y, g)

    @staticmethod
    def jvp(ctx, dx):
        (y,) = ctx.saved_for_forward
        return dx * (1 - y * y)


class Sigmoid(Op):
    """y = σ(x) = 1 / (1 + e^(−x))

    saves:    y (the output)
    backward: dL/dx = g · y (1 − y)
    jvp:      ẏ = y (1 − y) · ẋ
    Stable: torch.sigmoid never forms e^(−x) for large −x, and y (1 − y) is 0, not NaN,
    when y saturates at 0 or 1.
    """

    autocast = "as_is"

    @staticmethod
    def forward(x):
        return torch.sigmoid(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        save_for_jvp(ctx, output)

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return sigmoid_grad(y, g)

    @staticmethod
    def jvp(ctx, dx):
        (y,) = ctx.saved_for_forward
        return dx * y * (1 - y)


class Relu(Op):
    """y = max(x, 0)

    saves:    y (the output: y > 0 exactly where x > 0, and the next layer keeps y anyway)
    backward: dL/dx = g · [y > 0]   (at x = 0 we take the subgradient 0, as torch does)
    jvp:      ẏ = [y > 0] · ẋ
    """

    autocast = "as_is"

    @staticmethod
    def forward(x):
        return torch.relu(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        save_for_jvp(ctx, output)

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return relu_grad(y, g)

    @staticmethod
    def jvp(ctx, dx):
        (y,) = ctx.saved_for_forward
        return dx * torch.sign(y)


# ---------------------------------------------------------------- activation derivatives
# Each activation's backward, from its output y: shared by the ops above and by
# linear_relu, linear_sigmoid and linear_tanh (custom_ops.linalg). In place on one
# fresh temporary when may_fuse allows it, the plain formula otherwise.


def tanh_grad(y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """g · (1 − y²)"""
    if may_fuse(g):
        one = _ONE if y.is_cpu else y.new_ones(())
        return torch.addcmul(one, y, y, value=-1).mul_(g)  # (1 − y·y) · g, one temporary
    return g * (1 - y * y)


def sigmoid_grad(y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """g · y (1 − y)"""
    if may_fuse(g):
        return torch.addcmul(y, y, y, value=-1).mul_(g)  # (y − y·y) · g, one temporary
    return g * y * (1 - y)


def relu_grad(y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """g · [y > 0]"""
    # for y ≥ 0, sign(y) is exactly [y > 0] (0 at y = 0), as a float: one temporary
    if may_fuse(g):
        return torch.sign(y).mul_(g)
    return g * torch.sign(y)
