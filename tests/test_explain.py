"""custom_ops.explain: the lecture's node-by-node walk, for any expression."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import custom_ops as C
from custom_ops import explain
from custom_ops.explain import explain_expression, label, main, parse_expression, trace

LECTURE = "cos(sin(x**2) + 3*x**2)"
ROOT = Path(__file__).resolve().parents[1]


def lecture_dJ_dx(x: float) -> float:
    """The closed form: dJ/dx = −sin(u) · (cos(x²) · 2x + 3 · 2x), u = sin(x²) + 3x²."""
    return -math.sin(math.sin(x * x) + 3 * x * x) * (math.cos(x * x) * 2 * x + 6 * x)


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- the lecture's example


@pytest.mark.parametrize("x0", [-2.0, -0.7, 0.3, 1.5, 2.2])
def test_lecture_gradient_matches_the_closed_form(x0):
    walk = explain_expression(LECTURE, {"x": x0})
    assert walk.gradients["x"].item() == pytest.approx(lecture_dJ_dx(x0), rel=1e-12, abs=1e-12)
    assert walk.finite_differences()["x"].item() == pytest.approx(lecture_dJ_dx(x0), rel=1e-6, abs=1e-6)


def test_lecture_nodes_are_named_and_valued_as_in_the_lecture():
    x = 1.5
    walk = explain_expression(LECTURE, {"x": x})
    # x² is written twice but is one node t (common subexpression), with two consumers
    assert [(n.name, n.op) for n in walk] == [
        ("x", "input"), ("t", "square"), ("s", "sin"), ("m", "mul"), ("u", "add"), ("J", "cos"),
    ]  # fmt: skip
    t, s, u = x * x, math.sin(x * x), math.sin(x * x) + 3 * x * x
    for name, expected in {"t": t, "s": s, "m": 3 * t, "u": u, "J": math.cos(u)}.items():
        assert walk[name].value.item() == pytest.approx(expected, rel=1e-15)
    assert walk["m"].inputs == ["3", "t"] and walk["u"].inputs == ["s", "m"]


def test_shared_node_adjoint_is_the_sum_of_its_two_contributions():
    x = 1.5
    walk = explain_expression(LECTURE, {"x": x})
    t = walk["t"]
    assert [e.child.name for e in t.contributions] == ["m", "s"]  # reverse order: m first
    dJ_du = -math.sin(math.sin(x * x) + 3 * x * x)
    via_m, via_s = (e.product.item() for e in t.contributions)
    assert via_m == pytest.approx(dJ_du * 3, rel=1e-13)  # through 3t
    assert via_s == pytest.approx(dJ_du * math.cos(x * x), rel=1e-13)  # through sin
    assert t.adjoint.item() == pytest.approx(via_m + via_s, rel=1e-13)
    assert t.adjoint_from_contributions().item() == pytest.approx(t.adjoint.item(), rel=1e-13)


def test_each_edge_has_its_local_derivative_formula_and_value():
    x = 1.5
    walk = explain_expression(LECTURE, {"x": x})
    edges = {(e.child.name, e.parent.name): e for n in walk for e in n.edges}
    assert set(edges) == {("J", "u"), ("u", "s"), ("u", "m"), ("m", "t"), ("s", "t"), ("t", "x")}
    u = math.sin(x * x) + 3 * x * x
    expected = {
        ("J", "u"): ("-sin(u)", -math.sin(u)),
        ("u", "s"): ("1", 1.0),
        ("u", "m"): ("1", 1.0),
        ("m", "t"): ("3", 3.0),
        ("s", "t"): ("cos(t)", math.cos(x * x)),
        ("t", "x"): ("2*x", 2 * x),
    }
    for key, (formula, value) in expected.items():
        assert edges[key].formula == formula
        assert edges[key].local.item() == pytest.approx(value, rel=1e-14)
        child_adjoint = edges[key].child.adjoint.item()
        assert edges[key].product.item() == pytest.approx(child_adjoint * value, rel=1e-13)


def test_the_walk_uses_our_hand_written_backward(monkeypatch):
    """Break Sin's backward: the walk's dJ/dx must follow it (and disagree with finite differences)."""
    monkeypatch.setattr(C.Sin, "backward", staticmethod(lambda ctx, g: g * 0))
    walk = explain_expression(LECTURE, {"x": 1.5})
    assert walk["s"].edges[0].local.item() == 0
    assert walk.gradients["x"].item() != pytest.approx(lecture_dJ_dx(1.5), rel=1e-3)
    assert walk.gradients["x"].item() != pytest.approx(walk.finite_differences()["x"].item(), rel=1e-3)


def test_report_has_the_three_parts(capsys):
    code, out, err = run_main(capsys, LECTURE, "--at", "x=1.5")
    assert code == 0 and err == ""
    assert "Forward pass" in out and "Backward pass" in out
    assert re.search(r"^\s+s\s+sin\s+t\s+0\.7781$", out, re.MULTILINE)
    assert "ds/dt = cos(t) = -0.6282" in out
    assert "dJ/dt += (-0.9474) * 3 = -2.8421" in out
    assert "-2.8421 (via m) + 0.5951 (via s) = -2.247" in out  # the shared node's sum
    line = next(line for line in out.splitlines() if line.strip().startswith("dJ/dx ="))
    assert float(line.split()[2]) == pytest.approx(lecture_dJ_dx(1.5), rel=1e-15)
    assert "finite difference" in line and "difference" in line


def test_module_runs_as_a_command():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "custom_ops.explain", LECTURE, "--at", "x=1.5"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "dJ/dx = -6.74092218514" in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "custom_ops.explain", "x.real", "--at", "x=1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- other expressions


def test_several_inputs_match_torch_and_finite_differences():
    walk = explain_expression("max(x*y, y/x) - x**0.5 + exp(-tanh(y)) * sigmoid(x) - relu(y)", {"x": 1.5, "y": -0.3})
    x = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    y = torch.tensor(-0.3, dtype=torch.float64, requires_grad=True)
    J = torch.maximum(x * y, y / x) - x**0.5 + torch.exp(-torch.tanh(y)) * torch.sigmoid(x) - torch.relu(y)
    dx, dy = torch.autograd.grad(J, (x, y))
    assert walk.gradients["x"].item() == pytest.approx(dx.item(), rel=1e-12)
    assert walk.gradients["y"].item() == pytest.approx(dy.item(), rel=1e-12)
    for name, fd in walk.finite_differences().items():
        assert fd.item() == pytest.approx(walk.gradients[name].item(), rel=1e-6, abs=1e-8)
    for node in walk:  # the chain rule, at every node: adjoint = Σ contributions
        if node.contributions:
            assert torch.allclose(node.adjoint_from_contributions(), node.adjoint, rtol=1e-12, atol=1e-15)


def test_vector_input_is_summed_and_said_so(capsys):
    code, out, _ = run_main(capsys, "sigmoid(x*y + 1) + x*x", "--at", "x=[1,2,3]", "--at", "y=-0.3")
    assert code == 0
    assert "The output has 3 elements; J is their sum" in out
    walk = explain_expression("sigmoid(x*y + 1) + x*x", {"x": [1.0, 2.0, 3.0], "y": -0.3})
    assert walk.summed and walk.output.op == "sum"
    x = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    expected = torch.sigmoid(x * -0.3 + 1) * (1 - torch.sigmoid(x * -0.3 + 1)) * -0.3 + 2 * x
    assert torch.allclose(walk.gradients["x"], expected, rtol=1e-12)
    assert torch.allclose(walk.finite_differences()["x"], expected, rtol=1e-6)
    # y is broadcast over x: its edge sums the per-element products
    (edge,) = [e for e in walk["y"].contributions]
    assert edge.local.shape == (3,) and edge.product.shape == ()


def test_powers_and_numbers_map_to_our_ops():
    walk = explain_expression("x**2 + x**0.5 + x**-1 + 2*x - x/4 + (-x)", {"x": 2.0})
    ops = [n.op for n in walk if n.kind == "op"]
    assert ops.count("square") == 1 and ops.count("pow") == 2
    pow_edges = [n.edges[0] for n in walk if n.op == "pow"]
    assert [e.formula for e in pow_edges] == ["0.5*x^(-0.5)", "-1*x^(-2)"]
    assert walk.gradients["x"].item() == pytest.approx(4 + 0.5 / math.sqrt(2) - 1 / 4 + 2 - 0.25 - 1, rel=1e-13)
    assert parse_expression("2*3*x").tree == ("mul", (("num", 6.0), ("var", "x")), ())  # constants folded


# ---------------------------------------------------------------- refused input

FORBIDDEN = {
    "attribute": "x.real",
    "attribute call": "x.exp()",
    "other function": "abs(x)",
    "__import__": "__import__('os').system('echo hacked')",
    "subscript": "x[0]",
    "lambda": "(lambda: x)()",
    "list comprehension": "[x for x in y]",
    "generator": "sum(x for x in y)",
    "string": "'x' + x",
    "f-string": "f'{x}'",
    "comparison": "x < y",
    "conditional": "x if y else 2",
    "walrus": "(z := x)",
    "keyword argument": "sin(x=x)",
    "tensor exponent": "x ** y",
    "number to a variable power": "2 ** x",
    "floor division": "x // y",
    "xor": "x ^ 2",
    "syntax error": "x +",
    "function without a call": "sin + x",
    "wrong arity": "max(x)",
    "no variables": "2 + 3",
}


@pytest.mark.parametrize("expression", FORBIDDEN.values(), ids=FORBIDDEN.keys())
def test_forbidden_constructs_are_refused_in_one_line(capsys, expression, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(capsys, expression, "--at", "x=1", "--at", "y=2")
    assert code == 2 and out == ""
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    with pytest.raises(explain.ExpressionError):
        parse_expression(expression)
    assert list(tmp_path.iterdir()) == []  # nothing ran


def test_the_exponent_message_says_pow_takes_a_number(capsys):
    _, _, err = run_main(capsys, "x ** y", "--at", "x=1", "--at", "y=2")
    assert "must be a number" in err and "exp(y*log(x))" in err


BAD_AT = {
    "not a number": ["--at", "x=abc"],
    "missing variable": [],
    "unknown variable": ["--at", "x=1", "--at", "z=2"],
    "given twice": ["--at", "x=1", "--at", "x=2"],
    "no equals sign": ["--at", "x"],
    "not finite": ["--at", "x=inf"],
    "ragged list": ["--at", "x=[[1, 2], [3]]"],
    "list of strings": ["--at", "x=['a']"],
}


@pytest.mark.parametrize("at", BAD_AT.values(), ids=BAD_AT.keys())
def test_bad_values_are_refused_in_one_line(capsys, at):
    code, out, err = run_main(capsys, "sin(x)", *at)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_shapes_that_do_not_broadcast_are_refused_in_one_line(capsys):
    code, _, err = run_main(capsys, "x*y", "--at", "x=[1,2]", "--at", "y=[1,2,3]")
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- DOT, PNG, JSON

NODE = re.compile(r'^\s*"([^"]+)"\s*\[label="((?:[^"\\]|\\.)*)"', re.MULTILINE)
EDGE = re.compile(r'^\s*"([^"]+)"\s*->\s*"([^"]+)"\s*\[label="((?:[^"\\]|\\.)*)"\];', re.MULTILINE)


def test_dot_output_has_every_node_and_edge(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(explain.shutil, "which", lambda name: None)  # DOT needs no Graphviz
    path = tmp_path / "graph.dot"
    code, _, _ = run_main(capsys, LECTURE, "--at", "x=1.5", "--dot", str(path))
    assert code == 0
    text = path.read_text(encoding="utf-8")
    assert text.startswith("digraph") and text.rstrip().endswith("}")
    assert text.count("{") == text.count("}")
    nodes = dict(NODE.findall(text))
    assert set(nodes) == {"x", "t", "s", "m", "u", "J"}
    assert "value = 2.25" in nodes["t"] and "dJ/dt = -2.247" in nodes["t"]
    edges = {(a, b): lab for a, b, lab in EDGE.findall(text)}
    assert set(edges) == {("x", "t"), ("t", "s"), ("t", "m"), ("s", "u"), ("m", "u"), ("u", "J")}
    assert edges[("t", "s")] == "ds/dt = cos(t) = -0.6282"


def test_dot_parses_with_pydot_when_installed():
    pydot = pytest.importorskip("pydot")
    (graph,) = pydot.graph_from_dot_data(explain_expression(LECTURE, {"x": 1.5}).to_dot())
    assert {n.get_name().strip('"') for n in graph.get_nodes()} >= {"x", "t", "s", "m", "u", "J"}
    assert len(graph.get_edges()) == 6


def test_png_without_graphviz_says_how_to_get_it_and_still_writes_dot(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(explain.shutil, "which", lambda name: None)
    dot, png = tmp_path / "g.dot", tmp_path / "g.png"
    code, out, err = run_main(capsys, LECTURE, "--at", "x=1.5", "--dot", str(dot), "--png", str(png))
    assert code == 2 and "Forward pass" in out
    assert err.startswith("error: ") and "apt-get install graphviz" in err and "brew install graphviz" in err
    assert len(err.strip().splitlines()) == 1
    assert dot.exists() and not png.exists()


@pytest.mark.skipif(sys.platform == "win32", reason="the stand-in dot is a shell script")
def test_png_is_rendered_by_the_dot_program(tmp_path, capsys, monkeypatch):
    fake = tmp_path / "bin" / "dot"  # a stand-in for Graphviz: copies its input to -o FILE
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\n[ "$1" = "-Tpng" ] && [ "$2" = "-o" ] && cat > "$3"\n')
    fake.chmod(0o755)
    monkeypatch.setattr(explain.shutil, "which", lambda name: str(fake) if name == "dot" else None)
    png = tmp_path / "g.png"
    code, _, _ = run_main(capsys, LECTURE, "--at", "x=1.5", "--png", str(png))
    assert code == 0 and png.read_text().startswith("digraph")


def test_json_has_the_same_tables(capsys):
    code, out, _ = run_main(capsys, LECTURE, "--at", "x=1.5", "--json")
    assert code == 0
    data = json.loads(out)
    assert [row["node"] for row in data["forward"]] == ["x", "t", "s", "m", "u", "J"]
    assert [row["node"] for row in data["backward"]] == ["J", "u", "m", "s", "t", "x"]
    t = next(row for row in data["backward"] if row["node"] == "t")
    assert [c["from"] for c in t["contributions"]] == ["m", "s"]
    assert t["adjoint"] == pytest.approx(sum(c["value"] for c in t["contributions"]), rel=1e-13)
    (gradient,) = data["gradients"]
    assert gradient["input"] == "x" and gradient["value"] == pytest.approx(lecture_dJ_dx(1.5), rel=1e-14)
    assert gradient["difference"] < 1e-6


# ---------------------------------------------------------------- trace() on models


def test_trace_logistic_regression_graph_from_the_lecture():
    """z = wᵀx + b, ŷ = σ(z), J = −[y log ŷ + (1 − y) log(1 − ŷ)]: dJ/dz = ŷ − y."""
    x = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    y = 1.0

    def loss(w, b):
        z = label(C.add(C.matmul(w, label(x, "x")), b), "z")
        y_hat = label(C.sigmoid(z), "y_hat")
        return C.mul(-1, C.add(C.mul(y, C.log(y_hat)), C.mul(1 - y, C.log(C.sub(1, y_hat)))))

    walk = trace(loss, w=[0.3, -0.1, 0.8], b=0.2)
    y_hat = walk["y_hat"].value
    assert walk["x"].kind == "constant" and walk["x"].adjoint is None
    assert torch.allclose(walk["z"].adjoint, y_hat - y, rtol=1e-12)
    assert torch.allclose(walk.gradients["w"], (y_hat - y) * x, rtol=1e-12)
    assert torch.allclose(walk.gradients["b"], y_hat - y, rtol=1e-12)
    fused = trace(
        lambda w, b: C.binary_cross_entropy_with_logits(C.add(C.matmul(w, x), b), torch.tensor(y)),
        w=[0.3, -0.1, 0.8],
        b=0.2,
    )
    for name in ("w", "b"):
        assert torch.allclose(fused.gradients[name], walk.gradients[name], rtol=1e-12)
    # a Jacobian edge shows its docstring's vector-Jacobian product, in this graph's names
    (matmul_edge,) = walk["w"].contributions
    assert matmul_edge.local is None and matmul_edge.formula == "dJ/dw = unbroadcast(g @ xᵀ), g = dJ/dz1"
    assert "y_hat" in walk.report() and "value" in walk.to_dot()


def test_trace_a_models_loss_with_parameters_and_a_torch_reshape():
    torch.manual_seed(0)
    linear = torch.nn.Linear(3, 1).double()
    X = torch.randn(5, 3, dtype=torch.float64)
    target = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0], dtype=torch.float64)

    def loss():
        explain.label_parameters(linear)
        logits = C.linear(X, linear.weight, linear.bias).reshape(-1)  # reshape: a torch op in between
        return C.binary_cross_entropy_with_logits(logits, target)

    walk = trace(loss)
    assert {n.name for n in walk if n.kind == "parameter"} == {"weight", "bias"}
    assert any(n.kind == "torch" for n in walk)
    reference = torch.nn.functional.binary_cross_entropy_with_logits(
        (X @ linear.weight.T + linear.bias).reshape(-1), target
    )
    dW, db = torch.autograd.grad(reference, (linear.weight, linear.bias))
    assert torch.allclose(walk.gradients["weight"], dW, rtol=1e-12)
    assert torch.allclose(walk.gradients["bias"], db, rtol=1e-12)
    before = linear.weight.detach().clone()
    fd = walk.finite_differences()
    assert torch.equal(linear.weight.detach(), before)  # the nudged weights are put back exactly
    assert torch.allclose(fd["weight"], dW, rtol=1e-6, atol=1e-9)
    assert re.search(r"<5x3: min -?\d.*, mean -?\d.*, max -?\d", walk.report())  # big tensors summarized


def test_trace_refuses_what_it_cannot_walk():
    with pytest.raises(explain.TraceError):
        trace(lambda x: x, x=1.0)
    with pytest.raises(explain.TraceError):
        trace(lambda x: 3.0, x=1.0)


def test_a_linear_and_activation_node_states_its_inner_gradient():
    """linear_relu's edges read 'dJ/dW = Σ_batch dzᵀ x with dz = g · [r > 0]': the rule
    through z = x Wᵀ + b names what dz is, in this graph's names."""
    x = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64)
    walk = trace(lambda W, b: C.sum(label(C.linear_relu(label(x, "x"), W, b), "h")), W=[[1.0, 0.5], [-1.0, 2.0]],
                 b=[0.1, -0.2])  # fmt: skip
    formulas = {edge.formula for edge in walk["W"].contributions + walk["b"].contributions}
    assert formulas == {"dJ/dW = Σ_batch dzᵀ x with dz = g · [h > 0], g = dJ/dh",
                        "dJ/db = Σ_batch dz with dz = g · [h > 0], g = dJ/dh"}  # fmt: skip
    assert torch.equal(walk.gradients["b"], (walk["h"].value > 0).sum(0).double())
