"""custom_ops: autograd primitives with hand-derived derivatives.

Each op comes in two forms: the `torch.autograd.Function` class (`Sigmoid`) and a
function with its torch twin's signature (`sigmoid(x)` ~ `torch.sigmoid(x)`).
The op database in `custom_ops.registry` lists them all with their derivatives.

One more function fuses a training step into an op: `fused_linear_sgd(x, W, b, *, lr)`
is `linear(x, W, b)` whose backward also takes plain SGD's step on W and b in place
(`LinearSGDStep`; see custom_ops.fused), and with `activation='relu'` (or 'sigmoid',
'tanh') the same for `linear_relu(x, W, b)`.

Three ops join a linear layer and its activation: `linear_relu(x, W, b)` is
`relu(linear(x, W, b))` as one op, and `linear_sigmoid`, `linear_tanh` likewise; their
twins are those compositions. models.MLP runs its hidden layers with them.
"""

from .elementwise import Add, Cos, Div, Exp, Log, Maximum, Mul, Pow, Relu, Sigmoid, Sin, Square, Sub, Tanh
from .function import Op, unbroadcast
from .fused import LinearSGDStep, fused_linear_sgd
from .functional import (
    add,
    binary_cross_entropy_with_logits,
    cos,
    cross_entropy,
    div,
    exp,
    linear,
    linear_relu,
    linear_sigmoid,
    linear_tanh,
    log,
    log_softmax,
    matmul,
    maximum,
    mean,
    mse_loss,
    mul,
    pow,
    relu,
    sigmoid,
    sin,
    softmax,
    square,
    sub,
    sum,
    tanh,
)
from .linalg import Linear, LinearRelu, LinearSigmoid, LinearTanh, Matmul
from .losses import BinaryCrossEntropyWithLogits, CrossEntropy, MSELoss
from .reductions import LogSoftmax, Mean, Softmax, Sum

FUNCTIONS = (
    "add", "sub", "mul", "div", "square", "pow", "sin", "cos", "exp", "log", "tanh",
    "sigmoid", "relu", "maximum", "matmul", "linear", "sum", "mean", "softmax",
    "log_softmax", "cross_entropy", "binary_cross_entropy_with_logits", "mse_loss",
    "linear_relu", "linear_sigmoid", "linear_tanh",
)  # fmt: skip
CLASSES = (
    "Add", "Sub", "Mul", "Div", "Square", "Pow", "Sin", "Cos", "Exp", "Log", "Tanh",
    "Sigmoid", "Relu", "Maximum", "Matmul", "Linear", "Sum", "Mean", "Softmax",
    "LogSoftmax", "CrossEntropy", "BinaryCrossEntropyWithLogits", "MSELoss",
    "LinearRelu", "LinearSigmoid", "LinearTanh",
)  # fmt: skip
FUSED_STEPS = ("fused_linear_sgd",)
__all__ = [*FUNCTIONS, *CLASSES, *FUSED_STEPS, "LinearSGDStep", "Op", "unbroadcast"]
