"""custom_ops.fused_linear_sgd and MLP.fuse_sgd: a linear layer whose backward takes
plain SGD's step itself. Checked against F.linear's gradients and torch.optim.SGD."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import custom_ops
from custom_ops.registry import FUSED_DB
from helpers import walk_graph
from models import build_classifier

LR = 0.1


def leaf(*shape: int, dtype=torch.float64, requires_grad: bool = True) -> torch.Tensor:
    return torch.randn(*shape, dtype=dtype).requires_grad_(requires_grad)


def reference_step(reference, args, g, lr, **kwargs):
    """The torch twin's dL/dx, and the parameters (every arg after x) after
    torch.optim.SGD's step on the twin's gradients."""
    x, *params = (a.detach().clone().requires_grad_(a.requires_grad) for a in args)
    reference(x, *params, **kwargs).backward(g)
    torch.optim.SGD(params, lr=lr).step()
    return x.grad, [p.detach() for p in params]


CASES = [pytest.param(info, s, id=f"{info.name}-{i}") for info in FUSED_DB for i, s in enumerate(info.sample_inputs())]


@pytest.mark.parametrize("info, sample", CASES)
def test_value_input_gradient_and_step_match_the_twin_and_sgd(info, sample, device):
    x, *params = (a.detach().to(device, copy=True).requires_grad_() for a in sample.args)
    expected = info.reference(x, *params, **sample.kwargs)
    g = torch.randn_like(expected)
    dx_ref, params_ref = reference_step(info.reference, (x, *params), g, LR, **sample.kwargs)

    y = info.op(x, *params, **sample.kwargs, lr=LR)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    y.backward(g)

    torch.testing.assert_close(x.grad, dx_ref, rtol=1e-12, atol=1e-12)  # with W as forward saw it
    for param, param_ref in zip(params, params_ref, strict=True):
        torch.testing.assert_close(param.detach(), param_ref, rtol=1e-12, atol=1e-12)
        assert param.grad is None  # used, not accumulated


@pytest.mark.parametrize("info, sample", CASES)
def test_input_gradient_passes_gradcheck(info, sample, device):
    # lr = 0 takes no step, so gradcheck's repeated backward calls over one graph all
    # see the same parameters (a step would bump their version and autograd would refuse)
    x, *params = (a.detach().to(device, copy=True).requires_grad_() for a in sample.args)
    assert torch.autograd.gradcheck(lambda x: info.op(x, *params, **sample.kwargs, lr=0.0), (x,))


def test_every_fused_function_is_in_the_database_with_its_derivative():
    assert [info.name for info in FUSED_DB] == list(custom_ops.FUSED_STEPS)
    for info in FUSED_DB:
        assert info.op is getattr(custom_ops, info.name)
        assert info.function is getattr(custom_ops, info.function.__name__)
        assert "backward:" in info.function.__doc__ and "lr" in info.function.__doc__


def test_frozen_parameters_do_not_move():
    torch.manual_seed(0)
    x, weight, bias = leaf(5, 4), leaf(3, 4, requires_grad=False), leaf(3)
    weight_before = weight.clone()
    g = torch.randn(5, 3, dtype=torch.float64)
    _, (_, bias_ref) = reference_step(F.linear, (x, weight, bias), g, LR)
    custom_ops.fused_linear_sgd(x, weight, bias, lr=LR).backward(g)
    assert torch.equal(weight, weight_before)
    torch.testing.assert_close(bias.detach(), bias_ref, rtol=1e-12, atol=1e-12)


def test_an_input_with_no_features_steps_only_the_bias():
    # x: (0 samples, 0 features): dL/dW = gᵀx is (3, 0), empty; dL/db = Σ over no samples = 0
    x, weight, bias = leaf(0, 0), leaf(3, 0), leaf(3)
    bias_before = bias.detach().clone()
    y = custom_ops.fused_linear_sgd(x, weight, bias, lr=LR)
    torch.testing.assert_close(y, F.linear(x, weight, bias), rtol=0, atol=0)
    y.sum().backward()
    assert x.grad.shape == (0, 0) and torch.equal(bias.detach(), bias_before)


def test_double_backward_is_refused():
    x, weight = leaf(5, 4), leaf(3, 4)
    y = custom_ops.fused_linear_sgd(x, weight, None, lr=LR).sum()
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(y, x, create_graph=True)


def test_a_second_backward_finds_the_weight_changed():
    # the step changed W in place: autograd's version check refuses a second pass
    x, weight = leaf(5, 4), leaf(3, 4)
    y = custom_ops.fused_linear_sgd(x, weight, None, lr=LR).sum()
    y.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


@pytest.mark.parametrize("lr", [-0.1, float("nan"), float("inf"), True, "0.1"])
def test_bad_learning_rate_is_refused(lr):
    with pytest.raises(ValueError, match="learning rate"):
        custom_ops.fused_linear_sgd(leaf(5, 4), leaf(3, 4), None, lr=lr)
    with pytest.raises(ValueError, match="learning rate"):
        build_classifier("mlp", 4, 3, (8,), "relu").fuse_sgd(lr)


def test_unknown_activation_is_refused():
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        custom_ops.fused_linear_sgd(leaf(5, 4), leaf(3, 4), None, lr=LR, activation="gelu")


def test_computed_weight_and_bad_shapes_are_refused():
    weight = leaf(3, 4)
    with pytest.raises(ValueError, match="not a leaf"):
        custom_ops.fused_linear_sgd(leaf(5, 4), weight * 2, None, lr=LR)
    with pytest.raises(ValueError, match=r"input of shape \(5, 3\) does not fit weight of shape \(3, 4\)"):
        custom_ops.fused_linear_sgd(leaf(5, 3), weight, None, lr=LR)


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_fused_mlp_trains_exactly_like_torch_optim_sgd(activation, device):
    torch.manual_seed(0)
    fused = build_classifier("mlp", 8, 3, (16, 16), activation).double().to(device)
    plain = copy.deepcopy(fused)
    optimizer = torch.optim.SGD(plain.parameters(), lr=LR)
    fused.fuse_sgd(LR)
    assert repr(fused).count(f"fused_sgd_lr={LR}") == 3  # every Linear says it steps itself
    x, y = torch.randn(20, 8, dtype=torch.float64, device=device), torch.randint(0, 3, (20,), device=device)
    # the hidden layers step with their activation in the same op, the output layer alone
    nodes = [fn.name() for fn in walk_graph(fused(x))]
    assert nodes.count("LinearSGDStepBackward") == 3
    assert not {"ReluBackward", "SigmoidBackward", "TanhBackward"} & set(nodes)
    for _ in range(5):
        fused.loss(fused(x), y).backward()
        optimizer.zero_grad(set_to_none=True)
        plain.loss(plain(x), y).backward()
        optimizer.step()
    for p_fused, p_plain in zip(fused.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p_fused, p_plain, rtol=1e-12, atol=1e-12)
        assert p_fused.grad is None

    with torch.no_grad():  # evaluation takes the plain linear: no graph, no step
        torch.testing.assert_close(fused(x), plain(x), rtol=1e-12, atol=1e-12)
    fused.fuse_sgd(None)  # back to gradients for an optimizer
    assert "fused_sgd_lr" not in repr(fused)
    fused.loss(fused(x), y).backward()
    assert all(p.grad is not None for p in fused.parameters())


def test_under_bfloat16_autocast_the_step_stays_close_to_float32(device):
    torch.manual_seed(0)
    fused = build_classifier("mlp", 8, 3, (16,), "relu").to(device)
    plain = copy.deepcopy(fused)
    x, y = torch.randn(32, 8, device=device), torch.randint(0, 3, (32,), device=device)
    fused.fuse_sgd(LR)
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        loss = fused.loss(fused(x), y)
    loss.backward()
    optimizer = torch.optim.SGD(plain.parameters(), lr=LR)
    plain.loss(plain(x), y).backward()
    optimizer.step()
    for p_fused, p_plain in zip(fused.parameters(), plain.parameters(), strict=True):
        assert p_fused.dtype == torch.float32
        torch.testing.assert_close(p_fused, p_plain, rtol=2e-2, atol=2e-3)


def test_transforms_are_refused_with_a_clear_error():
    weight = leaf(3, 4)
    with pytest.raises(RuntimeError, match="eager mode only"):
        torch.func.vmap(lambda x: custom_ops.fused_linear_sgd(x, weight, None, lr=LR))(leaf(2, 5, 4))
