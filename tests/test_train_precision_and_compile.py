"""train.py --amp (torch.autocast) and --compile (torch.compile, fullgraph=True)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import train

FAST = ["--dataset", "iris", "--hidden", "8", "--batch-size", "16", "--threads", "1", "--quiet", "--device", "cpu"]


def run(tmp_path: Path, name: str, *argv: str) -> dict:
    assert train.main([*FAST, "--logdir", str(tmp_path), "--run-name", name, *argv]) == 0
    return json.loads((tmp_path / name / "metrics.json").read_text())


def weights(tmp_path: Path, name: str) -> dict[str, torch.Tensor]:
    return torch.load(tmp_path / name / "last.pt", weights_only=True)["model"]


def test_amp_trains_in_bfloat16_on_cpu_close_to_float32(tmp_path):
    amp = run(tmp_path, "amp", "--amp", "--epochs", "6")
    full = run(tmp_path, "fp32", "--epochs", "6")
    assert json.loads((tmp_path / "amp" / "config.json").read_text())["amp"] is True
    assert amp["history"][-1]["train_loss"] < amp["history"][0]["train_loss"]
    assert abs(amp["final"]["val_accuracy"] - full["final"]["val_accuracy"]) <= 0.1
    # bfloat16 changes the numbers: the runs really differ, and parameters stay float32
    amp_w, full_w = weights(tmp_path, "amp"), weights(tmp_path, "fp32")
    assert all(w.dtype == torch.float32 for w in amp_w.values())
    assert any(not torch.equal(amp_w[k], full_w[k]) for k in amp_w)


def test_compile_trains_to_the_same_weights_as_eager(tmp_path):
    torch._dynamo.reset()
    run(tmp_path, "compiled", "--compile", "--epochs", "2")
    run(tmp_path, "eager", "--epochs", "2")
    compiled, eager = weights(tmp_path, "compiled"), weights(tmp_path, "eager")
    for key in eager:
        torch.testing.assert_close(compiled[key], eager[key], atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_amp_on_cuda_uses_float16_with_a_grad_scaler(tmp_path):
    on_cuda = [a if a != "cpu" else "cuda" for a in FAST]
    assert train.main([*on_cuda, "--logdir", str(tmp_path), "--run-name", "cuda-amp", "--amp", "--epochs", "3"]) == 0
    metrics = json.loads((tmp_path / "cuda-amp" / "metrics.json").read_text())
    assert metrics["history"][-1]["train_loss"] < metrics["history"][0]["train_loss"]


def test_compiled_model_still_follows_grad_mode_autocast_and_its_weights():
    """train.py compiles without guards on module globals (training.compile_model);
    what may change during a run is still guarded: grad mode (evaluation runs under
    no_grad), autocast (--amp), and the weights and inputs."""
    from models import MLP
    from training import compile_model

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = MLP(4, (8,), 3, "relu")
    compiled = compile_model(model)
    x = torch.randn(5, 4)
    torch.testing.assert_close(compiled(x), model(x))
    assert compiled(x).requires_grad
    with torch.no_grad():
        assert not compiled(x).requires_grad
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert compiled(x).dtype == torch.bfloat16
    with torch.no_grad():
        model.layers[0].weight.mul_(2)
    torch.testing.assert_close(compiled(x), model(x))
    assert compiled(torch.randn(2, 4)).shape == (2, 3)
