"""training.optim's Adam and SGD against torch.optim's: the same updates (bit for bit on
the CPU), the same state dicts, each loading the other's through a checkpoint, GradScaler,
and the refusals."""

from __future__ import annotations

import io

import pytest
import torch

from training.optim import SGD, Adam

SHAPES = [(5, 3), (3,), (), (0, 4)]  # a matrix, a vector, a 0-d and an empty parameter
CASES = {
    "adam": (Adam, torch.optim.Adam, {"lr": 3e-3, "betas": (0.8, 0.99), "eps": 1e-6}),
    "sgd": (SGD, torch.optim.SGD, {"lr": 0.1}),
}
# torch.optim's implementation switches: not part of the update, not in our state dicts
TORCH_FLAGS = {"foreach", "fused", "capturable", "differentiable"}


def twin_params(device: str, dtype: torch.dtype = torch.float32) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    ours = [torch.randn(shape, generator=generator, dtype=dtype).to(device).requires_grad_() for shape in SHAPES]
    return ours, [p.detach().clone().requires_grad_() for p in ours]


def set_grads(ours: list[torch.Tensor], theirs: list[torch.Tensor], step: int, generator: torch.Generator) -> None:
    """Random gradients, the same for both; parameter 1 has none at step 0 and parameter 0
    none at step 3 (an optimizer skips those, and creates no state for them yet)."""
    for i, (p, q) in enumerate(zip(ours, theirs, strict=True)):
        skip = (step, i) in {(0, 1), (3, 0)}
        grad = None if skip else torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
        p.grad, q.grad = grad, None if grad is None else grad.clone()


def assert_same(ours: list[torch.Tensor], theirs: list[torch.Tensor], device: str) -> None:
    for p, q in zip(ours, theirs, strict=True):
        if device == "cpu":
            assert torch.equal(p, q)  # the same kernels in the same order: bit for bit
        else:
            torch.testing.assert_close(p, q)


def assert_same_state_dicts(ours: dict, theirs: dict, device: str) -> None:
    (group,), (their_group,) = ours["param_groups"], theirs["param_groups"]
    assert group == {key: value for key, value in their_group.items() if key not in TORCH_FLAGS}
    assert ours["state"].keys() == theirs["state"].keys()
    for index, state in ours["state"].items():
        assert state.keys() == theirs["state"][index].keys()
        for key, value in state.items():
            their_value = theirs["state"][index][key]
            assert value.dtype == their_value.dtype and value.device == their_value.device, key
            assert_same([value], [their_value], device)


def through_a_file(state_dict: dict) -> dict:
    """As a checkpoint carries it: torch.save, then torch.load(weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", CASES)
def test_steps_and_state_equal_torch_optims(name: str, dtype: torch.dtype, device: str) -> None:
    ours_class, torch_class, options = CASES[name]
    ours, theirs = twin_params(device, dtype)
    optimizer, reference = ours_class(ours, **options), torch_class(theirs, **options)
    generator = torch.Generator().manual_seed(1)
    for step in range(6):
        set_grads(ours, theirs, step, generator)
        optimizer.step()
        reference.step()
        assert_same(ours, theirs, device)
    assert_same_state_dicts(optimizer.state_dict(), reference.state_dict(), device)


@pytest.mark.parametrize("name", CASES)
def test_each_loads_the_others_state_dict_and_steps_on_alike(name: str, device: str) -> None:
    ours_class, torch_class, options = CASES[name]
    generator = torch.Generator().manual_seed(2)
    for first, then in ((torch_class, ours_class), (ours_class, torch_class)):
        params, twins = twin_params(device)
        started = first(params, **options)
        for step in range(3):
            set_grads(params, twins, step, generator)
            started.step()
        # the same weights, now under the other class, resumed from the file, and a twin going on
        resumed_params = [p.detach().clone().requires_grad_() for p in params]
        resumed = then(resumed_params, lr=0.5)  # the loaded state dict sets the options back
        resumed.load_state_dict(through_a_file(started.state_dict()))
        assert resumed.param_groups[0]["lr"] == options["lr"]
        for step in range(3, 6):
            set_grads(params, resumed_params, step, generator)
            started.step()
            resumed.step()
            assert_same(resumed_params, params, device)


def test_adam_state_is_torch_optims_after_loading_on_another_device_or_dtype() -> None:
    params, _ = twin_params("cpu")
    saved = Adam(params, lr=0.01)
    for p in params:
        p.grad = torch.ones_like(p)
    saved.step()
    doubles = [p.detach().double().requires_grad_() for p in params]
    loaded = Adam(doubles)
    loaded.load_state_dict(through_a_file(saved.state_dict()))
    reference = torch.optim.Adam([p.detach().clone().requires_grad_() for p in doubles])
    reference.load_state_dict(through_a_file(saved.state_dict()))
    assert_same_state_dicts(loaded.state_dict(), reference.state_dict(), "cpu")  # step float32, moments float64


@pytest.mark.parametrize(
    "make_saved, message",
    [
        (lambda ps: torch.optim.Adam(ps, amsgrad=True), r"amsgrad=True; this Adam makes amsgrad=False only"),
        (lambda ps: torch.optim.Adam(ps, weight_decay=0.1), r"weight_decay=0.1"),
        (lambda ps: torch.optim.Adam(ps[:3]), r"has 3 parameters, this optimizer 4"),
        (lambda ps: torch.optim.Adam([{"params": ps[:2]}, {"params": ps[2:]}]), r"has 2 parameter groups"),
    ],
)
def test_adam_refuses_a_state_dict_it_cannot_continue(make_saved, message: str) -> None:
    params, twins = twin_params("cpu")
    saved = make_saved(twins)
    optimizer = Adam(params, lr=0.25)
    with pytest.raises(ValueError, match=message):
        optimizer.load_state_dict(saved.state_dict())
    assert optimizer.param_groups[0]["lr"] == 0.25 and not optimizer.state  # nothing loaded


def test_sgd_refuses_momentum_and_a_moment_of_the_wrong_shape() -> None:
    params, twins = twin_params("cpu")
    with pytest.raises(ValueError, match=r"momentum=0.9; this SGD makes momentum=0 only"):
        SGD(params).load_state_dict(torch.optim.SGD(twins, lr=0.1, momentum=0.9).state_dict())
    adam = Adam(params)
    for p in params:
        p.grad = torch.ones_like(p)
    adam.step()
    damaged = adam.state_dict()
    damaged["state"][0]["exp_avg"] = torch.zeros(3, 5)
    fresh = Adam(twins)
    with pytest.raises(ValueError, match=r"exp_avg has shape \(3, 5\), its parameter \(5, 3\)"):
        fresh.load_state_dict(damaged)
    damaged["state"][0]["exp_avg"] = [0.0] * 15
    with pytest.raises(ValueError, match="exp_avg is a list, not a tensor"):
        fresh.load_state_dict(damaged)
    del damaged["state"][0]["exp_avg"]
    with pytest.raises(ValueError, match=r"holds \['exp_avg_sq', 'step'\], not \['step', 'exp_avg', 'exp_avg_sq'\]"):
        fresh.load_state_dict(damaged)
    assert not fresh.state


def test_bad_parameters_and_options_are_refused() -> None:
    with pytest.raises(ValueError, match="empty parameter list"):
        Adam([])
    leaf = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match="non-leaf"):
        SGD([leaf * 2])
    with pytest.raises(ValueError, match="floating-point.*torch.int64"):
        SGD([torch.ones(2, dtype=torch.long)])
    with pytest.raises(TypeError, match=r"takes \['lr'\], not \['momentum'\]"):
        SGD([leaf], momentum=0.9)


def test_zero_grad_and_closure_behave_as_torch_optims() -> None:
    w = torch.ones(3, requires_grad=True)
    optimizer = SGD([w], lr=0.5)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = (w * w).sum()
        loss.backward()
        return loss

    with torch.no_grad():  # step runs the closure with gradients on
        assert optimizer.step(closure).item() == 3.0
    assert torch.equal(w.detach(), torch.zeros(3))  # w − 0.5 · 2w
    grad = w.grad
    optimizer.zero_grad(set_to_none=False)
    assert w.grad is grad and torch.equal(grad, torch.zeros(3))
    optimizer.zero_grad()
    assert w.grad is None


@pytest.mark.parametrize("name", CASES)
def test_grad_scaler_steps_and_skips_as_with_torch_optim(name: str) -> None:
    ours_class, torch_class, options = CASES[name]
    ours, theirs = twin_params("cpu")
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0**10) for _ in range(2)]
    optimizers = [ours_class(ours, **options), torch_class(theirs, **options)]
    for step, bad in enumerate([False, True, False]):  # an inf gradient: the step is skipped
        for params, scaler, optimizer in zip((ours, theirs), scalers, optimizers, strict=True):
            optimizer.zero_grad()
            loss = sum((p * (step + 1)).square().sum() for p in params) * (float("inf") if bad else 1.0)
            scaler.scale(loss).backward()
            before = [p.detach().clone() for p in params]
            scaler.step(optimizer)
            scaler.update()
            assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True)) == bad
        assert_same(ours, theirs, "cpu")
    assert scalers[0].get_scale() == scalers[1].get_scale() == 2.0**9
