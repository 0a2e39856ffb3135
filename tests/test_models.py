"""models/: each model equals a plain-PyTorch twin (values and gradients), passes
gradcheck w.r.t. all its parameters, uses only custom_ops, and learns."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import custom_ops
from helpers import walk_graph
from models import MLP, Linear, LogisticRegression, ReLU, Sigmoid, Tanh, build_classifier, make_activation

TORCH_ACTIVATIONS = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}


def torch_twin(model: nn.Module) -> nn.Sequential:
    """The same network from torch.nn, loaded with the model's weights."""
    layers = []
    for layer in model.layers:
        if isinstance(layer, Linear):
            layers.append(nn.Linear(layer.in_features, layer.out_features))
        else:
            name = {Sigmoid: "sigmoid", Tanh: "tanh", ReLU: "relu"}[type(layer)]
            layers.append(TORCH_ACTIVATIONS[name]())
    twin = nn.Sequential(*layers).to(next(model.parameters()))
    twin.load_state_dict({key.removeprefix("layers."): value for key, value in model.state_dict().items()})
    return twin


def twin_loss(model: nn.Module, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if isinstance(model, LogisticRegression) and model.binary:
        return F.binary_cross_entropy_with_logits(logits.reshape(-1), target.to(logits.dtype))
    return F.cross_entropy(logits, target)


MODELS = {
    "lr-binary": lambda: LogisticRegression(5, 2),
    "lr-multinomial": lambda: LogisticRegression(5, 4),
    "mlp-sigmoid": lambda: MLP(5, [7], 3, "sigmoid"),
    "mlp-tanh-deep": lambda: MLP(5, [7, 6], 4, "tanh"),
    "mlp-relu-deep": lambda: MLP(5, [8, 6, 4], 3, "relu"),
    "mlp-relu-binary": lambda: MLP(5, [4], 2, "relu"),
}


def batch(model: nn.Module, n: int = 16, dtype=torch.float32, device="cpu", seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, model.in_features, generator=generator, dtype=dtype).to(device)
    y = torch.randint(0, model.num_classes, (n,), generator=generator).to(device)
    return x, y


def test_linear_initializes_like_nn_linear():
    torch.manual_seed(3)
    ours = Linear(13, 7)
    torch.manual_seed(3)
    theirs = nn.Linear(13, 7)
    assert torch.equal(ours.weight, theirs.weight) and torch.equal(ours.bias, theirs.bias)
    assert ours.weight.abs().max() <= 1 / 13**0.5 and ours.bias.abs().max() <= 1 / 13**0.5


def test_linear_without_bias():
    layer = Linear(4, 3, bias=False)
    assert layer.bias is None and [name for name, _ in layer.named_parameters()] == ["weight"]
    x = torch.randn(2, 4)
    torch.testing.assert_close(layer(x), x @ layer.weight.T)


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "relu"])
def test_activation_modules_match_torch(name):
    x = torch.randn(50, dtype=torch.float64, requires_grad=True)
    y = make_activation(name)(x)
    x_ref = x.detach().clone().requires_grad_()
    y_ref = TORCH_ACTIVATIONS[name]()(x_ref)
    torch.testing.assert_close(y, y_ref)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad)


def test_unknown_activation_and_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="unknown activation"):
        make_activation("gelu")
    with pytest.raises(ValueError, match="at least 2 classes"):
        LogisticRegression(3, 1)
    with pytest.raises(ValueError, match="positive"):
        MLP(3, [4, 0], 2)
    with pytest.raises(ValueError, match="unknown model"):
        build_classifier("svm", 3, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_and_gradients_equal_plain_pytorch_twin(name, dtype, device):
    torch.manual_seed(0)
    model = MODELS[name]().to(device=device, dtype=dtype)
    twin = torch_twin(model)
    x, y = batch(model, dtype=dtype, device=device)

    logits = model(x)
    twin_logits = twin(x)
    if isinstance(model, LogisticRegression) and model.binary:
        assert logits.shape == (len(x),)  # one logit per sample
        twin_logits = twin_logits.reshape(-1)
    else:
        assert logits.shape == (len(x), model.num_classes)
    torch.testing.assert_close(logits, twin_logits)
    loss, expected_loss = model.loss(logits, y), twin_loss(model, twin_logits, y)
    torch.testing.assert_close(loss, expected_loss)

    loss.backward()
    expected_loss.backward()
    twin_grads = {f"layers.{key}": p.grad for key, p in twin.named_parameters()}
    for key, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, twin_grads[key], msg=f"gradient of {key}")
    assert torch.equal(model.predict(logits), torch_predict(model, twin_logits))


def torch_predict(model, logits):
    if isinstance(model, LogisticRegression) and model.binary:
        return (torch.sigmoid(logits) > 0.5).long()
    return logits.argmax(-1)


@pytest.mark.parametrize("name", ["lr-binary", "lr-multinomial", "mlp-sigmoid", "mlp-tanh-deep", "mlp-relu-deep"])
def test_gradcheck_loss_wrt_all_parameters(name):
    torch.manual_seed(1)
    model = MODELS[name]().double()
    x, y = batch(model, n=6, dtype=torch.float64, seed=1)
    names = [key for key, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in model.parameters())

    def loss_of(*values):
        logits = torch.func.functional_call(model, dict(zip(names, values, strict=True)), (x,))
        return model.loss(logits, y)

    assert torch.autograd.gradcheck(loss_of, params, eps=1e-6, atol=1e-5)


ALLOWED_NODES = {f"{name}Backward" for name in custom_ops.CLASSES} | {
    "AccumulateGrad", "ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0",
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(MODELS))
def test_backward_graph_is_only_custom_ops(name):
    """Every node autograd recorded is one of custom_ops' Functions (or a reshape)."""
    model = MODELS[name]()
    x, y = batch(model)
    node_names = graph_nodes(model.loss(model(x), y))
    for node_name in node_names:
        assert node_name in ALLOWED_NODES, f"{node_name} is not a custom_ops op"
    assert "LinearBackward" in node_names


def iris_tensors():
    from sklearn.datasets import load_iris

    features, labels = load_iris(return_X_y=True)
    features = (features - features.mean(0)) / features.std(0)
    return torch.tensor(features, dtype=torch.float32), torch.tensor(labels)


@pytest.mark.parametrize(
    "make",
    [
        lambda: LogisticRegression(4, 3),
        lambda: MLP(4, [16], 3, "sigmoid"),
        lambda: MLP(4, [16, 8], 3, "relu"),
        lambda: MLP(4, [16], 3, "tanh"),
    ],
    ids=["lr", "mlp-sigmoid", "mlp-relu-deep", "mlp-tanh"],
)
def test_loss_falls_when_trained(make):
    torch.manual_seed(0)
    x, y = iris_tensors()
    model = make()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    first = model.loss(model(x), y).item()
    for _ in range(100):
        optimizer.zero_grad()
        loss = model.loss(model(x), y)
        loss.backward()
        optimizer.step()
    final = model.loss(model(x), y).item()
    assert final < 0.3 * first
    assert (model.predict(model(x)) == y).float().mean() > 0.9


def test_binary_logistic_regression_learns_a_separable_problem():
    torch.manual_seed(0)
    x = torch.randn(200, 2)
    y = (x[:, 0] + 2 * x[:, 1] > 0).long()
    model = LogisticRegression(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(200):
        optimizer.zero_grad()
        model.loss(model(x), y).backward()
        optimizer.step()
    assert (model.predict(model(x)) == y).float().mean() > 0.97


def test_zero_init_keeps_hidden_units_identical():
    """The lecture's point about --init zero: with all weights 0, every hidden unit of a
    layer gets the same gradient, so they stay copies of each other."""
    torch.manual_seed(0)
    x, y = iris_tensors()
    model = build_classifier("mlp", 4, 3, [5], "sigmoid", init="zero")
    assert all(not p.any() for p in model.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(20):
        optimizer.zero_grad()
        model.loss(model(x), y).backward()
        optimizer.step()
    first_layer = model.layers[0].weight
    assert first_layer.abs().sum() > 0  # it did learn something
    assert torch.allclose(first_layer, first_layer[0].expand_as(first_layer))


def test_random_init_is_reproducible_and_initialize_resets():
    torch.manual_seed(5)
    a = build_classifier("mlp", 4, 3, [6, 5], "relu")
    torch.manual_seed(5)
    b = build_classifier("mlp", 4, 3, [6, 5], "relu")
    for (key, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), key
    a.initialize("zero")
    assert all(not p.any() for p in a.parameters())
    with pytest.raises(ValueError, match="unknown init"):
        a.initialize("ones")


# ---------------------------------------------------------------- MLP: a Linear and its activation as one op


def graph_nodes(output: torch.Tensor) -> list[str]:
    return [type(node).__name__ for node in walk_graph(output)]


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_mlp_runs_each_hidden_layer_as_one_op_with_the_same_values_and_gradients(activation):
    """MLP.forward runs Linear + activation as linear_relu (and the like): bit for bit
    what the layers give one by one, forward and backward."""
    fused_op = {"relu": "LinearReluBackward", "sigmoid": "LinearSigmoidBackward", "tanh": "LinearTanhBackward"}
    model = MLP(5, [8, 6], 3, activation).double()
    x, y = batch(model, dtype=torch.float64)
    fused_logits = model(x)
    assert graph_nodes(fused_logits).count(fused_op[activation]) == 2
    assert graph_nodes(fused_logits).count("LinearBackward") == 1  # the output layer has no activation
    fused_grads = torch.autograd.grad(model.loss(fused_logits, y), list(model.parameters()))
    apart_logits = model.layers(x)  # nn.Sequential: one module at a time
    assert fused_op[activation] not in graph_nodes(apart_logits)
    apart_grads = torch.autograd.grad(model.loss(apart_logits, y), list(model.parameters()))
    assert torch.equal(fused_logits, apart_logits)
    for fused, apart in zip(fused_grads, apart_grads, strict=True):
        assert torch.equal(fused, apart)


@pytest.mark.parametrize("where", ["activation", "linear", "sequential", "every module"])
def test_mlp_runs_layers_apart_where_hooks_are_set(where):
    """A hook must see every call of its module, so no layer it watches is fused."""
    model = MLP(4, [6], 3, "relu")
    x, _ = batch(model)
    calls = []

    def hook(module, inputs, output):
        calls.append(type(module).__name__)

    if where == "every module":
        handle = torch.nn.modules.module.register_module_forward_hook(hook)
    else:
        module = {"activation": model.layers[1], "linear": model.layers[0], "sequential": model.layers}[where]
        handle = module.register_forward_hook(hook)
    try:
        logits = model(x)
    finally:
        handle.remove()
    assert "LinearReluBackward" not in graph_nodes(logits)
    expected = {"activation": ["ReLU"], "linear": ["Linear"], "sequential": ["Sequential"]}.get(where)
    assert calls == (expected or ["Linear", "ReLU", "Linear", "Sequential", "MLP"])
    assert "LinearReluBackward" in graph_nodes(model(x))  # hooks removed: fused again


def test_mlp_does_not_fuse_a_subclassed_module():
    model = MLP(4, [6], 3, "relu")
    x, _ = batch(model)

    class LeakyReLU(ReLU):
        def forward(self, x):
            return custom_ops.maximum(x, custom_ops.mul(x, 0.1))

    model.layers[1] = LeakyReLU()
    nodes = graph_nodes(model(x))
    assert "LinearReluBackward" not in nodes and "MaximumBackward" in nodes
