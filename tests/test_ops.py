"""The op database, walked: every op against every check of the battery."""

from __future__ import annotations

import inspect
import re
import warnings
from unittest import mock

import pytest
import torch

import custom_ops
from custom_ops import testing as T
from custom_ops.registry import FUSED_DB, OP_DB

CASES = [pytest.param(info, s, id=f"{info.name}-{i}") for info in OP_DB for i, s in enumerate(info.sample_inputs())]
EXTREMES = [
    pytest.param(info, s, id=f"{info.name}-{i}")
    for info in OP_DB
    if info.extreme_inputs
    for i, s in enumerate(info.extreme_inputs())
]


@pytest.mark.parametrize("info, sample", CASES)
def test_gradcheck(info, sample, device):
    T.check_gradcheck(info.op, sample.converted(device=device))


@pytest.mark.parametrize("info, sample", CASES)
def test_gradgradcheck(info, sample, device):
    T.check_gradgradcheck(info.op, sample.converted(device=device))


@pytest.mark.parametrize("info, sample", CASES)
def test_forward_ad(info, sample, device):
    T.check_forward_ad(info.op, sample.converted(device=device))


@pytest.mark.parametrize("info", [pytest.param(info, id=info.name) for info in OP_DB])
def test_saves_for_jvp_only_inside_a_dual_level(info):
    """Outside forward-mode AD no op calls torch's save_for_forward (save_for_jvp skips its
    per-call Python there); inside a dual level each op whose jvp reads ctx.saved_for_forward
    does (add, sub, sum and mean need no tensor for theirs)."""
    jvp_reads_saved = "saved_for_forward" in inspect.getsource(info.function.jvp)
    sample = next(iter(info.sample_inputs())).converted(requires_grad=True)
    save_for_forward = torch.autograd.function.FunctionCtx.save_for_forward
    with mock.patch.object(torch.autograd.function.FunctionCtx, "save_for_forward", autospec=True,
                           side_effect=save_for_forward) as spy:
        info.op(*sample.args, **sample.kwargs)
        assert spy.call_count == 0
        with torch.autograd.forward_ad.dual_level():
            differentiable = sample.differentiable()
            args = [torch.autograd.forward_ad.make_dual(a, torch.ones_like(a)) if i in differentiable else a
                    for i, a in enumerate(sample.args)]
            assert torch.autograd.forward_ad.unpack_dual(info.op(*args, **sample.kwargs)).tangent is not None
        assert spy.call_count == jvp_reads_saved


@pytest.mark.parametrize("info", [pytest.param(info, id=info.name) for info in OP_DB])
def test_jacfwd_equals_jacrev(info):
    """torch.func.jacfwd runs each op's jvp inside its own dual level, where save_for_jvp
    must have saved what the jvp reads: its Jacobian equals the one from backward."""
    op_of, inputs = next(iter(info.sample_inputs())).converted(torch.float64).bind(info.op)
    # the Jacobian for the first differentiable input (argnums=0), the others held as they are
    torch.testing.assert_close(torch.func.jacfwd(op_of)(*inputs), torch.func.jacrev(op_of)(*inputs))


@pytest.mark.parametrize("info", [pytest.param(info, id=info.name) for info in OP_DB])
def test_tensor_leaked_from_an_exited_transform_passes_gradient_back_as_torch_does(info):
    """A tensor kept from inside torch.func.grad outlives its transform as a dead wrapper.
    torch's own ops treat it as the tensor it wraps, so a gradient reaches the leaf; our
    dispatcher must unwrap it before the Function's C++ apply, which would not."""
    op_of, (first, *others) = next(iter(info.sample_inputs())).converted(torch.float64).bind(info.op)
    leaf = first.detach().requires_grad_()
    leaked = []

    def keep(t):
        leaked.append(t)
        return t.sum()

    torch.func.grad(keep)(leaf * 1)  # a non-leaf, so that the leak is linked back to `leaf`
    assert torch._C._functorch.is_functorch_wrapped_tensor(leaked[0])

    def gradient(operand):
        output = op_of(operand, *others)
        (grad,) = torch.autograd.grad(output, leaf, torch.ones_like(output), allow_unused=True)
        return grad

    expected = gradient(leaf * 1)
    assert expected is not None
    torch.testing.assert_close(gradient(leaked[0]), expected)


@pytest.mark.parametrize("info, sample", CASES)
def test_batched_grad(info, sample):
    T.check_batched_grad(info.op, sample)


@pytest.mark.parametrize("info, sample", CASES)
def test_jvp_matches_twin(info, sample):
    T.check_jvp_matches_reference(info.op, info.reference, sample)


@pytest.mark.parametrize("info, sample", CASES)
def test_jacrev_matches_twin(info, sample):
    if any(isinstance(a, torch.Tensor) and a.numel() == 0 for a in sample.args):
        pytest.skip("torch's own vmap decompositions divide by zero on empty inputs")
    T.check_jacrev_matches_reference(info.op, info.reference, sample)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("info, sample", CASES)
def test_matches_twin(info, sample, dtype, device):
    T.check_matches_reference(info.op, info.reference, sample.converted(device=device), dtype)


@pytest.mark.parametrize("info, sample", EXTREMES)
def test_extremes_finite_and_match_twin(info, sample):
    T.check_finite(info.op, sample)
    T.check_matches_reference(info.op, info.reference, sample, torch.float32)


# ---------------------------------------------------------------- saved state and skipped work


def saved_tensors(fn, sample):
    """Every tensor that autograd saves for backward while fn runs on the sample."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        s = sample.converted(requires_grad=True)
        y = fn(*s.args, **s.kwargs)
    return y, saved


def unique_bytes(tensors):
    storages = {(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) for t in tensors}
    return sum(nbytes for _, nbytes in storages)


@pytest.mark.parametrize("info", [i for i in OP_DB if i.saves_output_only], ids=lambda i: i.name)
def test_saves_only_its_output(info):
    sample = next(s for s in info.sample_inputs() if s.args[0].dim() == 2)
    y, saved = saved_tensors(info.op, sample)
    assert len(saved) == 1 and saved[0] is y, f"{info.name} saves {[tuple(t.shape) for t in saved]}, not just y"


@pytest.mark.parametrize("info, sample", CASES)
def test_saves_no_more_than_twin(info, sample):
    _, ours = saved_tensors(info.op, sample)
    _, theirs = saved_tensors(info.reference, sample)
    # a Python number operand becomes a 0-d tensor (≤ 8 bytes) where torch keeps a C++ Scalar
    number_operands = info.name in ("add", "sub", "mul", "div") and sum(not isinstance(a, torch.Tensor) for a in sample.args)
    allowance = 8 * number_operands
    assert unique_bytes(ours) <= unique_bytes(theirs) + allowance, (
        f"{info.name} saves {unique_bytes(ours)} bytes, torch {unique_bytes(theirs)}"
    )


@pytest.mark.parametrize("info, sample", [c for c in CASES if len(c.values[1].differentiable()) > 1])
def test_computes_only_needed_gradients(info, sample):
    """With one input requiring grad, backward returns None for every other input."""
    backward = info.function.backward
    for wanted in sample.differentiable():
        returned = []
        with mock.patch.object(info.function, "backward", staticmethod(lambda ctx, *g: returned.append(backward(ctx, *g)) or returned[-1])):
            s = sample.converted()
            s.args[wanted].requires_grad_(True)
            y = info.op(*s.args, **s.kwargs)
            y.backward(torch.ones_like(y))
        (grads,) = returned
        for i, d in enumerate(grads):
            assert i == wanted or d is None, f"{info.name}: gradient of input {i} computed though only {wanted} needs one"
        assert grads[wanted] is not None


def test_maximum_at_ties_splits_the_gradient_like_torch():
    a = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    b = torch.tensor([1.0, 1.0, 4.0], requires_grad=True)
    custom_ops.maximum(a, b).sum().backward()
    assert a.grad.tolist() == [0.5, 1.0, 0.0] and b.grad.tolist() == [0.5, 0.0, 1.0]
    T.check_matches_reference(custom_ops.maximum, torch.maximum, T.Sample((a, b)))


def test_relu_subgradient_at_zero_is_zero():
    x = torch.zeros(3, requires_grad=True)
    custom_ops.relu(x).sum().backward()
    assert x.grad.tolist() == [0.0, 0.0, 0.0]


def test_number_operands_follow_torch_type_promotion():
    for x in (torch.ones(2, dtype=torch.float32), torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.int64)):
        for number in (2, 2.5):
            for name in ("add", "sub", "mul", "div", "maximum"):
                ours, theirs = getattr(custom_ops, name)(x, number), getattr(torch, name)(x, torch.tensor(number))
                assert ours.dtype == getattr(torch, name)(x, number).dtype if name != "maximum" else theirs.dtype


# ---------------------------------------------------------------- errors


def test_linear_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(2, 5\)"):
        custom_ops.linear(torch.randn(3, 4), torch.randn(2, 5))


@pytest.mark.parametrize("bad", [4, -1, -100])
def test_cross_entropy_out_of_range_target(bad, device):
    # on the CPU torch's kernel finds it; on CUDA our check must, before the kernel asserts
    with pytest.raises(IndexError, match=f"target {bad} is out of bounds for 4 classes"):
        custom_ops.cross_entropy(torch.randn(3, 4, device=device), torch.tensor([0, bad, 1], device=device))


@pytest.mark.parametrize("name", ["sum", "mean"])
@pytest.mark.parametrize("shape", [(2, 3), ()], ids=["2x3", "0-d"])
@pytest.mark.parametrize("dim", [2, -3, 5, (0, 4), (0, 0), (-1, 1), 0, -1, (0, -1)])
def test_reduction_dims_are_checked_like_torch(name, shape, dim):
    # a dim out of range once wrapped round (sum(x, 5) summed dim 1 of a 2-d x)
    x = torch.randn(shape)
    try:
        expected = getattr(torch, name)(x, dim)
    except (IndexError, RuntimeError) as error:
        with pytest.raises(type(error), match=r"^" + re.escape(str(error)).split(r"\(")[0]):
            getattr(custom_ops, name)(x, dim)
    else:
        torch.testing.assert_close(getattr(custom_ops, name)(x, dim), expected)


def _warnings_of(fn, *args) -> list[tuple[str, str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn(*args)
    return [(str(w.message), w.filename) for w in caught]


@pytest.mark.parametrize("shapes", [((5, 4), (4,)), ((5, 1), (5, 4)), ((3,), (3,))], ids=str)
def test_mse_loss_warns_like_torch_when_sizes_differ(shapes):
    # the forward skips F.mse_loss's Python, so the public function gives its warning,
    # pointing at the caller's line as torch's does
    x, y = (torch.randn(shape) for shape in shapes)
    ours, torchs = _warnings_of(custom_ops.mse_loss, x, y), _warnings_of(torch.nn.functional.mse_loss, x, y)
    assert ours == [(message, __file__) for message, _ in torchs]
    assert len(ours) == (shapes[0] != shapes[1])


def test_cross_entropy_refuses_float_targets_and_bad_reduction():
    with pytest.raises(TypeError, match="class indices"):
        custom_ops.cross_entropy(torch.randn(3, 4), torch.rand(3, 4))
    with pytest.raises(ValueError, match="reduction"):
        custom_ops.mse_loss(torch.randn(3), torch.randn(3), reduction="avg")


# ---------------------------------------------------------------- the database is complete


def test_every_public_op_has_a_database_entry():
    in_db = {info.name for info in OP_DB}
    assert set(custom_ops.FUNCTIONS) == in_db, f"missing from OP_DB: {set(custom_ops.FUNCTIONS) - in_db}"
    classes = {info.function.__name__ for info in OP_DB}
    assert set(custom_ops.CLASSES) == classes
    for info in OP_DB:
        assert info.op is getattr(custom_ops, info.name)
        assert info.function.__doc__ and "backward:" in info.function.__doc__ and "jvp:" in info.function.__doc__
        assert info.function.jvp is not torch.autograd.Function.jvp, f"{info.name} has no jvp"


def test_every_op_function_is_public():
    """No Function subclass hides in the package without being exported (and so tested)."""
    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    defined = {cls.__name__ for cls in subclasses(custom_ops.Op)}
    assert defined == set(custom_ops.CLASSES)
    # and every other Function in the package is an op's compile twin or a fused step
    # of FUSED_DB (tests/test_fused.py), so none escapes gradcheck
    twins = {info.function.without_jvp for info in OP_DB}
    fused = {info.function for info in FUSED_DB}
    others = {cls for cls in subclasses(torch.autograd.Function)
              if cls.__module__.startswith("custom_ops") and not issubclass(cls, custom_ops.Op)}  # fmt: skip
    assert others == twins | fused


def test_readme_table_lists_every_op_with_its_derivative():
    from pathlib import Path

    readme = Path(__file__).resolve().parent.parent.joinpath("README.md").read_text(encoding="utf-8")
    rows = [line for line in readme.splitlines() if line.startswith("| `")]
    for info in OP_DB:
        row = next((r for r in rows if r.startswith(f"| `{info.name}(")), None)
        assert row is not None, f"README's op table has no row for {info.name}"
        assert info.derivative in row and f"`{info.function.__name__}`" in row, f"README row for {info.name} is stale"
