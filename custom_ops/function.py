"""The machinery every op shares: the `Op` base class and the broadcast helper.

An op is a `torch.autograd.Function` in the `setup_context` style (the only style that
works with torch.func: grad, vmap, jacrev, jvp), with a hand-written `backward` and
`jvp`. Forward calls torch's own kernel for the value; the derivatives are ours.
"""

from __future__ import annotations

from numbers import Number
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import Tensor
from torch.autograd import forward_ad as _forward_ad

_FUNCTION_PARTS = ("forward", "setup_context", "backward")


def call_backward_directly(function: type[torch.autograd.Function]) -> None:
    """Let the autograd engine reach `function.backward` through one Python call.

    For a Python Function's node the engine calls the node's `apply` method, which
    torch writes in Python (`BackwardCFunction.apply`: it looks up `backward` or `vjp`
    through a second method and checks a boxed-gradients flag) before it calls backward.
    Our ops define `backward` only, so the node's `apply` can call it straight away
    (read off the class at each call, so a patched backward is still the one called).
    Measured on 64×64 relu, sigmoid and exp forward + backward: 2.5–3.5 % faster.
    """
    function._backward_cls.apply = _call_backward


def _call_backward(node: Any, *grads: Any) -> Any:
    return node._forward_cls.backward(node, *grads)


class _OpMeta(type(torch.autograd.Function)):
    # torch's metaclass makes a Function's node class (_backward_cls) in its __init__,
    # after __init_subclass__ has run: only then can the node's apply be set
    def __init__(cls, name: str, bases: tuple, attrs: dict) -> None:
        super().__init__(name, bases, attrs)
        call_backward_directly(cls)


class Op(torch.autograd.Function, metaclass=_OpMeta):
    """Base class of every hand-derived op.

    Each subclass defines forward, setup_context, backward and jvp. Subclassing builds,
    from that same single definition, a twin Function without `jvp`
    (`cls.without_jvp`): torch 2.13's Dynamo refuses any Function that defines a custom
    `jvp` ("Unsupported custom jvp"), while forward-mode AD needs one. `Op.call` picks
    the twin only while torch.compile traces, so the public functions keep both
    forward-mode AD in eager mode and `fullgraph=True` compilation.
    """

    # backward and jvp are written with batchable torch ops, so vmap can derive the rule
    generate_vmap_rule = True
    autocast: str
    """Policy under torch.autocast, which each op states: 'lower' (cast float inputs to
    the autocast dtype: the matrix products), 'float32' (cast them to float32: exp, log,
    pow, reductions, softmax and the losses, whose precision matters) or 'as_is' (run in
    the inputs' dtype, promoting as torch does). The cast happens before the Function
    runs, so forward, what it saves and backward all see one dtype."""
    without_jvp: type[torch.autograd.Function]
    call: Callable[..., Any]
    """Apply the op to positional arguments: the public functions go through here."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("autocast") not in AUTOCAST_POLICIES:
            raise TypeError(f"{cls.__name__} must state its autocast policy: one of {AUTOCAST_POLICIES}")
        parts = {name: getattr(cls, name) for name in _FUNCTION_PARTS}  # a subclass may inherit some
        cls.without_jvp = type(
            f"{cls.__name__}WithoutJvp",
            (torch.autograd.Function,),
            {**parts, "generate_vmap_rule": True, "__doc__": cls.__doc__},
        )
        cls.call = staticmethod(_dispatcher(cls, cls.without_jvp, cls.autocast))
        call_backward_directly(cls.without_jvp)


AUTOCAST_POLICIES = ("lower", "float32", "as_is")


def autocast_inputs(policy: str, args: tuple) -> tuple:
    """The op's float tensor inputs cast as its autocast policy says (unchanged when
    autocast is off on their device). The dispatcher calls this only when the policy
    casts and some autocast is on; backward never does: the engine runs it outside."""
    device = next(a.device.type for a in args if isinstance(a, Tensor))
    if not torch.is_autocast_enabled(device):
        return args
    dtype = torch.get_autocast_dtype(device) if policy == "lower" else torch.float32
    return tuple(a.to(dtype) if isinstance(a, Tensor) and a.is_floating_point() else a for a in args)


OpObserver = Callable[[type, tuple, Any], None]
_observers: list[OpObserver] = []


@contextmanager
def observe_ops(observer: OpObserver) -> Iterator[None]:
    """Call observer(op_class, args, output) after every op applied in this block
    (custom_ops.explain records the computation graph node by node this way)."""
    _observers.append(observer)
    try:
        yield
    finally:
        _observers.remove(observer)


def _dispatcher(eager: type[torch.autograd.Function], compiled: type[torch.autograd.Function], autocast: str):
    # A closure, not a classmethod reading cls.without_jvp: Dynamo traces a plain
    # function with both classes as constants, but not an attribute read off a Function.
    #
    # Function.apply binds each call's arguments to forward's signature with
    # inspect.signature (measured here: ~17 µs of a ~23 µs sigmoid call, against ~3 µs
    # for torch.sigmoid). The public functions always pass every argument positionally,
    # so outside torch.func transforms we call the C++ apply underneath directly;
    # inside them, Function.apply's own path is needed and taken. Every check below is
    # one C call or attribute read: at 64×64 this function is the whole of our per-call
    # cost on top of PyTorch's own Function machinery.
    apply_positional = super(torch.autograd.Function, eager).apply
    casts = autocast != "as_is"

    def call(*args: Any) -> Any:
        if casts and _any_autocast_enabled():
            args = autocast_inputs(autocast, args)
        if _dynamo_traces():
            return compiled.apply(*args)
        if _transforms_active():
            output = eager.apply(*args)
        else:
            # what Function.apply does outside transforms: a tensor left over from an
            # exited torch.func transform is unwrapped to the plain tensor it holds
            output = apply_positional(*[_unwrap_if_dead(a) if isinstance(a, Tensor) else a for a in args])
        if _observers:
            for observer in _observers:
                observer(eager, args, output)
        return output

    return call


_any_autocast_enabled = torch._C._is_any_autocast_enabled
# True only while torch.compile's Dynamo traces the caller (it folds the call to a
# constant), False otherwise: one Python call, where torch.compiler.is_compiling()
# makes two and reads a flag that is also set outside Dynamo's tracing
_dynamo_traces = torch.compiler.is_dynamo_compiling
_transforms_active = torch._C._are_functorch_transforms_active
_unwrap_if_dead = torch._C._functorch.unwrap_if_dead


def unbroadcast(grad: Tensor, shape: torch.Size) -> Tensor:
    """Sum a gradient over the dimensions that broadcasting expanded, back to `shape`.

    Broadcasting copies an input along new or size-1 dimensions; the adjoint of a copy
    is a sum, so dL/dinput = Σ over the copies of dL/doutput.
    """
    if grad.shape == shape:
        return grad
    # the sizes as separate ints: torch parses a torch.Size argument more slowly, 12–30 µs
    # of a bias gradient's 64–112 µs right after a large matrix product (benchmarks/RESULTS.md)
    return grad.sum_to_size(*shape) if shape else grad.sum()


def scaled(grad: Tensor, alpha: Number) -> Tensor:
    """α·grad, with no pass over memory for α = 1 and torch's one-pass `neg` for α = −1
    (sub's usual case: at 256×1024 `-g` took 75 µs and `g * -1` 98 µs here)."""
    return grad if alpha == 1 else -grad if alpha == -1 else grad * alpha


def save_crosswise(ctx: Any, a: Tensor, b: Tensor) -> None:
    """Saves for a product y = a ∘ b (mul, matmul), where dL/da needs b and dL/db needs
    a: each operand is saved only if the other's gradient is needed, as torch's own
    autograd does. Shapes are kept to undo broadcasting; jvp gets both."""
    need_da, need_db = ctx.needs_input_grad[:2]
    ctx.shapes = a.shape, b.shape
    ctx.save_for_backward(a if need_db else None, b if need_da else None)
    save_for_jvp(ctx, a, b)


def save_for_jvp(ctx: Any, *tensors: Tensor | None) -> None:
    """`ctx.save_for_forward(*tensors)`, only where a jvp can be called.

    torch calls a Function's jvp only for inputs that carry a tangent, and tangents exist
    only inside a dual level: `torch.autograd.forward_ad.dual_level`, which torch.func's
    jvp, jacfwd, hessian and linearize enter too. Outside one nothing would read what is
    saved, and torch's save_for_forward is Python that checks each argument: skipping it
    saved 0.2–2 µs a call of 64×64 forward + backward (65–155 µs in that slow hour of the
    machine; benchmarks/RESULTS.md).
    """
    if _forward_ad._current_level >= 0:  # -1 outside every dual level
        ctx.save_for_forward(*tensors)


def may_fuse(grad: Tensor) -> bool:
    """May backward update its own fresh temporaries in place?

    Each out-of-place step of a formula allocates a tensor (at 4096×4096 a fresh mmap
    whose pages fault on first touch), where torch's fused backward kernels allocate
    one. Updating one fresh temporary in place matches that, but only when
    - backward builds no graph for double backward (create_graph=False turns grad mode
      off inside backward): autograd would need the values we overwrite; and
    - no vmap batches the gradient (torch.func, or gradcheck's batched check): an
      in-place op cannot give its target a batch dim it lacks.
    Otherwise backward takes the plain out-of-place formula; so it does under
    torch.compile, whose compiler fuses the formula into one kernel by itself.
    """
    return not (
        torch.compiler.is_compiling()
        or torch.is_grad_enabled()
        or torch._C._are_functorch_transforms_active()
        or torch._C._functorch.is_legacy_batchedtensor(grad)
    )


def as_operand(value: Tensor | Number, like: Tensor | Number) -> Tensor:
    """A Python number becomes a 0-d tensor, so ops take `mul(x, 3.0)` as torch does.

    A 0-d tensor promotes types as torch's wrapped Python numbers do (float32 · 0-d
    stays float32), and lives on the CPU, which torch allows beside tensors of any
    device. It never requires grad, so backward skips it.
    """
    if isinstance(value, Tensor):
        return value
    if isinstance(value, bool) or not isinstance(value, Number):
        raise TypeError(f"expected a Tensor or a number, got {type(value).__name__}")
    if not isinstance(like, Tensor):
        raise TypeError("at least one operand must be a Tensor")
    # beside a float64 tensor a float stays a double, as torch keeps a Python number
    # (1e308 must not round to inf, nor 1/3 lose bits); otherwise the default dtype
    return torch.tensor(value, dtype=torch.float64 if isinstance(value, float) and like.dtype == torch.float64 else None)


def check_reduction(reduction: str) -> None:
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"{reduction!r} is not a valid value for reduction: use 'none', 'mean' or 'sum'")


def reduce_loss(loss: Tensor, reduction: str) -> Tensor:
    """Forward of a loss's reduction: 'none' keeps every element."""
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def reduction_grad(grad: Tensor, shape: torch.Size, reduction: str, scale: float = 1.0) -> Tensor:
    """Backward of `reduce_loss`, times a constant of the loss's derivative:
    dL/dloss_i = g (sum), g / n (mean) or g_i (none), each times `scale`.

    For 'sum' and 'mean' this stays 0-d: the caller's product broadcasts it over the
    elements, so neither a copy per element nor a second pass over memory is made for
    the constant (one 0-d multiply does both the 1/n and `scale`)."""
    if reduction == "mean":
        scale /= max(shape.numel(), 1)
    return scaled(grad, scale)
