"""The lecture's worked example: J = cos(sin(x²) + 3x²), node by node."""

import math

import pytest
import torch

import custom_ops as C


def lecture_J(x):
    t = C.square(x)  # t = x², used twice: fan-out
    s = C.sin(t)
    u = C.add(s, C.mul(3.0, t))
    return C.cos(u)


def closed_form_dJ_dx(x: float) -> float:
    return -math.sin(math.sin(x * x) + 3 * x * x) * (2 * x * math.cos(x * x) + 6 * x)


@pytest.mark.parametrize("x0", [-2.0, -0.7, 0.0, 0.3, 1.5, 2.2])
def test_dJ_dx_matches_the_closed_form(x0):
    x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
    lecture_J(x).backward()
    assert x.grad.item() == pytest.approx(closed_form_dJ_dx(x0), rel=1e-12, abs=1e-12)


def test_lecture_example_passes_gradcheck_and_gradgradcheck():
    x = torch.linspace(-2, 2, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lecture_J, (x,), check_forward_ad=True, check_batched_grad=True)
    assert torch.autograd.gradgradcheck(lecture_J, (x,))


def test_shared_node_gets_both_contributions():
    """dJ/dt = dJ/ds · ds/dt + dJ/du · 3: one term through sin, one through 3t."""
    x = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    t = C.square(x)
    t.retain_grad()
    u = C.add(C.sin(t), C.mul(3.0, t))
    J = C.cos(u)
    J.backward()
    dJ_du = -math.sin(u.item())
    assert t.grad.item() == pytest.approx(dJ_du * math.cos(t.item()) + dJ_du * 3, rel=1e-12)
