"""check_function, assert_function_ok and `python -m custom_ops.check`: the battery for anyone's Function.

The gallery (tests/broken_ops.py) holds one classic mistake per Function; each must be
caught in the right row with the right words and fix. Every op of our own database must
pass through the same call.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

import custom_ops
from custom_ops import check as cli
from custom_ops.registry import OP_DB, OPS_BY_NAME
from custom_ops.testing import (
    CHECKS,
    FunctionCheckError,
    Report,
    Sample,
    as_samples,
    assert_function_ok,
    check_function,
    ctx_assignments,
)

import broken_ops as B

ROOT = Path(__file__).resolve().parent.parent
GALLERY_FILE = str(Path(B.__file__).resolve())


def x45(seed: int = 0) -> torch.Tensor:
    return torch.randn(4, 5, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- the gallery: every mistake caught, in words


@pytest.mark.parametrize("broken", B.GALLERY, ids=lambda b: f"{b.function.__name__}-{b.check}")
def test_gallery_mistake_is_caught_with_the_right_message(broken):
    report = check_function(broken.function.apply, (x45(),) + broken.args, broken.reference)
    row = report[broken.check]
    assert row.failed, f"{broken.function.__name__}: {broken.check} did not fail\n{report}"
    assert re.search(broken.message, row.detail), f"detail {row.detail!r} lacks {broken.message!r}"
    assert re.search(broken.hint, row.hint), f"hint {row.hint!r} lacks {broken.hint!r}"
    assert not report.ok
    with pytest.raises(FunctionCheckError) as caught:
        report.raise_if_failed()
    assert row.detail in str(caught.value) and f"fix: {row.hint}" in str(caught.value)


def test_the_good_function_passes_every_check():
    report = check_function(B.GoodSigmoid.apply, [x45(0), x45(1)[:2], torch.tensor(0.3)], torch.sigmoid)
    assert report.ok and [r.name for r in report] == list(CHECKS), str(report)
    assert all(r.passed for r in report), str(report)
    assert report.samples == 3


def test_a_wrong_gradient_fails_only_where_it_should():
    """WrongSignSin: backward is wrong; its jvp, value and dtype are right and pass."""
    report = check_function(B.WrongSignSin.apply, x45(), torch.sin)
    failed = {r.name for r in report.failures}
    assert failed == {"gradcheck", "reference"}, str(report)
    assert report["forward_ad"].passed and report["float32"].passed and report["vmap"].skipped


def test_a_gradient_that_is_just_wrong_says_where():
    class Off(B._Sin):
        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * torch.cos(x) + 0.1 * x * x

    row = check_function(Off.apply, x45(), checks=["gradcheck"])["gradcheck"]
    assert row.failed and "differs from finite differences (largest error" in row.detail
    assert "derivative formula" in row.hint


def test_wrong_jvp_sign_is_caught_in_forward_ad():
    class WrongJvp(B._Sin):
        @staticmethod
        def jvp(ctx, dx):
            (x,) = ctx.saved_for_forward
            return -dx * torch.cos(x)

    row = check_function(WrongJvp.apply, x45(), checks=["forward_ad"])["forward_ad"]
    assert row.failed and "jvp disagrees with finite differences" in row.detail and "wrong sign" in row.detail


# ---------------------------------------------------------------- our own database: one battery, not two


def _extremes(info):
    return list(info.extreme_inputs()) if info.extreme_inputs else []


@pytest.mark.filterwarnings("ignore:Implicit dimension choice")  # F.softmax, the twin, on the dim-less extremes
@pytest.mark.parametrize("info", OP_DB, ids=lambda i: i.name)
def test_every_op_of_ours_passes_the_battery(info):
    report = check_function(info.op, list(info.sample_inputs()), reference=info.reference,
                            extreme_inputs=_extremes(info))
    report.raise_if_failed()
    assert report["setup_context"].detail == info.function.__name__  # the Function was found behind the op
    skipped = {r.name for r in report if r.skipped}
    assert skipped <= ({"finite"} if not info.extreme_inputs else set()), str(report)


def test_a_broken_op_of_ours_fails_the_battery():
    """The database path can fail: flip Sigmoid's backward and the battery says so."""
    info = OPS_BY_NAME["sigmoid"]
    backward = info.function.backward
    with mock.patch.object(info.function, "backward", staticmethod(lambda ctx, g: -backward(ctx, g))):
        report = check_function(info.op, list(info.sample_inputs()), info.reference)
    assert report["gradcheck"].failed and "wrong sign" in report["gradcheck"].detail
    assert check_function(info.op, list(info.sample_inputs()), info.reference).ok  # restored


def test_default_extremes_pass_our_saturating_ops():
    for name in ("sigmoid", "tanh", "exp"):
        info = OPS_BY_NAME[name]
        assert check_function(info.op, x45(), info.reference, checks=["finite"]).ok, name


# ---------------------------------------------------------------- the API


def test_sample_forms():
    x, y = x45(0), x45(1)
    assert len(as_samples(x)) == 1 and as_samples(x)[0].args[0] is x
    assert as_samples((x, 2.0))[0].args == (x, 2.0)
    assert len(as_samples([x, y])) == 2 and len(as_samples([(x, y), Sample((y, x))])) == 2
    assert len(as_samples(s for s in [x, y, x])) == 3
    with pytest.raises(TypeError, match="a sample is"):
        as_samples([[x]])
    with pytest.raises(ValueError, match="at least one sample"):
        check_function(torch.sin, [])


@pytest.mark.filterwarnings("ignore:Input #0 requires gradient and is not a double precision")
def test_float32_samples_raise_no_gradcheck_false_alarm():
    """gradcheck in float32 fails a right derivative; check_function converts to float64 first."""
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match="Jacobian mismatch"):
        torch.autograd.gradcheck(B.GoodSigmoid.apply, (x.clone().requires_grad_(),))
    assert check_function(B.GoodSigmoid.apply, x, checks=["gradcheck", "gradgradcheck"]).ok


def test_checks_and_skip_select_rows():
    report = check_function(B.GoodSigmoid.apply, x45(), checks=["gradcheck", "setup_context"])
    assert [r.name for r in report] == ["setup_context", "gradcheck"]
    report = check_function(B.GoodSigmoid.apply, x45(), skip=["finite", "vmap"])
    assert "finite" not in report and "vmap" not in report and len(report.results) == len(CHECKS) - 2
    with pytest.raises(ValueError, match="unknown check"):
        check_function(B.GoodSigmoid.apply, x45(), checks=["gradchek"])


def test_once_differentiable_is_only_a_failure_when_double_backward_is_asked_for():
    report = check_function(B.OnceDifferentiableSin.apply, x45(), skip=["gradgradcheck"])
    assert report.ok and report["once_differentiable"].skipped
    assert "double backward not asked for" in report["once_differentiable"].detail


def test_raise_on_failure_and_assert_function_ok():
    with pytest.raises(FunctionCheckError) as caught:
        check_function(B.CtxTensorTanh.apply, x45(), torch.tanh, raise_on_failure=True)
    message = str(caught.value)
    assert isinstance(caught.value, AssertionError) and message.startswith("CtxTensorTanh.apply failed 2 of 11")
    assert "double backward mismatch" in message and "a tensor kept on ctx (ctx.dy_dx) is used in backward; " \
        "save it with ctx.save_for_backward" in message
    assert isinstance(assert_function_ok(B.GoodSigmoid.apply, [x45()], torch.sigmoid), Report)
    with pytest.raises(AssertionError, match=r"(?s)finite: non-finite gradient.*fix: use a stable formula"):
        assert_function_ok(B.UnstableSigmoid.apply, x45(), extreme_inputs=torch.tensor([-1000.0, 0.0, 1000.0]))


def test_report_renders_an_aligned_table():
    report = check_function(B.MissingJvpSin.apply, x45(), torch.sin)
    text = str(report)
    lines = text.splitlines()
    assert lines[0] == "check_function: MissingJvpSin.apply (1 sample)"
    status_column = lines[1].index("status")
    rows = [line for line in lines[3:-1] if not line.startswith(" ")]
    assert len(rows) == len(CHECKS) and all(line[status_column - 2:status_column] == "  " for line in rows)
    assert re.search(r"^forward_ad +FAILED +missing jvp", text, re.M)
    assert re.search(r"^ +fix: define a jvp staticmethod", text, re.M)
    assert lines[-1] == "FAILED: 10 passed, 1 failed, 0 skipped" and report.counts()["failed"] == 1
    assert str(check_function(B.GoodSigmoid.apply, x45())).endswith("OK: 10 passed, 0 failed, 1 skipped")


def test_a_plain_callable_without_functions_skips_the_static_checks_and_says_why():
    report = check_function(lambda x: torch.sin(x) * 2, x45(), lambda x: 2 * torch.sin(x))
    assert report.ok
    for name in ("setup_context", "ctx_tensors", "once_differentiable"):
        assert report[name].skipped and "pass functions=[MyFunction]" in report[name].detail


def test_functions_found_in_the_graph_of_a_composite():
    def composite(x):
        return B.GoodSigmoid.apply(B.CtxInputTanh.apply(x)) * 2

    report = check_function(composite, x45(), checks=["setup_context", "ctx_tensors"])
    assert report["setup_context"].detail == "CtxInputTanh, GoodSigmoid"
    row = report["ctx_tensors"]
    assert row.failed and "CtxInputTanh keeps a tensor (4, 5) as ctx.x" in row.detail


def test_tuple_outputs_are_checked():
    report = check_function(lambda x: (B.GoodSigmoid.apply(x), torch.cos(x)), x45(),
                            lambda x: (torch.sigmoid(x), torch.cos(x)), skip=["finite"])
    assert report.ok, str(report)


def test_a_forward_that_raises_fails_runs_and_skips_the_rest():
    def broken(x):
        raise ValueError("shapes do not match")

    report = check_function(broken, x45(), functions=[B.CtxTensorTanh])
    assert report["runs"].failed and "ValueError: shapes do not match" in report["runs"].detail
    assert all(report[c].skipped for c in ("gradcheck", "forward_ad", "vmap", "float32", "finite"))
    # the static checks still look at the Function given by hand; the ctx one guesses from the source
    assert report["ctx_tensors"].failed and "found by inspection" in report["ctx_tensors"].detail
    # runs is reported even when not asked for, since every other check depends on it
    assert check_function(broken, x45(), checks=["gradcheck"])["runs"].failed


def test_static_ctx_heuristic():
    assignments = {attr: tensorish for attr, *_, tensorish in ctx_assignments(B.CtxTensorTanh)}
    assert assignments == {"dy_dx": True}
    # shapes and numbers unpacked from the inputs are not tensors: our Add is clean by inspection too
    assert {attr: tensorish for attr, *_, tensorish in ctx_assignments(custom_ops.Add)} == {
        "alpha": False, "shapes": False}
    assert any(attr == "x" and tensorish for attr, *_, tensorish in ctx_assignments(B.CtxInputTanh))


def test_explicit_extremes_and_none():
    row = check_function(B.UnstableSigmoid.apply, x45(), extreme_inputs=torch.tensor([-1000.0]))["finite"]
    assert row.failed and "non-finite gradient of input 0 at x = -1000 on" in row.detail
    row = check_function(B.UnstableSigmoid.apply, x45(), extreme_inputs=[])["finite"]
    assert row.skipped and "extreme_inputs=[]" in row.detail
    row = check_function(torch.mul, (x45(), x45(1)))["finite"]
    assert row.skipped and "several tensors" in row.detail


# ---------------------------------------------------------------- the command line


def test_cli_passes_a_good_function(capsys):
    code = cli.main([f"{GALLERY_FILE}:GoodSigmoid", "--sample", "shape=(4,5)", "--reference", "torch.sigmoid"])
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("check_function: GoodSigmoid.apply (1 sample)")
    assert out.rstrip().endswith("OK: 11 passed, 0 failed, 0 skipped")


def test_cli_fails_a_broken_function(capsys):
    code = cli.main([f"{GALLERY_FILE}:WrongSignSin", "--reference", "torch.sin", "--skip", "finite"])
    out = capsys.readouterr().out
    assert code == 1 and re.search(r"^gradcheck +FAILED +backward disagrees .*\(3, 4\)", out, re.M)
    assert not re.search(r"^finite ", out, re.M)


def test_cli_several_samples_and_a_module_target(capsys):
    code = cli.main(["custom_ops:cross_entropy", "--sample", "shape=(5,4)",
                     "--sample", "shape=(5,), dtype=int64, high=4",
                     "--reference", "torch.nn.functional.cross_entropy", "--no-extremes"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert re.search(r"^finite", out, re.M) is None
    assert cli.main(["custom_ops:softmax", "--sample", "shape=(2,3), low=-1, high=1", "--sample", "value=1"]) == 0


@pytest.mark.parametrize("argv, message", [
    (["nofile.py:X"], "no such file: nofile.py"),
    ([f"{GALLERY_FILE}:Missing"], "has no 'Missing'"),
    ([f"{GALLERY_FILE}:GALLERY"], "is a list, not an autograd.Function"),
    (["justaname"], "target must be path/to/module.py:Name"),
    ([f"{GALLERY_FILE}:GoodSigmoid", "--reference", "os.system"], "must name a public function in torch"),
    ([f"{GALLERY_FILE}:GoodSigmoid", "--reference", "torch.sigmoid(x)"], "must name a public function in torch"),
    ([f"{GALLERY_FILE}:GoodSigmoid", "--reference", "torch._C"], "must name a public function in torch"),
    ([f"{GALLERY_FILE}:GoodSigmoid", "--reference", "torch.nope"], "torch has no such attribute"),
    ([f"{GALLERY_FILE}:GoodSigmoid", "--sample", "shape=__import__('os').getcwd()"], "shape must be a literal"),
    ([f"{GALLERY_FILE}:GoodSigmoid", "--sample", "(4, 5)"], "expected key=value pairs"),
    ([f"{GALLERY_FILE}:GoodSigmoid", "--sample", "size=(4,5)"], "unknown key 'size'"),
    ([f"{GALLERY_FILE}:GoodSigmoid", "--sample", "shape=(4,-5)"], "non-negative ints"),
    ([f"{GALLERY_FILE}:GoodSigmoid", "--sample", "shape=(3,), dtype=int64"], "needs high="),
    ([f"{GALLERY_FILE}:GoodSigmoid", "--skip", "gradchek"], "invalid choice: 'gradchek'"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_cli_bad_usage_is_one_error_line_and_exit_2(argv, message, capsys):
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("error: ") and message in captured.err


def test_cli_import_error_in_the_users_file(tmp_path, capsys):
    bad = tmp_path / "bad_module.py"
    bad.write_text("import torch\nraise RuntimeError('boom at import')\n")
    assert cli.main([f"{bad}:Anything"]) == 2
    assert capsys.readouterr().err == f"error: importing {bad} failed: RuntimeError: boom at import\n"


def test_cli_loads_a_users_file_with_sibling_imports(tmp_path, capsys):
    (tmp_path / "helpers_for_check.py").write_text("import torch\ndef cube_grad(x):\n    return 3 * x * x\n")
    (tmp_path / "my_cube.py").write_text(
        "import torch\nfrom helpers_for_check import cube_grad\n\n"
        "class Cube(torch.autograd.Function):\n"
        "    generate_vmap_rule = True\n"
        "    @staticmethod\n    def forward(x):\n        return x ** 3\n"
        "    @staticmethod\n    def setup_context(ctx, inputs, output):\n"
        "        ctx.save_for_backward(inputs[0]); ctx.save_for_forward(inputs[0])\n"
        "    @staticmethod\n    def backward(ctx, g):\n"
        "        (x,) = ctx.saved_tensors\n        return g * cube_grad(x)\n"
        "    @staticmethod\n    def jvp(ctx, dx):\n"
        "        (x,) = ctx.saved_for_forward\n        return dx * cube_grad(x)\n"
    )
    assert cli.main([f"{tmp_path / 'my_cube.py'}:Cube", "--no-extremes"]) == 0, capsys.readouterr().out


def test_python_dash_m_end_to_end():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "custom_ops.check", f"{GALLERY_FILE}:UnstableSigmoid",
                          "--reference", "torch.sigmoid"], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=120)
    assert run.returncode == 1, run.stdout + run.stderr
    assert re.search(r"^finite +FAILED +non-finite gradient of input 0 at x = .*-1000", run.stdout, re.M)
    assert "Traceback" not in run.stderr
    bad = subprocess.run([sys.executable, "-m", "custom_ops.check", "nope"], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: ") and "Traceback" not in bad.stderr


def test_an_output_detached_from_the_inputs_is_reported():
    report = check_function(lambda x: torch.sin(x).detach(), x45())
    assert report["runs"].failed and "no output requires grad" in report["runs"].detail
    assert ".detach()" in report["runs"].hint and report["gradcheck"].skipped
