"""Every op of the op database under adversarial values: inf, -inf, nan, the largest
finite numbers, denormals, 0 and -0.

Each sample input of OP_DB gets variants with some or all of its float entries
replaced by those values, in float32 and in float64, and with each float number operand
(add's 2.5, pow's exponent) replaced. The op's value must equal its torch twin's
exactly, NaN where the twin gives NaN (`assert_close(equal_nan=True, atol=0, rtol=0)`;
the ops compute their values with torch's own kernels, so exact is the contract); where
the twin raises, ours must raise the same exception type; ours must never raise where
the twin does not. Backward then runs once and must not raise (its values may be NaN
and need not match torch's: see README-reliability.md).
"""

from __future__ import annotations

import math

import pytest
import torch

from custom_ops.registry import OP_DB, OpInfo
from custom_ops.testing import Sample

# per dtype: the values planted in the inputs: infinities, NaN, large (1e38, and near
# the dtype's largest finite number), denormal (below the smallest normal number), zeros
ADVERSARIAL = {
    torch.float32: (math.inf, -math.inf, math.nan, 1e38, -1e38, 3.4e38, 1e-45, -1e-45, 0.0, -0.0),
    torch.float64: (math.inf, -math.inf, math.nan, 1e38, -1e38, 1e308, -1.7e308, 5e-324, -5e-324, 0.0, -0.0),
}
# what a float number operand (a Python scalar) is replaced by; 1/3 is not a float32
# number, so it shows whether a float64 computation keeps the operand's precision
ADVERSARIAL_NUMBERS = (math.inf, -math.inf, math.nan, 1e308, 5e-324, -0.0, 1 / 3)
# every element set to one value: a softmax row of all -inf, a loss of all nan
WHOLE_TENSOR = (math.inf, -math.inf, math.nan)


def float_tensor_positions(sample: Sample) -> list[int]:
    return [i for i, a in enumerate(sample.args) if isinstance(a, torch.Tensor) and a.is_floating_point()]


def planted(t: torch.Tensor, values: tuple[float, ...], offset: int, stride: int) -> tuple[torch.Tensor, int]:
    """t with every stride-th element (from offset) replaced, cycling through values; and how many."""
    out = t.detach().clone().reshape(-1)
    picks = torch.arange(offset % stride, out.numel(), stride)
    if len(picks):
        out[picks] = torch.tensor([values[k % len(values)] for k in range(len(picks))], dtype=out.dtype)
    return out.reshape(t.shape), len(picks)


def variants(sample: Sample, dtype: torch.dtype, numbers: bool) -> list[tuple[str, Sample, int]]:
    """(label, variant, number of planted values): the sample in dtype with each value
    alone in every float tensor (on alternate elements, then for inf, -inf and nan on
    every element), then all values mixed in every tensor at once (so inf meets -inf,
    nan meets 0, ...); with numbers=True, instead each float number operand replaced."""
    base = sample.converted(dtype)
    positions = float_tensor_positions(base)
    values = ADVERSARIAL[dtype]
    out: list[tuple[str, Sample, int]] = []

    def variant(label: str, plant) -> None:
        args, count = list(base.args), 0
        for k, i in enumerate(positions):
            args[i], n = plant(base.args[i], k)
            count += n
        out.append((label, Sample(tuple(args), dict(base.kwargs), base.desc), count))

    if numbers:
        for i, a in enumerate(base.args):
            if isinstance(a, float):
                for value in ADVERSARIAL_NUMBERS:
                    args = list(base.args)
                    args[i] = value
                    label = f"number operand {i} = {value!r}"
                    out.append((label, Sample(tuple(args), dict(base.kwargs), base.desc), 1))
        return out
    for value in values:
        variant(f"every other element {value!r}", lambda t, k, value=value: planted(t, (value,), 0, 2))
    for value in WHOLE_TENSOR:
        variant(f"every element {value!r}", lambda t, k, value=value: planted(t, (value,), 0, 1))
    for shift in range(3):
        variant(f"all values mixed, shift {shift}", lambda t, k, shift=shift: planted(t, values, shift + k, 1))
    return out


def call(fn, sample: Sample):
    """(outputs, None) or (None, exception)."""
    try:
        y = fn(*sample.args, **sample.kwargs)
    except Exception as error:  # noqa: BLE001 - the test compares what each side raises
        return None, error
    return ([y] if isinstance(y, torch.Tensor) else [t for t in y if isinstance(t, torch.Tensor)]), None


CASES = [
    pytest.param(info, index, sample, id=f"{info.name}-{index}")
    for info in OP_DB
    for index, sample in enumerate(info.sample_inputs())
]


def mismatches(info: OpInfo, index: int, sample: Sample, dtype: torch.dtype, numbers: bool = False) -> list[str]:
    """Every variant where the op and its twin disagree, as one line each."""
    found = []
    for label, variant, _ in variants(sample, dtype, numbers):
        where = f"{info.name} sample {index} {sample!r} in {dtype}, {label}"
        ours_in = variant.converted(requires_grad=True)
        ours, our_error = call(info.op, ours_in)
        theirs, their_error = call(info.reference, variant.converted(requires_grad=True))
        if their_error is not None:
            if our_error is None:
                found.append(f"{where}: torch raises {their_error!r}, ours returns a value")
            elif not isinstance(our_error, type(their_error)):
                found.append(f"{where}: torch raises {type(their_error).__name__}, ours {our_error!r}")
            continue
        if our_error is not None:
            found.append(f"{where}: ours raises {our_error!r} where torch returns a value")
            continue
        if len(ours) != len(theirs):
            found.append(f"{where}: {len(ours)} outputs, torch {len(theirs)}")
            continue
        for y, y_ref in zip(ours, theirs, strict=True):
            if (y.shape, y.dtype) != (y_ref.shape, y_ref.dtype):
                found.append(f"{where}: {tuple(y.shape)} {y.dtype}, torch {tuple(y_ref.shape)} {y_ref.dtype}")
                continue
            try:
                torch.testing.assert_close(y, y_ref, equal_nan=True, atol=0, rtol=0)
            except AssertionError as error:
                found.append(f"{where}: {' '.join(str(error).split())}")
        # backward runs (NaN gradients are fine: the values are adversarial)
        inputs = [a for a in ours_in.args if isinstance(a, torch.Tensor) and a.requires_grad]
        outputs = [y for y in ours if y.requires_grad]
        if inputs and outputs:
            try:
                torch.autograd.grad(outputs, inputs, [torch.ones_like(y) for y in outputs], allow_unused=True)
            except Exception as error:  # noqa: BLE001
                found.append(f"{where}: backward raises {error!r}")
    return found


DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])


@DTYPES
@pytest.mark.parametrize("info, index, sample", CASES)
def test_op_matches_twin_on_adversarial_values(info: OpInfo, index: int, sample: Sample, dtype: torch.dtype):
    found = mismatches(info, index, sample, dtype)
    assert not found, f"{len(found)} mismatches:\n" + "\n".join(found)


NUMBER_CASES = [
    pytest.param(info, index, sample, dtype, id=f"{info.name}-{index}-{str(dtype)[6:]}")
    for info, index, sample in (case.values for case in CASES)
    if any(isinstance(a, float) for a in sample.args)
    for dtype in (torch.float32, torch.float64)
]  # fmt: skip


@pytest.mark.parametrize("info, index, sample, dtype", NUMBER_CASES)
def test_op_matches_twin_on_adversarial_number_operands(info, index, sample, dtype):
    found = mismatches(info, index, sample, dtype, numbers=True)
    assert not found, f"{len(found)} mismatches:\n" + "\n".join(found)


def test_the_comparison_can_fail():
    """The harness finds a planted mismatch: an op that maps NaN to 0 (as a careless
    `torch.where(x > 0, ...)` would), and one that raises on inf."""
    info = next(info for info in OP_DB if info.name == "relu")
    sample = next(iter(info.sample_inputs()))
    nan_to_zero = OpInfo("relu", lambda x: torch.relu(x).nan_to_num(nan=0.0, posinf=math.inf, neginf=-math.inf),
                         info.function, torch.relu, info.derivative, info.sample_inputs)  # fmt: skip
    found = mismatches(nan_to_zero, 0, sample, torch.float32)
    assert found and all("element nan" in line or "mixed" in line for line in found), found

    def raises_on_inf(x):
        if torch.isinf(x).any():
            raise ValueError("inf")
        return torch.relu(x)

    raising = OpInfo("relu", raises_on_inf, info.function, torch.relu, info.derivative, info.sample_inputs)
    assert any("ours raises ValueError" in line for line in mismatches(raising, 0, sample, torch.float32))


if __name__ == "__main__":  # the counts quoted in README-reliability.md
    runs = planted_values = 0
    for info, index, sample in (case.values for case in CASES):
        for dtype in (torch.float32, torch.float64):
            for numbers in (False, True):
                for _, _, count in variants(sample, dtype, numbers):
                    runs, planted_values = runs + 1, planted_values + count
    print(f"{len(OP_DB)} ops, {len(CASES)} samples, {runs} adversarial calls, {planted_values} planted values")
