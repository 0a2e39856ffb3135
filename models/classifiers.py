"""Classifiers built from models.layers: logistic regression and the multilayer perceptron.

Every classifier maps features (N, in_features) to logits and owns its loss, so the
training loop is the same for all of them:

    logits = model(x); loss = model.loss(logits, y); predicted = model.predict(logits)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules import module as module_hooks

import custom_ops
from custom_ops.fused import check_learning_rate

from .layers import ACTIVATIONS, Linear, make_activation

INITS = ("random", "zero")


class Classifier(nn.Module):
    """Base class: subclasses build `self.layers` (an nn.Sequential) and set num_classes."""

    num_classes: int
    layers: nn.Sequential

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)

    def loss(self, logits: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
        """Cross-entropy of the logits against class indices `target`."""
        return custom_ops.cross_entropy(logits, target, reduction=reduction)

    def predict(self, logits: Tensor) -> Tensor:
        """The class index each row of logits scores highest."""
        return logits.argmax(dim=-1)

    def fuse_sgd(self, lr: float | None) -> None:
        """lr: from now on every backward also takes plain SGD's step (no momentum, no
        weight decay) on every Linear layer, fused into its weight-gradient product,
        and no parameter gets a .grad: `loss.backward()` is the whole update. None:
        back to plain gradients for an optimizer. See custom_ops.fused."""
        if lr is not None:
            check_learning_rate(lr)
        for layer in self.modules():
            if isinstance(layer, Linear):
                layer.fused_sgd_lr = lr

    def initialize(self, init: str) -> None:
        """'random': nn.Linear's initialization (the constructor's); 'zero': every weight
        and bias 0, which in an MLP leaves all hidden units of a layer identical forever
        (the lecture's symmetry argument)."""
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}: choose one of {', '.join(INITS)}")
        for layer in self.modules():
            if isinstance(layer, Linear):
                layer.reset_parameters() if init == "random" else layer.zero_parameters()


class LogisticRegression(Classifier):
    """Linear model. Two classes: one logit z, p(y=1) = σ(z), binary cross-entropy
    with logits. More classes: one logit per class, softmax cross-entropy."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
        self.in_features = in_features
        self.num_classes = num_classes
        self.binary = num_classes == 2
        self.layers = nn.Sequential(Linear(in_features, 1 if self.binary else num_classes))

    def forward(self, x: Tensor) -> Tensor:
        logits = self.layers(x)
        # binary: (N, 1) -> (N,), one logit per sample, as BCE-with-logits expects
        return logits.reshape(logits.shape[:-1]) if self.binary else logits

    def loss(self, logits: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
        if self.binary:
            return custom_ops.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction=reduction)
        return super().loss(logits, target, reduction)

    def predict(self, logits: Tensor) -> Tensor:
        # σ(z) > 1/2 exactly when z > 0
        return (logits > 0).long() if self.binary else super().predict(logits)


class MLP(Classifier):
    """Linear → activation → … → Linear → softmax cross-entropy, any number of hidden
    layers: the lecture's comp graph a = αx, z = σ(a), b = βz, ŷ = softmax(b),
    J = −log ŷ_y, repeated once per hidden layer."""

    def __init__(
        self,
        in_features: int,
        hidden_sizes: Sequence[int],
        num_classes: int,
        activation: str = "sigmoid",
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
        if any(size < 1 for size in hidden_sizes):
            raise ValueError(f"hidden layer sizes must be positive, got {list(hidden_sizes)}")
        self.in_features = in_features
        self.hidden_sizes = tuple(hidden_sizes)
        self.num_classes = num_classes
        self.activation = activation
        sizes = [in_features, *hidden_sizes]
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(sizes, sizes[1:], strict=False):
            layers += [Linear(fan_in, fan_out), make_activation(activation)]
        layers.append(Linear(sizes[-1], num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Each Linear and the activation after it run as one op (`custom_ops.linear_relu`
        and the like; with `fuse_sgd`, `fused_linear_sgd(..., activation=...)`): the
        activation works in place on the product's fresh output and autograd runs one node
        where it would run two, with the same values and gradients. Where a module has
        hooks the layers run one by one, so the hooks see every call."""
        if _hooks_set(self.layers):
            return self.layers(x)
        modules = list(self.layers)
        i = 0
        while i < len(modules):
            fused = _linear_and_activation(modules[i], modules[i + 1], x) if i + 1 < len(modules) else None
            if fused is None:
                x = modules[i](x)
                i += 1
            else:
                x = fused
                i += 2
        return x


ACTIVATION_NAMES = {module: name for name, module in ACTIVATIONS.items()}  # ReLU → "relu", …
LINEAR_ACTIVATION_OPS = {"relu": custom_ops.linear_relu, "sigmoid": custom_ops.linear_sigmoid,
                         "tanh": custom_ops.linear_tanh}  # fmt: skip


def _linear_and_activation(layer: nn.Module, activation: nn.Module, x: Tensor) -> Tensor | None:
    """activation(layer(x)) computed by one op, or None where the two must run apart:
    other module types (a subclass may override forward), or hooks on either."""
    name = ACTIVATION_NAMES.get(type(activation))
    if type(layer) is not Linear or name is None or _hooks_set(layer, activation):
        return None
    if layer.fused_sgd_lr is not None and torch.is_grad_enabled():
        return custom_ops.fused_linear_sgd(x, layer.weight, layer.bias, lr=layer.fused_sgd_lr, activation=name)
    return LINEAR_ACTIVATION_OPS[name](x, layer.weight, layer.bias)


def _hooks_set(*modules: nn.Module) -> bool:
    """Hooks on these modules, or on all modules (register_module_forward_hook and the
    like), as nn.Module.__call__ checks them before it skips its hook handling."""
    return bool(
        any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks for m in modules)
        or module_hooks._global_forward_hooks
        or module_hooks._global_forward_pre_hooks
        or module_hooks._global_backward_hooks
        or module_hooks._global_backward_pre_hooks
    )


def build_classifier(
    model: str,
    in_features: int,
    num_classes: int,
    hidden_sizes: Sequence[int] = (),
    activation: str = "sigmoid",
    init: str = "random",
) -> Classifier:
    """The classifier named `model` ('lr' or 'mlp'), initialized with `init`."""
    if model == "lr":
        classifier: Classifier = LogisticRegression(in_features, num_classes)
    elif model == "mlp":
        classifier = MLP(in_features, hidden_sizes, num_classes, activation)
    else:
        raise ValueError(f"unknown model {model!r}: choose 'lr' or 'mlp'")
    if init != "random":  # the constructor already drew the random initialization
        classifier.initialize(init)
    return classifier


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["Classifier", "LogisticRegression", "MLP", "build_classifier", "count_parameters", "INITS"]
