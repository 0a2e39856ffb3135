"""The verification battery: the checks that prove a hand-derived op right.

Each check takes the function under test, a `Sample` of its inputs and, where it
compares, the reference (the torch twin), and raises AssertionError with a message that
says what is wrong. The test suite runs every op of the database through these same
functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor


@dataclass
class Sample:
    """One call of an op: positional args (tensors or numbers) and keyword args."""

    args: tuple
    kwargs: dict = field(default_factory=dict)
    desc: str = ""

    def __repr__(self) -> str:
        shapes = ", ".join(f"{tuple(a.shape)}" if isinstance(a, Tensor) else repr(a) for a in self.args)
        kw = "".join(f", {k}={v!r}" for k, v in self.kwargs.items())
        return f"({shapes}{kw}){' ' + self.desc if self.desc else ''}"

    def differentiable(self) -> list[int]:
        """Positions of the floating-point tensors: the inputs we differentiate."""
        return [i for i, a in enumerate(self.args) if isinstance(a, Tensor) and a.is_floating_point()]

    def converted(self, dtype: torch.dtype | None = None, device: str | torch.device | None = None,
                  requires_grad: bool = False) -> Sample:
        """A copy with float tensors cast to dtype (others kept), on device, as fresh leaves."""

        def convert(a):
            if not isinstance(a, Tensor):
                return a
            a = a.detach().to(device=device or a.device, dtype=dtype if a.is_floating_point() and dtype else a.dtype)
            return a.clone().requires_grad_(requires_grad and a.is_floating_point())

        return Sample(tuple(convert(a) for a in self.args), dict(self.kwargs), self.desc)

    def bind(self, fn: Callable) -> tuple[Callable, tuple[Tensor, ...]]:
        """fn as a function of the differentiable inputs only (the others held fixed)."""
        positions = self.differentiable()

        def of_differentiable(*xs):
            args = list(self.args)
            for i, x in zip(positions, xs):
                args[i] = x
            return fn(*args, **self.kwargs)

        return of_differentiable, tuple(self.args[i] for i in positions)


def _float64(sample: Sample) -> Sample:
    return sample.converted(torch.float64, requires_grad=True)


def check_gradcheck(fn: Callable, sample: Sample, **options: Any) -> None:
    """Backward against central finite differences, in float64."""
    f, inputs = _float64(sample).bind(fn)
    assert torch.autograd.gradcheck(f, inputs, **options), f"gradcheck failed for {sample}"


def check_gradgradcheck(fn: Callable, sample: Sample) -> None:
    """Double backward against finite differences of backward, in float64."""
    f, inputs = _float64(sample).bind(fn)
    assert torch.autograd.gradgradcheck(f, inputs), f"gradgradcheck failed for {sample}"


def check_forward_ad(fn: Callable, sample: Sample) -> None:
    """jvp against finite differences (gradcheck's forward-mode check), in float64."""
    check_gradcheck(fn, sample, check_forward_ad=True, check_backward_ad=False, check_undefined_grad=False)


def check_batched_grad(fn: Callable, sample: Sample) -> None:
    """backward under vmap (torch.func's batching of our backward) equals a loop."""
    check_gradcheck(fn, sample, check_batched_grad=True)


def _random_like(t: Tensor, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device)


def _assert_close(actual: Tensor, expected: Tensor, what: str, atol: float | None = None, rtol: float | None = None) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != reference {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != reference {expected.dtype}"
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, equal_nan=True, msg=lambda m: f"{what}: {m}")


def check_matches_reference(fn: Callable, reference: Callable, sample: Sample, dtype: torch.dtype = torch.float64,
                            atol: float | None = None, rtol: float | None = None) -> None:
    """Value, dtype, shape and every input's gradient equal the reference's."""
    ours = sample.converted(dtype, requires_grad=True)
    theirs = sample.converted(dtype, requires_grad=True)
    y, y_ref = fn(*ours.args, **ours.kwargs), reference(*theirs.args, **theirs.kwargs)
    _assert_close(y, y_ref, f"value of {sample}", atol, rtol)
    positions = ours.differentiable()
    if not positions or not y_ref.requires_grad:
        return
    g = _random_like(y_ref, seed=0)
    grads = torch.autograd.grad(y, [ours.args[i] for i in positions], g, allow_unused=True)
    grads_ref = torch.autograd.grad(y_ref, [theirs.args[i] for i in positions], g, allow_unused=True)
    for i, d, d_ref in zip(positions, grads, grads_ref):
        if d_ref is None:
            continue
        assert d is not None, f"gradient of input {i} of {sample} is missing"
        _assert_close(d, d_ref, f"gradient of input {i} of {sample}", atol, rtol)


def check_jvp_matches_reference(fn: Callable, reference: Callable, sample: Sample) -> None:
    """torch.func.jvp of fn equals that of the reference, in float64."""
    f, primals = sample.converted(torch.float64).bind(fn)
    f_ref, _ = sample.converted(torch.float64).bind(reference)
    tangents = tuple(_random_like(p, seed=i) for i, p in enumerate(primals))
    y, dy = torch.func.jvp(f, primals, tangents)
    y_ref, dy_ref = torch.func.jvp(f_ref, primals, tangents)
    _assert_close(y, y_ref, f"jvp primal of {sample}")
    _assert_close(dy, dy_ref, f"jvp tangent of {sample}")


def check_jacrev_matches_reference(fn: Callable, reference: Callable, sample: Sample) -> None:
    """torch.func.jacrev (reverse mode under vmap) equals the reference's Jacobian."""
    f, primals = sample.converted(torch.float64).bind(fn)
    f_ref, _ = sample.converted(torch.float64).bind(reference)
    argnums = tuple(range(len(primals)))
    jac = torch.func.jacrev(f, argnums=argnums)(*primals)
    jac_ref = torch.func.jacrev(f_ref, argnums=argnums)(*primals)
    for i, (j, j_ref) in enumerate(zip(jac, jac_ref)):
        _assert_close(j, j_ref, f"jacobian w.r.t. input {i} of {sample}")


def check_finite(fn: Callable, sample: Sample, dtype: torch.dtype = torch.float32) -> None:
    """Value and gradients are finite (no inf, no NaN), e.g. at saturating inputs."""
    s = sample.converted(dtype, requires_grad=True)
    y = fn(*s.args, **s.kwargs)
    assert torch.isfinite(y).all(), f"non-finite value at {sample}: {y}"
    inputs = [s.args[i] for i in s.differentiable()]
    grads = torch.autograd.grad(y, inputs, torch.ones_like(y), allow_unused=True)
    for i, d in zip(s.differentiable(), grads):
        assert d is None or torch.isfinite(d).all(), f"non-finite gradient of input {i} at {sample}: {d}"
