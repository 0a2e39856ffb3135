"""The lecture, executable: walk a computation graph node by node, values and adjoints.

    python -m custom_ops.explain "cos(sin(x**2) + 3*x**2)" --at x=1.5

prints what the lecture works by hand for J = cos(sin(x²) + 3x²):

1. the forward pass: every intermediate named (t = x², s = sin t, u = s + 3t, J = cos u)
   with its value, in evaluation order;
2. the backward pass: dJ/dJ = 1, then, node by node in reverse order, each edge adds
   adjoint × local derivative to its input's adjoint (a node used twice, like t, adds up
   one term per use);
3. the gradients dJ/dx, each beside a central finite-difference estimate.

From Python, `trace(fn, **inputs)` records the same walk for any function built from
custom_ops, a model's loss included, and returns the node records.

How it works. `custom_ops.function.observe_ops` reports every op applied while fn runs,
so the graph is recorded as it is built. The adjoints come from `torch.autograd.grad`,
that is from our ops' hand-written backward. The numbers on each edge come from
applying that one op again, to fresh copies of its inputs, and running its backward
alone: that isolates the edge, where a gradient of the child with respect to the
parent would also follow every other path between them (u = s + 3t reaches t twice).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import math
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from numbers import Number
from typing import Any

import torch
from torch import Tensor

from . import CLASSES, FUNCTIONS
from . import functional as ops
from .function import observe_ops

__all__ = [
    "Edge", "Expression", "ExpressionError", "GraphvizError", "Node", "Trace", "TraceError",
    "explain_expression", "label", "label_parameters", "main", "parse_at", "parse_expression",
    "render_png", "trace",
]  # fmt: skip

# ================================================================ records


class TraceError(ValueError):
    """fn cannot be walked (say, it returned a tensor no custom op computed)."""


@dataclass(eq=False)
class Edge:
    """One edge child ← parent of the backward pass: what the child passes back."""

    child: Node
    parent: Node
    position: int  # which argument of the child's op the parent is
    formula: str  # the local derivative d(child)/d(parent) as text, e.g. "cos(t)"
    local: Tensor | None  # its value, elementwise (None where it is a whole Jacobian)
    product: Tensor  # adjoint(child) × local, in the parent's shape: added to dJ/d(parent)


@dataclass(eq=False)
class Node:
    """One node of the graph: an input, a parameter, a constant or an op's output."""

    name: str
    kind: str  # "input", "parameter", "constant", "op" or "torch" (PyTorch ops in between)
    op: str  # the public function ("sin", "mul"…), or the kind for a leaf
    value: Tensor
    parents: list[Node | None] = field(default_factory=list)  # per argument; None: a constant
    args: tuple = ()  # the op's positional arguments, as applied
    op_class: type | None = None
    adjoint: Tensor | None = None  # dJ/d(node), from autograd through our backward
    edges: list[Edge] = field(default_factory=list)  # to the parents, in argument order
    contributions: list[Edge] = field(default_factory=list)  # from the consumers, in the order added
    tensor: Tensor | None = field(default=None, repr=False)  # the live tensor in the graph
    source: str | None = None  # a torch region: its grad_fn names

    @property
    def inputs(self) -> list[str]:
        """The op's arguments as text: parent names, constants, and parameters like dims."""
        if self.kind == "torch":
            return [p.name for p in self.parents if p is not None]
        names = _parameter_names(self.op_class) if self.op_class else []
        texts = (_argument_text(a, p, n) for a, p, n in zip(self.args, self.parents, names))
        return [t for t in texts if t is not None]

    @property
    def rule(self) -> str:
        """The op's primal as its docstring states it, e.g. 'y = sin x'."""
        doc = inspect.getdoc(self.op_class) if self.op_class else None
        return doc.splitlines()[0] if doc else ""

    @property
    def requires_grad(self) -> bool:
        return self.adjoint is not None

    def adjoint_from_contributions(self) -> Tensor | None:
        """Σ of what each consumer added: equals `adjoint` (the multivariate chain rule)."""
        if not self.contributions:
            return None
        total = self.contributions[0].product
        for edge in self.contributions[1:]:
            total = total + edge.product
        return total


class Trace(Sequence[Node]):
    """The recorded walk: the nodes in evaluation order; `trace["t"]` finds one by name."""

    def __init__(self, nodes: list[Node], output: Node, fn: Callable[..., Tensor], inputs: dict[str, Tensor],
                 summed: bool, title: str | None = None) -> None:  # fmt: skip
        self.nodes = nodes
        self.output = output
        self.fn = fn
        self.input_values = inputs
        self.summed = summed  # fn's output had several elements: J is their sum
        self.title = title
        self._fd: dict[str, Tensor] | None = None
        self._fd_h: float | None = None

    def __len__(self) -> int:
        return len(self.nodes)

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, str):
            for node in self.nodes:
                if node.name == key:
                    return node
            raise KeyError(f"no node named {key!r}: the nodes are {', '.join(n.name for n in self.nodes)}")
        return self.nodes[key]

    def __repr__(self) -> str:
        return f"Trace({', '.join(n.name for n in self.nodes)})"

    @property
    def leaves(self) -> list[Node]:
        """The inputs and parameters J has a gradient for."""
        return [n for n in self.nodes if n.kind in ("input", "parameter") and n.requires_grad]

    @property
    def gradients(self) -> dict[str, Tensor]:
        """dJ/d(leaf) for every input and parameter, computed by our ops' backward."""
        return {n.name: n.adjoint for n in self.leaves}

    def finite_differences(self, h: float = 1e-6) -> dict[str, Tensor]:
        """Central differences (J(v + h) − J(v − h)) / 2h, one element at a time, float64."""
        if self._fd is None or self._fd_h != h:
            self._fd = {n.name: _central_difference(self, n, h) for n in self.leaves if _can_perturb(n)}
            self._fd_h = h
        return self._fd

    # the three renderings, defined below with the formatting helpers
    def report(self, digits: int = 4, h: float = 1e-6) -> str:
        return _report(self, digits, h)

    def to_json(self, h: float = 1e-6) -> dict[str, Any]:
        return _to_json(self, h)

    def to_dot(self, digits: int = 4) -> str:
        return _to_dot(self, digits)


# ================================================================ recording

_recorders: list[_Recorder] = []


def label(tensor: Tensor, name: str) -> Tensor:
    """Give a node its lecture name (z, y_hat…) in the walk `trace` is recording.

    Returns the tensor, so it fits inline: `z = label(add(matmul(w, x), b), "z")`.
    Outside `trace` it does nothing.
    """
    if not name.isidentifier():
        raise ValueError(f"label: {name!r} is not a valid name (letters, digits and _)")
    for recorder in _recorders:
        recorder.labels[id(tensor)] = (tensor, name)
    return tensor


def label_parameters(module: torch.nn.Module) -> None:
    """Label every parameter of a model with its name in the model (layers.0.weight → layers_0_weight)."""
    for name, parameter in module.named_parameters():
        label(parameter, name.replace(".", "_"))


class _Recorder:
    """The observer: turns each op applied into a Node, finding its parents by identity."""

    def __init__(self, inputs: dict[str, Tensor]) -> None:
        self.nodes: list[Node] = []
        self.by_id: dict[int, Node] = {}
        self.by_grad_fn: dict[Any, Node] = {}
        self.labels: dict[int, tuple[Tensor, str]] = {}  # the tensor is kept so its id stays its own
        for name, tensor in inputs.items():
            self._add(Node(name, "input", "input", tensor.detach(), tensor=tensor))

    def _add(self, node: Node) -> Node:
        self.nodes.append(node)
        self.by_id[id(node.tensor)] = node
        if node.tensor.grad_fn is not None:
            self.by_grad_fn[node.tensor.grad_fn] = node
        return node

    def __call__(self, op_class: type, args: tuple, output: Any) -> None:
        if not isinstance(output, Tensor):
            return
        parents = [self.operand(a) if isinstance(a, Tensor) else None for a in args]
        op = _FUNCTION_OF_CLASS.get(op_class.__name__, op_class.__name__.lower())
        self._add(Node("", "op", op, output.detach(), parents, tuple(args), op_class, tensor=output))

    def operand(self, tensor: Tensor) -> Node | None:
        """The node a tensor argument comes from; None for a 0-d constant such as the 3 of 3t."""
        node = self.by_id.get(id(tensor))
        if node is not None:
            return node
        if tensor.grad_fn is not None:  # computed by PyTorch's own ops, between ours
            return self._torch_region(tensor)
        if tensor.requires_grad:  # a leaf fn reads from outside, as a model's weight
            return self._add(Node("", "parameter", "parameter", tensor.detach(), tensor=tensor))
        if tensor.dim() == 0:
            return None
        return self._add(Node("", "constant", "constant", tensor.detach(), tensor=tensor))

    def _torch_region(self, tensor: Tensor) -> Node:
        """Tensors made by torch ops (a model's reshape) become one node, whose parents are
        the nodes found walking back its autograd graph; its derivative is PyTorch's."""
        parents: list[Node] = []
        names: list[str] = []
        stack, seen = [tensor.grad_fn], set()
        while stack:
            fn = stack.pop()
            if fn is None or fn in seen:
                continue
            seen.add(fn)
            if fn in self.by_grad_fn:
                parents.append(self.by_grad_fn[fn])
            elif hasattr(fn, "variable"):  # AccumulateGrad: a leaf
                parents.append(self.operand(fn.variable))
            else:
                names.append(type(fn).__name__)
                stack.extend(next_fn for next_fn, _ in fn.next_functions)
        parents = list(dict.fromkeys(p for p in parents if p is not None))
        _check_independent(parents)
        op = "torch:" + "+".join(re.sub(r"Backward\d*$", "", n).lower() for n in reversed(names))
        return self._add(
            Node("", "torch", op, tensor.detach(), parents, (), None, tensor=tensor, source=", ".join(names))
        )


def _check_independent(parents: list[Node]) -> None:
    # autograd.grad gives total derivatives: if one parent were computed from another, the
    # edge from the earlier one would also count the path through the later one
    def ancestors(node: Node, found: set[int]) -> set[int]:
        for p in node.parents:
            if p is not None and id(p) not in found:
                found.add(id(p))
                ancestors(p, found)
        return found

    for p in parents:
        if any(id(q) in ancestors(p, set()) for q in parents if q is not p):
            raise TraceError("a run of PyTorch ops reads two nodes, one computed from the other: use custom_ops there")


@contextmanager
def _float64() -> Iterator[None]:
    """Numbers that become tensors (mul(0.1, x)) are float64 too, as everything here."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _as_input(name: str, value: Any) -> Tensor:
    """An input of trace as a float64 leaf that requires grad; integer tensors (class
    labels) stay as they are, inputs without a gradient."""
    if isinstance(value, bool) or not isinstance(value, (Tensor, Number, list, tuple)):
        raise TraceError(f"input {name}: expected a number, a list of numbers or a tensor, got {type(value).__name__}")
    tensor = value.detach().clone() if isinstance(value, Tensor) else torch.tensor(value, dtype=torch.float64)
    if tensor.is_complex():
        raise TraceError(f"input {name}: complex values are not supported")
    if tensor.is_floating_point():
        return tensor.to(torch.float64).requires_grad_()
    return tensor


def trace(fn: Callable[..., Tensor], /, **inputs: Any) -> Trace:
    """Run fn(**inputs) with custom_ops, record its graph and walk it backward.

    Inputs may be numbers, lists or tensors; floating ones become float64 leaves with a
    gradient. Tensors fn reads from elsewhere appear as constants (data) or, when they
    require grad, as parameters (a model's weights). If fn's output has several
    elements, J is their sum (`Trace.summed`). Returns the node records.
    """
    leaves = {name: _as_input(name, value) for name, value in inputs.items()}
    recorder = _Recorder(leaves)
    _recorders.append(recorder)
    try:
        with _float64(), torch.enable_grad(), observe_ops(recorder):
            result = fn(**leaves)
            output, summed = _scalar_output(result, recorder)
    finally:
        _recorders.remove(recorder)
    _assign_names(recorder, output)
    _walk_backward(recorder.nodes, output)
    return Trace(recorder.nodes, output, fn, leaves, summed)


def _scalar_output(result: Any, recorder: _Recorder) -> tuple[Node, bool]:
    """J must be one number: a vector output is summed, by our own sum op."""
    if not isinstance(result, Tensor):
        raise TraceError(f"fn returned {type(result).__name__}, not a tensor")
    node = recorder.operand(result)
    if node is None or node.kind not in ("op", "torch"):
        raise TraceError("fn returned a value no op computed: there is nothing to differentiate")
    if not result.is_floating_point() or not result.requires_grad:
        raise TraceError("fn's output does not depend on any input with a gradient")
    if result.dim() == 0:
        return node, False
    ops.sum(result)  # recorded by the observer, still active
    return recorder.nodes[-1], True


# ---------------------------------------------------------------- names

# The lecture's letters: t = x², s = sin t, u = s + 3t; the output is J.
_LETTERS = {
    "Square": "t", "Pow": "t", "Sin": "s", "Cos": "c", "Tanh": "h", "Exp": "e", "Log": "ln",
    "Sigmoid": "a", "Relu": "r", "Add": "u", "Sub": "u", "Mul": "m", "Div": "q", "Maximum": "mx",
    "Matmul": "z", "Linear": "z", "LinearRelu": "r", "LinearSigmoid": "a", "LinearTanh": "h", "Sum": "S",
    "Mean": "M", "Softmax": "p", "LogSoftmax": "lp",
    "CrossEntropy": "L", "BinaryCrossEntropyWithLogits": "L", "MSELoss": "L",
}  # fmt: skip
_FUNCTION_OF_CLASS = dict(zip(CLASSES, FUNCTIONS))


def _assign_names(recorder: _Recorder, output: Node) -> None:
    """Inputs keep their names, labels win, the output is J; every other node takes its
    op's letter, bare when it is the only one, numbered (t1, t2) when it is not."""
    nodes = recorder.nodes
    taken = {n.name for n in nodes if n.name}
    for tensor, name in recorder.labels.values():
        node = recorder.by_id.get(id(tensor))
        if node is not None and node.kind != "input":
            node.name = _fresh(name, taken)
    if not output.name:
        output.name = _fresh("J", taken)
    unnamed = [n for n in nodes if not n.name]
    letter_of = {id(n): _letter(n) for n in unnamed}
    counts: dict[str, int] = {}
    for letter in letter_of.values():
        counts[letter] = counts.get(letter, 0) + 1
    for node in unnamed:
        letter = letter_of[id(node)]
        if counts[letter] == 1 and letter not in taken:
            node.name = letter
        else:
            node.name = _fresh(letter, taken, numbered=True)
        taken.add(node.name)


def _letter(node: Node) -> str:
    if node.kind == "op":
        return _LETTERS.get(node.op_class.__name__, "v")
    return {"parameter": "p", "constant": "c", "torch": "v"}[node.kind]


def _fresh(name: str, taken: set[str], numbered: bool = False) -> str:
    """name, or name1, name2… (name_1 after a digit): the first one not taken."""
    candidate, i = (name if not numbered else ""), 1
    while not candidate or candidate in taken:
        candidate = f"{name}{'_' if name[-1].isdigit() else ''}{i}"
        i += 1
    taken.add(candidate)
    return candidate


# ================================================================ the backward walk


def _walk_backward(nodes: list[Node], output: Node) -> None:
    """Adjoints by autograd through our backward, then every edge on its own."""
    differentiable = [n for n in nodes if n.tensor.requires_grad and n.tensor.is_floating_point()]
    adjoints = torch.autograd.grad(
        output.tensor, [n.tensor for n in differentiable], retain_graph=True, allow_unused=True
    )
    for node, adjoint in zip(differentiable, adjoints):
        node.adjoint = torch.zeros_like(node.value) if adjoint is None else adjoint.detach()
    for node in reversed(nodes):  # reverse order, as the lecture passes adjoints back
        if node.kind in ("op", "torch") and node.requires_grad:
            node.edges = _torch_edges(node) if node.kind == "torch" else _op_edges(node)
            for edge in node.edges:
                edge.parent.contributions.append(edge)


def _grad_positions(node: Node) -> list[int]:
    return [i for i, p in enumerate(node.parents) if p is not None and p.requires_grad]


def _op_edges(node: Node) -> list[Edge]:
    """Apply the op again to fresh leaves and run its backward alone, twice: with
    dJ/d(node) it gives each edge's product; with ones, an elementwise op gives its local
    derivative, ∂node_i/∂parent_i."""
    positions = _grad_positions(node)
    if not positions:
        return []
    products = _vjp(node, positions, node.adjoint, expand=False)
    locals_ = _vjp(node, positions, torch.ones_like(node.value), expand=True) if _is_elementwise(node) else None
    edges = []
    for k, i in enumerate(positions):
        formula, local = _local_formula(node, i)
        if locals_ is not None:
            local = locals_[k]
        edges.append(Edge(node, node.parents[i], i, formula, local, products[k]))
    return edges


def _vjp(node: Node, positions: list[int], upstream: Tensor, expand: bool) -> list[Tensor]:
    """upstream pulled back through this op's backward, to each argument at `positions`.
    expand: make each such argument the output's shape first, so broadcasting does not
    sum the per-element derivatives."""
    args = [a.detach() if isinstance(a, Tensor) else a for a in node.args]
    for i in positions:  # one leaf per position: x·x has two edges to x
        leaf = args[i].expand(node.value.shape).clone() if expand else args[i].clone()
        args[i] = leaf.requires_grad_()
    with _float64(), torch.enable_grad():
        out = node.op_class.apply(*args)
        grads = torch.autograd.grad(out, [args[i] for i in positions], upstream, allow_unused=True)
    return [torch.zeros_like(args[i]) if g is None else g for i, g in zip(positions, grads)]


def _torch_edges(node: Node) -> list[Edge]:
    parents = [p for p in node.parents if p is not None and p.requires_grad]
    grads = torch.autograd.grad(
        node.tensor, [p.tensor for p in parents], node.adjoint, retain_graph=True, allow_unused=True
    )
    edges = []
    for i, (parent, g) in enumerate(zip(parents, grads)):
        product = torch.zeros_like(parent.value) if g is None else g.detach()
        edges.append(
            Edge(node, parent, i, f"d{node.name}/d{parent.name} by PyTorch's backward ({node.source})", None, product)
        )
    return edges


def _is_elementwise(node: Node) -> bool:
    return node.op_class is not None and node.op_class.__module__.endswith(".elementwise")


# ---------------------------------------------------------------- local derivatives as text


def _local_formula(node: Node, i: int) -> tuple[str, Tensor | None]:
    """d(node)/d(argument i) as text, with the argument names put in: 'cos(t)', '2*x'."""
    cls = node.op_class.__name__
    a = [_operand_text(arg, parent) for arg, parent in zip(node.args, node.parents)]
    y = node.name
    unary = {
        "Square": f"2*{a[0]}", "Sin": f"cos({a[0]})", "Cos": f"-sin({a[0]})", "Exp": f"exp({a[0]})",
        "Log": f"1/{a[0]}", "Tanh": f"1 - {y}^2", "Sigmoid": f"{y}*(1 - {y})", "Relu": f"[{a[0]} > 0]",
    }  # fmt: skip
    if cls in unary:
        return unary[cls], None
    if cls == "Pow":
        p = node.args[1]
        return ("0" if p == 0 else f"{_num(p)}*{a[0]}^{_paren(_num(p - 1))}"), None
    if cls in ("Add", "Sub"):
        alpha = node.args[2]
        sign = "-" if cls == "Sub" and i == 1 else ""
        return ("1" if i == 0 else f"{sign}{_num(alpha)}"), None
    if cls == "Mul":
        return a[1 - i], None
    if cls == "Div":
        return (f"1/{_paren(a[1])}" if i == 0 else f"-{_paren(a[0])}/{_paren(a[1])}^2"), None
    if cls == "Maximum":
        return f"[{a[i]} > {a[1 - i]}] (1/2 at a tie)", None
    if cls in ("Sum", "Mean"):  # every element counts once (or 1/n times)
        n = node.args[0].numel() // max(node.value.numel(), 1)
        local = torch.full_like(node.args[0], 1.0 if cls == "Sum" else 1.0 / max(n, 1))
        return ("1" if cls == "Sum" else f"1/{n}"), local
    return _docstring_backward(node, i), None


def _docstring_backward(node: Node, i: int) -> str:
    """For an op whose local derivative is a whole Jacobian, the vector-Jacobian product
    its docstring states, g being the adjoint flowing in: 'dL/da = unbroadcast(g @ bᵀ)'."""
    doc = inspect.getdoc(node.op_class) or ""
    match = re.search(r"^backward:\s*(.+)$", doc, re.MULTILINE)
    if not match:
        return "vector-Jacobian product"
    parts = re.split(r",\s{2,}", match.group(1).strip())  # one part per input
    names = _parameter_names(node.op_class)
    named = [part for part in parts if re.match(rf"dL/d{re.escape(names[i])}\b", part)]
    # by name (dL/dz), else by position (Linear writes dL/dW for its `weight`)
    part = named[0] if named else parts[i] if i < len(parts) else match.group(1).strip()
    # speak of this graph's nodes: the docstring's a, b become w, x; L is our J
    part = re.sub(r"^dL/d\S+", f"dJ/d{node.parents[i].name}", part)
    texts = {n: _operand_text(a, p) for n, a, p in zip(names, node.args, node.parents) if isinstance(a, Tensor)}
    if texts:
        pattern = r"(?<![\w/])(" + "|".join(map(re.escape, texts)) + r")(?![A-Za-z0-9_])"  # bᵀ: ᵀ is no letter here
        part = re.sub(pattern, lambda m: texts[m.group(1)], part)
    # a rule through an inner node (linear_relu: "where dz = dL/dz = g · [y > 0]") says what
    # that node's gradient is, y being this node's output
    where = next((p for p in parts if p.startswith("where ")), None)
    if where is not None:
        inner = re.sub(r"= dL/d\S+ =", "=", where.removeprefix("where "))
        part += " with " + re.sub(r"(?<![\w/])y(?![A-Za-z0-9_])", node.name, inner)
    return f"{part}, g = dJ/d{node.name}"


def _parameter_names(op_class: type) -> list[str]:
    return list(inspect.signature(op_class.forward).parameters)


def _operand_text(arg: Any, parent: Node | None) -> str:
    if parent is not None:
        return parent.name
    if isinstance(arg, Tensor):
        return _num(arg.item()) if arg.numel() == 1 else f"<{_shape(arg)}>"
    return _num(arg) if isinstance(arg, Number) and not isinstance(arg, bool) else repr(arg)


def _argument_text(arg: Any, parent: Node | None, name: str) -> str | None:
    """How the forward table shows an argument: None hides the defaults (alpha=1, no bias)."""
    if arg is None or (name == "alpha" and arg == 1) or (name == "keepdim" and arg is False):
        return None
    if (
        parent is not None
        or isinstance(arg, Tensor)
        or (isinstance(arg, Number) and not isinstance(arg, bool) and name != "alpha")
    ):
        return _operand_text(arg, parent)
    return f"{name}={arg!r}"


# ================================================================ finite differences


def _can_perturb(node: Node) -> bool:
    return node.value.dtype == torch.float64 and node.value.numel() > 0


def _evaluate(trace_: Trace) -> float:
    with _float64(), torch.no_grad():
        out = trace_.fn(**{k: v.detach() for k, v in trace_.input_values.items()})
        return float(out.sum() if trace_.summed else out)


def _central_difference(trace_: Trace, node: Node, h: float) -> Tensor:
    """Nudge one element by ±h, evaluate J again (no graph, no observer), repeat."""
    target = node.tensor
    estimate = torch.empty_like(node.value).reshape(-1)
    original = target.detach().clone()
    try:
        for k in range(estimate.numel()):
            values = []
            for step in (h, -h):
                with torch.no_grad():
                    target.copy_(original)
                    target.view(-1)[k] += step
                values.append(_evaluate(trace_))
            estimate[k] = (values[0] - values[1]) / (2 * h)
    finally:
        with torch.no_grad():
            target.copy_(original)  # a model's weight must come back exactly as it was
    return estimate.reshape(node.value.shape)


# ================================================================ formatting


def _num(v: float) -> str:
    """A number in full, without float noise: 3 → '3', 0.1 → '0.1'."""
    return f"{float(v):.12g}"


def _fmt(v: float, digits: int) -> str:
    """A number rounded for a table: fixed decimals in the usual range, else significant digits."""
    v = float(v)
    if v == 0:
        return "0"
    if not math.isfinite(v):
        return str(v)
    if 0.01 <= abs(v) < 1e6:
        text = f"{v:.{digits}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    return f"{v:.{digits}g}"


def _paren(text: str) -> str:
    return f"({text})" if text.startswith("-") or any(c in text for c in " +*/") else text


def _shape(t: Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def _fmt_value(t: Tensor, digits: int) -> str:
    """A tensor for a table: the number itself, a short list, or a summary."""
    if t.dim() == 0:
        return _fmt(t.item(), digits)
    if t.numel() <= 6:
        return _nested(t.tolist(), lambda v: _fmt(v, digits))
    flat = t.detach().double().reshape(-1)
    return (f"<{_shape(t)}: min {_fmt(flat.min(), digits)}, mean {_fmt(flat.mean(), digits)}, "
            f"max {_fmt(flat.max(), digits)}>")  # fmt: skip


def _nested(values: Any, fmt: Callable[[float], str]) -> str:
    if isinstance(values, list):
        return "[" + ", ".join(_nested(v, fmt) for v in values) + "]"
    return fmt(values)


def _exact(t: Tensor) -> str:
    """A gradient with every digit a float64 holds, for checking by hand."""
    return _nested(t.tolist(), repr) if t.numel() <= 8 else _fmt_value(t, 6)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[c]) for r in [headers, *rows]) for c in range(len(headers))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [headers, *rows]]
    return "\n".join("  " + line for line in lines)


def _scalar(*tensors: Tensor | None) -> bool:
    return all(t is not None and t.numel() == 1 for t in tensors)


def _forward_rows(trace_: Trace, digits: int) -> list[list[str]]:
    return [[n.name, n.op, ", ".join(n.inputs), _fmt_value(n.value, digits)] for n in trace_.nodes]


def _adjoint_text(node: Node, output: Node, digits: int) -> str:
    """dJ/d(node); a node used more than once shows the sum it is: '-2.812 + -0.408 = -3.22'."""
    if node is output:
        return "1"
    terms = node.contributions
    if len(terms) > 1 and all(_scalar(e.product) for e in terms):
        parts = [f"{_fmt(e.product.item(), digits)} (via {e.child.name})" for e in terms]
        return " + ".join(parts) + f" = {_fmt_value(node.adjoint, digits)}"
    suffix = f" (sum of {len(terms)})" if len(terms) > 1 else ""
    return _fmt_value(node.adjoint, digits) + suffix


def _edge_texts(edge: Edge, J: str, digits: int) -> tuple[str, str]:
    """'ds/dt = cos(t) = 0.4354' and 'dJ/dt += -0.9381 * 0.4354 = -0.4085'."""
    c, p = edge.child.name, edge.parent.name
    if edge.local is None:  # a whole Jacobian: the formula states its product with g instead
        local = edge.formula
    else:
        local = f"d{c}/d{p} = {edge.formula}"
        local += "" if _is_number(edge.formula) else f" = {_fmt_value(edge.local, digits)}"
    added = f"d{J}/d{p} += "
    if edge.local is not None and _scalar(edge.child.adjoint, edge.local, edge.product):
        factors = f"{_paren(_fmt(edge.child.adjoint.item(), digits))} * {_paren(_fmt(edge.local.item(), digits))}"
        added += f"{factors} = {_fmt(edge.product.item(), digits)}"
    elif edge.local is not None and edge.local.shape != edge.parent.value.shape:
        added += f"sum of d{J}/d{c} * d{c}/d{p} = {_fmt_value(edge.product, digits)}"
    elif edge.local is not None:
        added += f"d{J}/d{c} * d{c}/d{p} = {_fmt_value(edge.product, digits)}"
    else:
        added += _fmt_value(edge.product, digits)
    return local, added


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _backward_rows(trace_: Trace, digits: int) -> list[list[str]]:
    J = trace_.output.name
    rows = []
    for node in reversed(trace_.nodes):
        if not node.requires_grad:
            continue
        cells = [_edge_texts(e, J, digits) for e in node.edges] or [("", "")]
        rows.append([node.name, _adjoint_text(node, trace_.output, digits), *cells[0]])
        rows += [["", "", *more] for more in cells[1:]]
    return rows


def _gradient_lines(trace_: Trace, h: float) -> list[str]:
    J = trace_.output.name
    fd = trace_.finite_differences(h)
    lines = []
    for name, grad in trace_.gradients.items():
        line = f"  d{J}/d{name} = {_exact(grad)}"
        if name in fd:
            estimate = fd[name]
            shown = (
                _nested(estimate.tolist(), lambda v: f"{v:.10g}") if estimate.numel() <= 8 else _fmt_value(estimate, 6)
            )
            difference = (grad - estimate).abs().max().item()
            line += f"    finite difference: {shown}"
            line += f"    {'difference' if grad.numel() == 1 else 'max difference'}: {difference:.1e}"
        else:
            line += "    (no finite difference: not a float64 input)"
        lines.append(line)
    return lines


def _report(trace_: Trace, digits: int, h: float) -> str:
    J = trace_.output.name
    parts = []
    if trace_.title:
        parts += [trace_.title, ""]
    if trace_.summed:
        n = trace_.output.parents[0].value.numel()
        parts += [f"The output has {n} elements; {J} is their sum (a gradient needs one number).", ""]
    parts += [
        "Forward pass, in evaluation order:",
        _table(["node", "op", "inputs", "value"], _forward_rows(trace_, digits)),
        "",
    ]
    parts += [
        f"Backward pass, in reverse order: d{J}/d{J} = 1, and each edge adds d{J}/d(node) * local derivative",
        "to its input's adjoint; a node used twice adds up both contributions.",
        _table(
            ["node", f"d{J}/dnode", "local derivative", "added to the input's adjoint"], _backward_rows(trace_, digits)
        ),
        "",
        f"Gradients (custom_ops backward) and central finite differences (h = {h:g}):",
        *_gradient_lines(trace_, h),
    ]
    return "\n".join(parts)


def _jsonable(t: Tensor | None) -> Any:
    return None if t is None else t.detach().tolist()


def _to_json(trace_: Trace, h: float) -> dict[str, Any]:
    """The same tables as data: full-precision numbers, tensors as nested lists."""
    fd = trace_.finite_differences(h)
    return {
        "title": trace_.title,
        "output": trace_.output.name,
        "summed": trace_.summed,
        "forward": [
            {
                "node": n.name,
                "kind": n.kind,
                "op": n.op,
                "inputs": n.inputs,
                "rule": n.rule,
                "value": _jsonable(n.value),
            }
            for n in trace_.nodes
        ],
        "backward": [
            {
                "node": n.name,
                "adjoint": _jsonable(n.adjoint),
                "contributions": [{"from": e.child.name, "value": _jsonable(e.product)} for e in n.contributions],
                "edges": [
                    {
                        "input": e.parent.name,
                        "local_derivative": e.formula,
                        "local_value": _jsonable(e.local),
                        "added": _jsonable(e.product),
                    }
                    for e in n.edges
                ],
            }
            for n in reversed(trace_.nodes)
            if n.requires_grad
        ],
        "gradients": [
            {
                "input": name,
                "value": _jsonable(grad),
                "finite_difference": _jsonable(fd.get(name)),
                "difference": (grad - fd[name]).abs().max().item() if name in fd and grad.numel() else None,
            }
            for name, grad in trace_.gradients.items()
        ],
        "h": h,
    }


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _to_dot(trace_: Trace, digits: int) -> str:
    """Graphviz DOT: each node labelled with its value and adjoint, each edge with its
    local derivative, in the forward direction (input → op)."""
    J = trace_.output.name
    lines = ["digraph computation {", "  rankdir=LR;", '  node [shape=box, fontname="Helvetica"];',
             '  edge [fontname="Helvetica", fontsize=10];']  # fmt: skip
    for n in trace_.nodes:
        head = f"{n.name} = {n.op}({', '.join(n.inputs)})" if n.kind in ("op", "torch") else f"{n.name} ({n.kind})"
        text = f"{head}\nvalue = {_fmt_value(n.value, digits)}"
        if n.requires_grad:
            text += f"\nd{J}/d{n.name} = {_fmt_value(n.adjoint, digits)}"
        attributes = f"label={_dot_quote(text)}"
        if n.rule:
            attributes += f", tooltip={_dot_quote(n.rule)}"
        lines.append(f"  {_dot_quote(n.name)} [{attributes}];")
    for n in trace_.nodes:
        edges = {e.position: e for e in n.edges} if n.kind == "op" else {}
        for i, parent in enumerate(n.parents):
            if parent is None:  # a constant, shown inside the node's label
                continue
            edge = edges.get(i)
            text = _edge_texts(edge, J, digits)[0] if edge else ""
            lines.append(f"  {_dot_quote(parent.name)} -> {_dot_quote(n.name)} [label={_dot_quote(text)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


class GraphvizError(RuntimeError):
    """Graphviz's dot is not installed, or failed."""


def render_png(dot_text: str, path: str) -> None:
    """Render DOT to a PNG with Graphviz's `dot` program."""
    exe = shutil.which("dot")
    if exe is None:
        raise GraphvizError(
            "--png needs Graphviz's `dot` program: install it (apt-get install graphviz, or brew install graphviz), "
            "or write --dot FILE and render it elsewhere"
        )
    done = subprocess.run([exe, "-Tpng", "-o", path], input=dot_text.encode(), capture_output=True, check=False)
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip().splitlines()
        raise GraphvizError(f"dot failed: {message[0] if message else f'exit code {done.returncode}'}")


# ================================================================ expressions

# name in the expression → (the custom_ops function, the same on plain numbers, for constants)
_UNARY: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[float], float]]] = {
    "sin": (ops.sin, math.sin),
    "cos": (ops.cos, math.cos),
    "exp": (ops.exp, math.exp),
    "log": (ops.log, math.log),
    "tanh": (ops.tanh, math.tanh),
    "sigmoid": (ops.sigmoid, lambda v: 1 / (1 + math.exp(-v))),
    "relu": (ops.relu, lambda v: max(v, 0.0)),
    "square": (ops.square, lambda v: v * v),
}
_BINARY: dict[str, tuple[Callable[..., Tensor], Callable[[float, float], float]]] = {
    "add": (ops.add, lambda a, b: a + b),
    "sub": (ops.sub, lambda a, b: a - b),
    "mul": (ops.mul, lambda a, b: a * b),
    "div": (ops.div, lambda a, b: a / b),
    "pow": (ops.pow, lambda a, b: a**b),
    "max": (ops.maximum, max),
}
_OPERATORS = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div", ast.Pow: "pow"}
_ALLOWED = "numbers, variables, + - * / **, unary -, and " + ", ".join([*_UNARY, "max"])
_FORBIDDEN = {
    ast.Attribute: "attribute access (.)", ast.Subscript: "subscripts ([...])", ast.Lambda: "lambda",
    ast.ListComp: "comprehensions", ast.SetComp: "comprehensions", ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions", ast.JoinedStr: "f-strings", ast.Compare: "comparisons",
    ast.BoolOp: "and/or", ast.IfExp: "if/else", ast.NamedExpr: "assignments (:=)", ast.List: "lists",
    ast.Tuple: "tuples", ast.Set: "sets", ast.Dict: "dicts", ast.Starred: "starred arguments",
    ast.Await: "await", ast.Yield: "yield", ast.YieldFrom: "yield", ast.Slice: "slices",
}  # fmt: skip
_OPERATOR_SYMBOLS = {
    ast.FloorDiv: "//", ast.Mod: "%", ast.MatMult: "@", ast.LShift: "<<", ast.RShift: ">>",
    ast.BitOr: "|", ast.BitAnd: "&", ast.BitXor: "^ (for powers write **)",
}  # fmt: skip

# A parsed expression is a tree of tuples: ("var", name), ("num", value) or
# (function, children, parameters). Tuples compare by value, so identical subtrees are
# equal: that is how x**2, written twice, becomes the one shared node t.
Tree = tuple


class ExpressionError(ValueError):
    """The expression is not one explain accepts; the message says why, in one line."""


@dataclass(frozen=True)
class Expression:
    """An arithmetic expression parsed into custom_ops calls: call it with the variables."""

    text: str
    tree: Tree
    variables: tuple[str, ...]  # in order of first appearance

    def __call__(self, **values: Tensor) -> Tensor:
        return _evaluate_tree(self.tree, values, {})


def parse_expression(text: str) -> Expression:
    """Parse with Python's ast (never eval) into our ops; refuse anything else."""
    try:
        body = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as error:
        raise ExpressionError(f"cannot parse {_short(text.strip())!r}: {error.msg}") from None
    except (ValueError, RecursionError, MemoryError):
        raise ExpressionError("cannot parse the expression: it is malformed or nested too deeply") from None
    try:
        tree = _convert(body)
    except RecursionError:
        raise ExpressionError("the expression is nested too deeply") from None
    variables = tuple(dict.fromkeys(_variables(tree)))
    if tree[0] == "num":
        raise ExpressionError("the expression has no variables: there is nothing to differentiate")
    if tree[0] == "var":
        raise ExpressionError(f"the expression is just the variable {tree[1]}: apply at least one operation to it")
    if "J" in variables:
        raise ExpressionError("J names the output: call the variable something else")
    return Expression(text.strip(), tree, variables)


def _convert(node: ast.AST) -> Tree:
    """One AST node into the tree, folding constant parts (2*3 → 6), refusing the rest."""
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            what = "strings" if isinstance(node.value, (str, bytes)) else f"the constant {node.value!r}"
            raise ExpressionError(f"{what} not allowed: use only {_ALLOWED}")
        return ("num", _finite(node.value, ast.unparse(node)))
    if isinstance(node, ast.Name):
        if node.id in _UNARY or node.id == "max":
            raise ExpressionError(f"{node.id} is a function: call it, as in {node.id}(x)")
        return ("var", node.id)
    if isinstance(node, ast.UnaryOp):
        if isinstance(node.op, ast.UAdd):
            return _convert(node.operand)
        if isinstance(node.op, ast.USub):
            return _apply("mul", [("num", -1.0), _convert(node.operand)], node)
        raise ExpressionError(
            f"the operator {'not' if isinstance(node.op, ast.Not) else '~'} is not allowed: use only {_ALLOWED}"
        )
    if isinstance(node, ast.BinOp):
        if type(node.op) not in _OPERATORS:
            raise ExpressionError(
                f"the operator {_OPERATOR_SYMBOLS.get(type(node.op), '?')} is not allowed: use only {_ALLOWED}"
            )
        return _apply(_OPERATORS[type(node.op)], [_convert(node.left), _convert(node.right)], node)
    if isinstance(node, ast.Call):
        return _call(node)
    what = _FORBIDDEN.get(type(node), type(node).__name__)
    raise ExpressionError(f"{what} not allowed in an expression: use only {_ALLOWED}")


def _call(node: ast.Call) -> Tree:
    if not isinstance(node.func, ast.Name):
        what = _FORBIDDEN.get(type(node.func), "calling the result of an expression")
        raise ExpressionError(f"{what} not allowed: only the functions {', '.join([*_UNARY, 'max'])} may be called")
    name = node.func.id
    if name not in _UNARY and name != "max":
        raise ExpressionError(f"unknown function {name!r}: the functions allowed are {', '.join([*_UNARY, 'max'])}")
    if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
        raise ExpressionError(f"{name}() takes plain arguments only, no keywords or *args")
    arity = 2 if name == "max" else 1
    if len(node.args) != arity:
        raise ExpressionError(f"{name}() takes {arity} argument{'s' * (arity > 1)}, got {len(node.args)}")
    return _apply(name, [_convert(a) for a in node.args], node)


def _apply(function: str, children: list[Tree], node: ast.AST) -> Tree:
    if all(c[0] == "num" for c in children):  # constants only: compute the number now
        fold = _UNARY[function][1] if function in _UNARY else _BINARY[function][1]
        try:
            value = fold(*(c[1] for c in children))
        except (ArithmeticError, ValueError) as error:
            raise ExpressionError(f"cannot compute the constant {_short(ast.unparse(node))}: {error}") from None
        return ("num", _finite(value, _short(ast.unparse(node))))
    if function == "pow":
        base, exponent = children
        if exponent[0] != "num":
            a, b = (
                _short(ast.unparse(n), simple=isinstance(n, (ast.Name, ast.Constant))) for n in (node.left, node.right)
            )
            raise ExpressionError(
                f"{_short(ast.unparse(node))}: the exponent of ** must be a number (custom_ops.pow takes a number); "
                f"for a variable power write exp({b}*log({a}))"
            )
        if exponent[1] == 2:  # the lecture's t = x²
            return ("square", (base,), ())
        return ("pow", (base,), (exponent[1],))
    return (function, tuple(children), ())


def _short(text: str, simple: bool = True) -> str:
    """Source text for a one-line message: cut when long, in parentheses unless simple."""
    text = text if len(text) <= 40 else text[:37] + "..."
    return text if simple else f"({text})"


def _finite(value: Any, text: str) -> float:
    if isinstance(value, complex):
        raise ExpressionError(f"the constant {text} is not a real number")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ExpressionError(f"the constant {text} is not finite")
    return number


def _variables(tree: Tree) -> Iterator[str]:
    if tree[0] == "var":
        yield tree[1]
    elif tree[0] != "num":
        for child in tree[1]:
            yield from _variables(child)


def _evaluate_tree(tree: Tree, values: dict[str, Tensor], memo: dict[Tree, Any]) -> Any:
    """Left to right, depth first, as Python evaluates; memo makes equal subtrees one node."""
    kind = tree[0]
    if kind == "var":
        return values[tree[1]]
    if kind == "num":
        return tree[1]
    if tree not in memo:
        function, children, parameters = tree
        args = [_evaluate_tree(child, values, memo) for child in children]
        op = _UNARY[function][0] if function in _UNARY else _BINARY[function][0]
        memo[tree] = op(*args, *parameters)
    return memo[tree]


# ================================================================ command line


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, no usage dump
        raise _UsageError(message)


def _parse_value(name: str, text: str) -> float | list:
    """A number or a (nested) list of numbers, read with ast: never eval."""
    text = text.strip()
    if text.startswith("["):
        try:
            return _literal_list(ast.parse(text, mode="eval").body)
        except (SyntaxError, ValueError, TypeError, RecursionError):
            raise ExpressionError(f"--at {name}={text}: expected a list of numbers like [1, 2.5, -3]") from None
    try:
        value = float(text)
    except ValueError:
        raise ExpressionError(f"--at {name}={text}: not a number") from None
    if not math.isfinite(value):
        raise ExpressionError(f"--at {name}={text}: not a finite number")
    return value


def _literal_list(node: ast.AST) -> float | list:
    if isinstance(node, ast.List) and node.elts:
        return [_literal_list(e) for e in node.elts]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal_list(node.operand)
        if isinstance(value, list):
            raise TypeError("a sign before a list")
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Constant) and type(node.value) in (int, float) and math.isfinite(node.value):
        return float(node.value)
    raise ValueError("not a number")


def parse_at(items: list[str], expression: Expression) -> dict[str, Tensor]:
    """--at x=1.5 --at "y=[1,2]" → {'x': tensor(1.5), 'y': tensor([1., 2.])}, checked
    against the expression's variables."""
    values: dict[str, Tensor] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            raise ExpressionError(f"--at {item!r}: write NAME=VALUE, as in --at x=1.5")
        if name in values:
            raise ExpressionError(f"--at {name} is given twice")
        if name not in expression.variables:
            raise ExpressionError(
                f"--at {name}: the expression has no variable {name} (it uses {', '.join(expression.variables)})"
            )
        value = _parse_value(name, text)
        try:
            values[name] = torch.tensor(value, dtype=torch.float64)
        except (ValueError, TypeError):
            raise ExpressionError(f"--at {name}: the nested lists must be rectangular") from None
    missing = [v for v in expression.variables if v not in values]
    if missing:
        raise ExpressionError(f"no value for {', '.join(missing)}: add {' '.join(f'--at {m}=VALUE' for m in missing)}")
    return values


def explain_expression(text: str, at: dict[str, float | list] | list[str]) -> Trace:
    """Parse, evaluate with custom_ops and walk: what the command line prints, as a Trace."""
    expression = parse_expression(text)
    if not isinstance(at, list):  # {"x": 1.5} reads as ["x=1.5"]
        at = [f"{name}={value}" for name, value in at.items()]
    result = trace(expression, **parse_at(at, expression))
    shown = ", ".join(f"{k} = {_nested(v.tolist(), _num)}" for k, v in result.input_values.items())
    result.title = f"{result.output.name} = {expression.text}    at {shown}"
    return result


def _build_parser() -> _Parser:
    parser = _Parser(
        prog="python -m custom_ops.explain",
        description="Walk an expression's computation graph node by node: forward values, adjoints, gradients.",
        epilog='example: python -m custom_ops.explain "cos(sin(x**2) + 3*x**2)" --at x=1.5',
    )
    parser.add_argument("expression", help=f"built from {_ALLOWED}")
    parser.add_argument("--at", action="append", default=[], metavar="NAME=VALUE",
                        help='a variable\'s value, a number or a list: --at x=1.5 --at "y=[1,2,3]"')  # fmt: skip
    parser.add_argument("--dot", metavar="FILE", help="write the graph in Graphviz DOT")
    parser.add_argument("--png", metavar="FILE", help="render the graph with Graphviz's dot program")
    parser.add_argument("--json", action="store_true", help="print the tables as JSON")
    parser.add_argument("--digits", type=int, default=4, help="decimals in the tables (default 4)")
    parser.add_argument("--h", type=float, default=1e-6, help="finite-difference step (default 1e-6)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit code: 0, or 2 with one line `error: ...` on stderr."""
    try:
        args = _build_parser().parse_args(argv)
        if not 0 <= args.digits <= 17:
            raise _UsageError(f"--digits {args.digits}: choose 0 to 17")
        if not 0 < args.h < 1:
            raise _UsageError(f"--h {args.h}: the step must be between 0 and 1")
        result = explain_expression(args.expression, args.at)
    except (_UsageError, ExpressionError, TraceError) as error:
        return _fail(str(error))
    except RecursionError:
        return _fail("the expression is nested too deeply")
    except RuntimeError as error:  # torch's, e.g. shapes that do not broadcast
        return _fail(str(error).strip().splitlines()[0])
    if args.json:
        print(json.dumps(result.to_json(args.h), indent=2))
    else:
        print(result.report(args.digits, args.h))
    dot_text = result.to_dot(args.digits)
    try:
        if args.dot:
            with open(args.dot, "w", encoding="utf-8") as file:
                file.write(dot_text)
        if args.png:  # after --dot: without Graphviz, the DOT file is still written
            render_png(dot_text, args.png)
    except (GraphvizError, OSError) as error:
        return _fail(str(error))
    return 0


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
