"""The public functions: same names, signatures and semantics as their torch twins.

`custom_ops.sigmoid(x)` behaves as `torch.sigmoid(x)`; the difference is that its
derivative is the hand-written one in `Sigmoid.backward`.
"""

from __future__ import annotations

import re
import warnings
from numbers import Number
from typing import NoReturn

import torch
from torch import Tensor

from .elementwise import Add, Cos, Div, Exp, Log, Maximum, Mul, Pow, Relu, Sigmoid, Sin, Square, Sub, Tanh
from .function import as_operand, check_reduction
from .linalg import Linear, LinearRelu, LinearSigmoid, LinearTanh, Matmul
from .losses import BinaryCrossEntropyWithLogits, CrossEntropy, MSELoss, class_dim
from .reductions import LogSoftmax, Mean, Softmax, Sum, reduced_dims

Operand = Tensor | Number
Dims = int | tuple[int, ...] | list[int] | None


def add(input: Operand, other: Operand, *, alpha: Number = 1) -> Tensor:
    return Add.call(as_operand(input, other), as_operand(other, input), alpha)


def sub(input: Operand, other: Operand, *, alpha: Number = 1) -> Tensor:
    return Sub.call(as_operand(input, other), as_operand(other, input), alpha)


def mul(input: Operand, other: Operand) -> Tensor:
    return Mul.call(as_operand(input, other), as_operand(other, input))


def div(input: Operand, other: Operand) -> Tensor:
    return Div.call(as_operand(input, other), as_operand(other, input))


def maximum(input: Operand, other: Operand) -> Tensor:
    return Maximum.call(as_operand(input, other), as_operand(other, input))


def square(input: Tensor) -> Tensor:
    return Square.call(input)


def pow(input: Tensor, exponent: Number) -> Tensor:
    if isinstance(exponent, Tensor) or not isinstance(exponent, Number):
        raise TypeError(f"pow: exponent must be a Python number, got {type(exponent).__name__}")
    return Pow.call(input, exponent)


def sin(input: Tensor) -> Tensor:
    return Sin.call(input)


def cos(input: Tensor) -> Tensor:
    return Cos.call(input)


def exp(input: Tensor) -> Tensor:
    return Exp.call(input)


def log(input: Tensor) -> Tensor:
    return Log.call(input)


def tanh(input: Tensor) -> Tensor:
    return Tanh.call(input)


def sigmoid(input: Tensor) -> Tensor:
    return Sigmoid.call(input)


def relu(input: Tensor) -> Tensor:
    return Relu.call(input)


def matmul(input: Tensor, other: Tensor) -> Tensor:
    return Matmul.call(input, other)


def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    check_linear_shapes("linear", input, weight)
    return Linear.call(input, weight, bias)


def linear_relu(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """relu(linear(input, weight, bias)) as one op (models.MLP runs each hidden layer so)."""
    check_linear_shapes("linear_relu", input, weight)
    return LinearRelu.call(input, weight, bias)


def linear_sigmoid(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """sigmoid(linear(input, weight, bias)) as one op."""
    check_linear_shapes("linear_sigmoid", input, weight)
    return LinearSigmoid.call(input, weight, bias)


def linear_tanh(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """tanh(linear(input, weight, bias)) as one op."""
    check_linear_shapes("linear_tanh", input, weight)
    return LinearTanh.call(input, weight, bias)


def check_linear_shapes(op: str, input: Tensor, weight: Tensor) -> None:
    if weight.dim() != 2 or input.dim() == 0 or input.shape[-1] != weight.shape[-1]:
        raise ValueError(
            f"{op}: input of shape {tuple(input.shape)} does not fit weight of shape "
            f"{tuple(weight.shape)}: the input's last dim must equal the weight's in_features"
        )


def sum(input: Tensor, dim: Dims = None, keepdim: bool = False) -> Tensor:
    return Sum.call(input, reduced_dims(input.dim(), dim), keepdim)


def mean(input: Tensor, dim: Dims = None, keepdim: bool = False) -> Tensor:
    return Mean.call(input, reduced_dims(input.dim(), dim), keepdim)


def softmax(input: Tensor, dim: int = -1) -> Tensor:
    return Softmax.call(input, dim)


def log_softmax(input: Tensor, dim: int = -1) -> Tensor:
    return LogSoftmax.call(input, dim)


def _values_are_inspectable(t: Tensor) -> bool:
    """False while torch.compile traces or torch.func wraps t (vmap): a check that reads
    values would then be a graph break or a data-dependent error."""
    return not (torch.compiler.is_compiling() or torch._C._functorch.is_functorch_wrapped_tensor(t))


_CLASS_INDEX_DTYPES = frozenset((torch.int64, torch.int32, torch.uint8, torch.int16, torch.int8))


def cross_entropy(input: Tensor, target: Tensor, *, reduction: str = "mean") -> Tensor:
    check_reduction(reduction)
    if target.dtype not in _CLASS_INDEX_DTYPES:
        raise TypeError(f"cross_entropy: target must hold class indices (an integer tensor), got {target.dtype}")
    expected = input.shape[:1] + input.shape[2:] if input.dim() > 1 else torch.Size([])
    if target.shape != expected:
        raise ValueError(
            f"cross_entropy: target of shape {tuple(target.shape)} does not match input of shape "
            f"{tuple(input.shape)}: expected target shape {tuple(expected)}"
        )
    if not target.is_cpu and target.numel() and _values_are_inspectable(target):
        # off the CPU an out-of-range target is a device-side assert that poisons the
        # CUDA context, so check first (one sync); on the CPU torch's kernel checks
        low, high = torch.stack(torch.aminmax(target)).tolist()
        if low < 0 or high >= _num_classes(input):
            _raise_out_of_bounds(low if low < 0 else high, input)
    try:
        return CrossEntropy.call(input, target if target.dtype == torch.int64 else target.long(), reduction)
    except IndexError as error:  # torch's "Target 7 is out of bounds."
        bad = int(next(iter(re.findall(r"-?\d+", str(error))), -1))
        _raise_out_of_bounds(bad, input)


def _num_classes(input: Tensor) -> int:
    return input.shape[class_dim(input)] if input.dim() > 0 else 0


def _raise_out_of_bounds(bad: int, input: Tensor) -> NoReturn:
    classes = _num_classes(input)  # only counted here, when it is needed: not on every call
    raise IndexError(
        f"cross_entropy: target {bad} is out of bounds for {classes} classes (valid: 0 to {classes - 1})"
    ) from None


def binary_cross_entropy_with_logits(input: Tensor, target: Tensor, *, reduction: str = "mean") -> Tensor:
    check_reduction(reduction)
    if target.shape != input.shape:
        raise ValueError(f"Target size ({target.shape}) must be the same as input size ({input.shape})")
    return BinaryCrossEntropyWithLogits.call(input, target, reduction)


def mse_loss(input: Tensor, target: Tensor, *, reduction: str = "mean") -> Tensor:
    check_reduction(reduction)
    if target.shape != input.shape:  # F.mse_loss's warning, word for word
        warnings.warn(
            f"Using a target size ({target.size()}) that is different to the input size ({input.size()}). "
            "This will likely lead to incorrect results due to broadcasting. "
            "Please ensure they have the same size.",
            stacklevel=2,
        )
    return MSELoss.call(input, target, reduction)

