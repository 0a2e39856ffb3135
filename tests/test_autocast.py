"""Mixed precision: every op under torch.autocast (bfloat16 on CPU) follows its stated
policy, backward runs without dtype mismatches, and results stay close to float32."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import custom_ops as C
from custom_ops.registry import OP_DB

CASES = [
    pytest.param(info, s, id=f"{info.name}-{i}")
    for info in OP_DB
    for i, s in enumerate(info.sample_inputs())
    if all(a.numel() > 0 for a in s.args if isinstance(a, torch.Tensor))
]


def run(info, sample, autocast: bool):
    s = sample.converted(torch.float32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = info.op(*s.args, **s.kwargs)
    inputs = [s.args[i] for i in s.differentiable()]
    grads = torch.autograd.grad(y, inputs, torch.ones_like(y)) if y.requires_grad else []
    return y, inputs, grads


@pytest.mark.parametrize("info, sample", CASES)
def test_op_under_bfloat16_autocast_follows_its_policy_and_stays_close(info, sample):
    y, inputs, grads = run(info, sample, autocast=True)
    expected_dtype = {"lower": torch.bfloat16, "float32": torch.float32, "as_is": torch.float32}[info.function.autocast]
    assert y.dtype == expected_dtype, f"{info.name} ({info.function.autocast}) gave {y.dtype}"
    y32, _, grads32 = run(info, sample, autocast=False)
    torch.testing.assert_close(y.float(), y32, atol=5e-2, rtol=5e-2)
    for x, d, d32 in zip(inputs, grads, grads32):
        assert d.dtype == x.dtype  # each gradient comes back in its input's dtype
        torch.testing.assert_close(d, d32, atol=5e-2, rtol=5e-2)


def test_every_op_states_an_autocast_policy():
    for info in OP_DB:
        assert info.function.__dict__.get("autocast") in ("lower", "float32", "as_is"), info.name


def test_mlp_step_under_autocast_matches_native_autocast():
    """bfloat16 costs the same precision with our ops as with torch's (the first layer's
    gradients are ~10 % off float32 either way here), and no dtype mismatch arises."""
    gen = torch.Generator().manual_seed(0)
    x, labels = torch.randn(32, 20, generator=gen), torch.randint(4, (32,), generator=gen)
    init = [torch.randn(16, 20, generator=gen) * 0.2, torch.zeros(16), torch.randn(4, 16, generator=gen) * 0.2, torch.zeros(4)]

    def step(linear, relu, cross_entropy, autocast: bool):
        params = [p.clone().requires_grad_() for p in init]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = cross_entropy(linear(relu(linear(x, params[0], params[1])), params[2], params[3]), labels)
        loss.backward()
        return loss, [p.grad for p in params]

    loss_ours, grads_ours = step(C.linear, C.relu, C.cross_entropy, autocast=True)
    loss_torch, grads_torch = step(F.linear, torch.relu, F.cross_entropy, autocast=True)
    loss_fp32, _ = step(F.linear, torch.relu, F.cross_entropy, autocast=False)
    assert loss_ours.dtype == torch.float32
    torch.testing.assert_close(loss_ours, loss_torch)
    torch.testing.assert_close(loss_ours, loss_fp32, atol=2e-2, rtol=2e-2)
    for ours, theirs in zip(grads_ours, grads_torch):
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours, theirs, atol=1e-3, rtol=1e-2)
