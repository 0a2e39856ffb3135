"""The op database: every public op, its torch twin, its derivative and its sample inputs.

One row per op, declarative, as PyTorch's OpInfo database and derivatives.yaml are: the
test suite walks OP_DB, so adding an op means adding a row here, and every check
(gradcheck, gradgradcheck, forward AD, vmap, the twin's values and gradients, dtypes,
saved memory, stability, torch.compile) covers it at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from . import elementwise as E
from . import functional as C
from . import fused as FU
from . import linalg as L
from . import losses as LS
from . import reductions as R
from .function import Op
from .testing import Sample

SampleGen = Callable[[], Iterator[Sample]]


@dataclass(frozen=True)
class OpInfo:
    name: str
    op: Callable  # the public function, custom_ops.<name>
    function: type[Op]  # its torch.autograd.Function
    reference: Callable  # the torch twin
    derivative: str  # the backward rule, one line of math
    sample_inputs: SampleGen  # typical, broadcast, batched, 0-d and empty inputs (float64)
    extreme_inputs: SampleGen | None = None  # saturating inputs that must stay finite
    saves_output_only: bool = False


# ---------------------------------------------------------------- sample makers

_gen = torch.Generator().manual_seed(0)


def make(*shape: int, low: float = -2.0, high: float = 2.0) -> torch.Tensor:
    return torch.rand(shape, generator=_gen, dtype=torch.float64) * (high - low) + low


def away_from_zero(*shape: int, low: float = 0.2, high: float = 2.0) -> torch.Tensor:
    """Values with |x| ≥ low: finite differences must not straddle a kink or a pole."""
    sign = torch.where(torch.rand(shape, generator=_gen) < 0.5, -1.0, 1.0).double()
    return sign * make(*shape, low=low, high=high)


def labels(*shape: int, num_classes: int) -> torch.Tensor:
    return torch.randint(num_classes, shape, generator=_gen)


UNARY_SHAPES = [(), (5,), (3, 4), (2, 3, 2), (0, 3)]
BROADCAST_PAIRS = [((3, 4), (3, 4)), ((3, 1, 4), (5, 4)), ((), (3,)), ((2, 3), ()), ((4,), (2, 1)), ((0, 3), (3,))]


def unary(maker: Callable[..., torch.Tensor] = make, **range_) -> SampleGen:
    def samples():
        for shape in UNARY_SHAPES:
            yield Sample((maker(*shape, **range_),))

    return samples


def binary(other: Callable[..., torch.Tensor] = make, alpha: bool = False, number: bool = True) -> SampleGen:
    def samples():
        for a, b in BROADCAST_PAIRS:
            yield Sample((make(*a), other(*b)))
        if number:  # torch.maximum, unlike torch.mul, takes no number
            yield Sample((make(3, 4), 2.5), desc="number operand")
        if alpha:
            yield Sample((make(3, 4), make(4)), {"alpha": -1.5})

    return samples


def pow_samples():
    for p in (2.0, 0.5, -1.5, 3, 0):
        yield Sample((make(3, 4, low=0.5, high=2.0), p))
    yield Sample((make(5, low=-2.0, high=2.0), 3))
    yield Sample((make(), 2.0))
    yield Sample((make(0, 2, low=0.5), 2.0))


def matmul_samples():
    for a, b in [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((2, 1, 3, 4), (5, 4, 2)), ((4,), (4, 5)),
                 ((2, 3, 4), (4,)), ((4,), (4,)), ((0, 4), (4, 3))]:  # fmt: skip
        yield Sample((make(*a), make(*b)))


def linear_samples():
    yield Sample((make(5, 4), make(3, 4), make(3)))
    yield Sample((make(2, 5, 4), make(3, 4), make(3)), desc="batched")
    yield Sample((make(4), make(3, 4), make(3)), desc="1-D input")
    yield Sample((make(5, 4), make(3, 4)), desc="no bias")
    yield Sample((make(0, 4), make(3, 4), make(3)), desc="empty batch")


def linear_activation_samples():
    """linear_samples, with inputs redrawn until every x Wᵀ + b is at least 0.05 from 0:
    finite differences must not straddle relu's kink."""
    for sample in linear_samples():
        args = sample.args
        while args[0].numel() and F.linear(*args).abs().min() < 0.05:
            args = tuple(make(*a.shape) for a in args)
        yield Sample(args, desc=sample.desc)


def linear_then(x, weight, bias=None, activation=None):
    """The torch twin of linear_relu and the like (activation 'relu', …) and of
    fused_linear_sgd's forward: F.linear, then torch's activation."""
    y = F.linear(x, weight, bias)
    return y if activation is None else getattr(torch, activation)(y)


def reduction_samples():
    yield Sample((make(3, 4),))
    yield Sample((make(3, 4), 1))
    yield Sample((make(2, 3, 4), (0, 2), True))
    yield Sample((make(2, 3, 4), (0, 1)))  # leading dims: g expands without unit dims
    yield Sample((make(2, 3, 4), -1))
    yield Sample((make(),))
    yield Sample((make(0, 3), 1))


def softmax_samples():
    yield Sample((make(3, 5), -1))
    yield Sample((make(2, 3, 4), 1))
    yield Sample((make(4), 0))
    yield Sample((make(), 0))
    yield Sample((make(0, 5), -1))


def softmax_extremes():
    yield Sample((torch.tensor([[1e4, 0.0, -1e4], [1e4, 1e4, 1e4], [-1e4, -1e4, 1e4]]), -1))


def loss_samples(target: Callable[..., torch.Tensor], shapes) -> SampleGen:
    def samples():
        for reduction in ("mean", "sum", "none"):
            yield Sample((make(5, 4), target(5, 4)), {"reduction": reduction})
        for shape in shapes:
            yield Sample((make(*shape), target(*shape)))

    return samples


def mse_samples():
    yield from loss_samples(make, [(5,), (), (0, 2)])()
    for x_shape, y_shape in (((5, 4), (4,)), ((5, 1), (5, 4))):  # torch broadcasts them (and warns)
        yield Sample((make(*x_shape), make(*y_shape)), desc="broadcast")


def cross_entropy_samples():
    for reduction in ("mean", "sum", "none"):
        yield Sample((make(5, 4), labels(5, num_classes=4)), {"reduction": reduction})
    yield Sample((make(2, 3, 4), labels(2, 4, num_classes=3)), desc="(N, C, d)")
    yield Sample((make(4), labels(num_classes=4)), desc="unbatched")
    yield Sample((make(0, 4), labels(0, num_classes=4)), {"reduction": "sum"}, desc="empty batch")


def cross_entropy_extremes():
    z = torch.tensor([[1e4, 0.0, -1e4], [-1e4, 1e4, 1e4], [1e4, 1e4, 1e4]])
    yield Sample((z, torch.tensor([0, 2, 1])))
    yield Sample((z, torch.tensor([2, 0, 0])), desc="targets on the losing logit")


def bce_extremes():
    z = torch.tensor([-1e4, -100.0, 0.0, 100.0, 1e4, 1e4, -1e4])
    yield Sample((z, torch.tensor([0.0, 1.0, 0.5, 0.0, 1.0, 0.0, 1.0])))


def saturating(*values: float) -> SampleGen:
    return lambda: iter([Sample((torch.tensor(values),))])


# ---------------------------------------------------------------- the database

OP_DB: list[OpInfo] = [
    OpInfo("add", C.add, E.Add, torch.add, "da = g, db = α g (unbroadcast)", binary(alpha=True)),
    OpInfo("sub", C.sub, E.Sub, torch.sub, "da = g, db = −α g (unbroadcast)", binary(alpha=True)),
    OpInfo("mul", C.mul, E.Mul, torch.mul, "da = g b, db = g a (unbroadcast)", binary()),
    OpInfo("div", C.div, E.Div, torch.div, "da = g / b, db = −g a / b² (unbroadcast)", binary(away_from_zero)),
    OpInfo("maximum", C.maximum, E.Maximum, torch.maximum,
           "da = g [a > b], db = g [b > a]; a tie splits g in halves", binary(number=False)),
    OpInfo("square", C.square, E.Square, torch.square, "dx = 2 x g", unary()),
    OpInfo("pow", C.pow, E.Pow, torch.pow, "dx = p x^(p−1) g", pow_samples),
    OpInfo("sin", C.sin, E.Sin, torch.sin, "dx = cos(x) g", unary()),
    OpInfo("cos", C.cos, E.Cos, torch.cos, "dx = −sin(x) g", unary()),
    OpInfo("exp", C.exp, E.Exp, torch.exp, "dx = y g", unary(), saves_output_only=True),
    OpInfo("log", C.log, E.Log, torch.log, "dx = g / x", unary(low=0.5, high=3.0)),
    OpInfo("tanh", C.tanh, E.Tanh, torch.tanh, "dx = (1 − y²) g", unary(),
           saturating(-1000.0, -30.0, 0.0, 30.0, 1000.0), saves_output_only=True),
    OpInfo("sigmoid", C.sigmoid, E.Sigmoid, torch.sigmoid, "dx = y (1 − y) g", unary(),
           saturating(-1000.0, -100.0, 0.0, 100.0, 1000.0), saves_output_only=True),
    OpInfo("relu", C.relu, E.Relu, torch.relu, "dx = [y > 0] g  (0 at x = 0)", unary(away_from_zero),
           saturating(-1e30, -1.0, 0.0, 1.0, 1e30), saves_output_only=True),
    OpInfo("matmul", C.matmul, L.Matmul, torch.matmul, "da = g bᵀ, db = aᵀ g (unbroadcast)", matmul_samples),
    OpInfo("linear", C.linear, L.Linear, F.linear, "dx = g W, dW = gᵀ x, db = Σ_batch g", linear_samples),
    OpInfo("linear_relu", C.linear_relu, L.LinearRelu, partial(linear_then, activation="relu"),
           "dx = dz W, dW = dzᵀ x, db = Σ_batch dz;  dz = [y > 0] g", linear_activation_samples),
    OpInfo("linear_sigmoid", C.linear_sigmoid, L.LinearSigmoid, partial(linear_then, activation="sigmoid"),
           "dx = dz W, dW = dzᵀ x, db = Σ_batch dz;  dz = y (1 − y) g", linear_activation_samples),
    OpInfo("linear_tanh", C.linear_tanh, L.LinearTanh, partial(linear_then, activation="tanh"),
           "dx = dz W, dW = dzᵀ x, db = Σ_batch dz;  dz = (1 − y²) g", linear_activation_samples),
    OpInfo("sum", C.sum, R.Sum, torch.sum, "dx = g copied along dim", reduction_samples),
    OpInfo("mean", C.mean, R.Mean, torch.mean, "dx = g / n copied along dim", reduction_samples),
    OpInfo("softmax", C.softmax, R.Softmax, F.softmax, "dx = y ⊙ (g − Σ g ⊙ y)", softmax_samples,
           softmax_extremes),
    OpInfo("log_softmax", C.log_softmax, R.LogSoftmax, F.log_softmax, "dx = g − eʸ Σ g", softmax_samples,
           softmax_extremes),
    OpInfo("cross_entropy", C.cross_entropy, LS.CrossEntropy, F.cross_entropy,
           "dz = (softmax(z) − onehot(t)) g", cross_entropy_samples, cross_entropy_extremes),
    OpInfo("binary_cross_entropy_with_logits", C.binary_cross_entropy_with_logits,
           LS.BinaryCrossEntropyWithLogits, F.binary_cross_entropy_with_logits, "dz = (σ(z) − y) g, dy = −z g",
           loss_samples(lambda *s: make(*s, low=0.0, high=1.0), [(5,), ()]), bce_extremes),
    OpInfo("mse_loss", C.mse_loss, LS.MSELoss, F.mse_loss, "dx = 2 (x − y) g, dy = −2 (x − y) g",
           mse_samples),
]  # fmt: skip

OPS_BY_NAME: dict[str, OpInfo] = {info.name: info for info in OP_DB}


# ---------------------------------------------------------------- fused training steps


@dataclass(frozen=True)
class FusedStepInfo:
    """An op whose backward also takes an optimizer's step on its parameters (every
    tensor argument after the first) and returns no gradient for them, so OP_DB's
    checks, which compare every input's gradient, cannot apply: tests/test_fused.py
    walks these rows instead (gradcheck of dL/dx, and the step against torch.optim.SGD
    on the reference's gradients)."""

    name: str
    op: Callable  # the public function, custom_ops.<name>(*sample.args, **sample.kwargs, lr=lr)
    function: type[torch.autograd.Function]
    reference: Callable  # the forward's torch twin, reference(*sample.args, **sample.kwargs)
    derivative: str
    sample_inputs: SampleGen  # (x, *parameters), float64


def fused_linear_sgd_samples():
    yield from linear_samples()
    for activation in FU.ACTIVATIONS:
        for sample in linear_activation_samples():
            yield Sample(sample.args, {"activation": activation}, f"{sample.desc} {activation}".strip())


FUSED_DB: list[FusedStepInfo] = [
    FusedStepInfo("fused_linear_sgd", FU.fused_linear_sgd, FU.LinearSGDStep, linear_then,
                  "dz = f'(z) g; dx = dz W; W ← W − lr dzᵀx, b ← b − lr Σ_batch dz", fused_linear_sgd_samples),
]  # fmt: skip
