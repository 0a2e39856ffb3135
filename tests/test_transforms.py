"""torch.func and torch.compile over the public ops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes

import custom_ops as C
from custom_ops import testing as T

# ---------------------------------------------------------------- broadcasting, as properties


@given(
    shapes=mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, min_side=0, max_side=3),
    name=st.sampled_from(["add", "sub", "mul", "div", "maximum"]),
    seed=st.integers(0, 2**16),
)
def test_binary_ops_broadcast_like_torch(shapes, name, seed):
    gen = torch.Generator().manual_seed(seed)
    a, b = (torch.rand(s, generator=gen, dtype=torch.float64) + 0.5 for s in shapes.input_shapes)
    T.check_matches_reference(getattr(C, name), getattr(torch, name), T.Sample((a, b)))


@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4), data=st.data())
def test_reductions_over_any_dims_like_torch(shape, data):
    dims = data.draw(st.lists(st.integers(-len(shape), len(shape) - 1), unique_by=lambda d: d % len(shape)))
    keepdim = data.draw(st.booleans())
    x = torch.randn(shape, dtype=torch.float64)
    for name in ("sum", "mean"):
        T.check_matches_reference(getattr(C, name), getattr(torch, name), T.Sample((x, tuple(dims), keepdim)))


# ---------------------------------------------------------------- torch.func


def test_per_sample_gradients_with_vmap_of_grad_equal_a_loop():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    target = torch.randint(3, (6,), generator=gen)
    params = (torch.randn(3, 4, generator=gen, dtype=torch.float64), torch.randn(3, generator=gen, dtype=torch.float64))

    def loss(params, x, target):
        weight, bias = params
        return C.cross_entropy(C.linear(x.unsqueeze(0), weight, bias), target.unsqueeze(0))

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, target)
    for i in range(len(x)):
        looped = torch.func.grad(loss)(params, x[i], target[i])
        for batched, single in zip(per_sample, looped):
            torch.testing.assert_close(batched[i], single)


def test_second_derivative_through_torch_func_is_not_zero():
    """@once_differentiable would make grad(grad(f)) silently zero; our backward is differentiable."""
    x = torch.tensor(0.7, dtype=torch.float64)
    d2 = torch.func.grad(torch.func.grad(C.sigmoid))(x)
    s = torch.sigmoid(x)
    torch.testing.assert_close(d2, s * (1 - s) * (1 - 2 * s))


# ---------------------------------------------------------------- torch.compile


def every_op(x, y, weight, bias, labels, probs):
    """All public ops, composed; returns a scalar."""
    a = C.div(C.mul(C.sub(C.add(x, y, alpha=0.5), 1.0), y), C.add(C.exp(y), 1.0))
    a = C.add(C.maximum(a, C.sin(x)), C.cos(x))
    a = C.log(C.add(C.pow(C.add(C.square(a), 1.0), 0.5), 1.0))
    a = C.relu(C.sub(C.sigmoid(C.tanh(a)), 0.3))
    logits = C.linear(a, weight, bias)
    scores = C.matmul(logits, weight)
    losses = [
        C.cross_entropy(logits, labels),
        C.binary_cross_entropy_with_logits(logits, probs, reduction="sum"),
        C.mse_loss(scores, x),
        C.mean(C.softmax(logits, dim=0), dim=1).sum(),
        C.sum(C.log_softmax(logits), dim=(0, 1)),
    ]
    total = losses[0]
    for loss in losses[1:]:
        total = C.add(total, loss)
    return total


def every_op_inputs():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 3, generator=gen), torch.randn(4, 3, generator=gen)
    weight, bias = torch.randn(5, 3, generator=gen), torch.randn(5, generator=gen)
    labels, probs = torch.randint(5, (4,), generator=gen), torch.rand(4, 5, generator=gen)
    return [t.requires_grad_() if t.is_floating_point() else t for t in (x, y, weight, bias, labels, probs)]


def test_every_op_compiles_fullgraph_and_matches_eager():
    torch._dynamo.reset()
    eager_inputs, compiled_inputs = every_op_inputs(), every_op_inputs()
    eager = every_op(*eager_inputs)
    compiled = torch.compile(every_op, fullgraph=True, backend="aot_eager")(*compiled_inputs)
    torch.testing.assert_close(compiled, eager)
    eager.backward()
    compiled.backward()
    for e, c in zip(eager_inputs, compiled_inputs):
        if e.requires_grad:
            torch.testing.assert_close(c.grad, e.grad)


def test_mlp_training_step_compiles_fullgraph_with_inductor():
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    x, labels = torch.randn(16, 8, generator=gen), torch.randint(3, (16,), generator=gen)
    init = [torch.randn(12, 8, generator=gen) * 0.3, torch.zeros(12), torch.randn(3, 12, generator=gen) * 0.3, torch.zeros(3)]

    def loss_of(params, x, labels):
        w1, b1, w2, b2 = params
        return C.cross_entropy(C.linear(C.sigmoid(C.linear(x, w1, b1)), w2, b2), labels)

    def train_step(loss_fn):
        params = [p.clone().requires_grad_() for p in init]
        loss = loss_fn(params, x, labels)
        loss.backward()
        with torch.no_grad():
            for p in params:
                p -= 0.1 * p.grad
        return loss, params

    eager_loss, eager_params = train_step(loss_of)
    compiled_loss, compiled_params = train_step(torch.compile(loss_of, fullgraph=True))
    torch.testing.assert_close(compiled_loss, eager_loss)
    for c, e in zip(compiled_params, eager_params):
        torch.testing.assert_close(c, e)
    # the same computation written with torch's own ops gives the same loss
    w1, b1, w2, b2 = init
    torch.testing.assert_close(eager_loss, F.cross_entropy(F.linear(torch.sigmoid(F.linear(x, w1, b1)), w2, b2), labels))


def test_compiled_ops_still_support_forward_ad_in_eager():
    """The compile twin has no jvp; eager calls must still reach the class that has one."""
    x = torch.randn(3, dtype=torch.float64)
    _, tangent = torch.func.jvp(C.sigmoid, (x,), (torch.ones_like(x),))
    torch.testing.assert_close(tangent, torch.sigmoid(x) * (1 - torch.sigmoid(x)))
