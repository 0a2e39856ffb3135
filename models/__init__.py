"""Models whose math is only custom_ops: layers (Linear, Sigmoid, Tanh, ReLU) and
classifiers (LogisticRegression, MLP)."""

from .classifiers import INITS, MLP, Classifier, LogisticRegression, build_classifier, count_parameters
from .layers import ACTIVATIONS, Linear, ReLU, Sigmoid, Tanh, make_activation

__all__ = [
    "ACTIVATIONS", "INITS", "Classifier", "Linear", "LogisticRegression", "MLP", "ReLU", "Sigmoid", "Tanh",
    "build_classifier", "count_parameters", "make_activation",
]  # fmt: skip
