"""The verification battery: the checks that prove a hand-derived op right.

Each check takes the function under test, a `Sample` of its inputs and, where it
compares, the reference (the torch twin), and raises AssertionError with a message that
says what is wrong. The test suite runs every op of the database through these same
functions.

`check_function` runs the whole battery on anyone's `torch.autograd.Function` (its
`apply`, or any callable built from Functions) and returns a `Report`, one row per
check; `assert_function_ok` is its pytest form, and `python -m custom_ops.check` its
command line. Our own op database goes through `check_function` too: one battery.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor
from torch.autograd.gradcheck import GradcheckError


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
    ys, ys_ref = _outputs(fn(*ours.args, **ours.kwargs)), _outputs(reference(*theirs.args, **theirs.kwargs))
    assert len(ys) == len(ys_ref), f"{sample}: {len(ys)} tensor outputs, reference {len(ys_ref)}"
    for k, (y, y_ref) in enumerate(zip(ys, ys_ref)):
        _assert_close(y, y_ref, f"value{f' {k}' if len(ys) > 1 else ''} of {sample}", atol, rtol)
    positions = ours.differentiable()
    pairs = [(y, y_ref) for y, y_ref in zip(ys, ys_ref) if y_ref.requires_grad and y.requires_grad]
    if not positions or not any(y_ref.requires_grad for y_ref in ys_ref):
        return
    assert pairs, f"{sample}: no output requires grad, the reference's does"
    gs = [_random_like(y_ref, seed=k) for k, (_, y_ref) in enumerate(pairs)]
    grads = torch.autograd.grad([y for y, _ in pairs], [ours.args[i] for i in positions], gs, allow_unused=True)
    grads_ref = torch.autograd.grad([y for _, y in pairs], [theirs.args[i] for i in positions], gs, allow_unused=True)
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
    for k, (a, a_ref, da, da_ref) in enumerate(zip(*map(_outputs, (y, y_ref, dy, dy_ref)))):
        which = f" {k}" if isinstance(y, (tuple, list)) else ""
        _assert_close(a, a_ref, f"jvp primal{which} of {sample}")
        _assert_close(da, da_ref, f"jvp tangent{which} of {sample}")


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
    ys = _outputs(fn(*s.args, **s.kwargs))
    for y in ys:
        assert torch.isfinite(y).all(), f"non-finite value{_where(~torch.isfinite(y), s)} on {sample}: {y}"
    inputs = [s.args[i] for i in s.differentiable()]
    ys = [y for y in ys if y.requires_grad]
    if not inputs or not ys:
        return
    grads = torch.autograd.grad(ys, inputs, [torch.ones_like(y) for y in ys], allow_unused=True)
    for i, d in zip(s.differentiable(), grads):
        assert d is None or torch.isfinite(d).all(), (
            f"non-finite gradient of input {i}{_where(~torch.isfinite(d), s, i)} on {sample}: {d}"
        )


def _outputs(y: Any) -> list[Tensor]:
    """The tensors a function returned: y itself, or those inside a tuple or list."""
    if isinstance(y, Tensor):
        return [y]
    if isinstance(y, (tuple, list)):
        return [t for t in y if isinstance(t, Tensor)]
    raise TypeError(f"expected the function to return a Tensor or a tuple of Tensors, got {type(y).__name__}")


def _where(bad: Tensor, sample: Sample, position: int | None = None) -> str:
    """' at x = -1000, 1e+04' (the input's values where bad is true, when they are known), else the first index."""
    if not bad.any():
        return ""
    tensors = [a for a in sample.args if isinstance(a, Tensor) and a.is_floating_point()]
    x = sample.args[position] if position is not None else (tensors[0] if len(tensors) == 1 else None)
    if isinstance(x, Tensor) and x.shape == bad.shape:
        values = sorted({float(v) for v in x.detach()[bad].reshape(-1).tolist()})
        more = f" and {len(values) - 6} more" if len(values) > 6 else ""
        return f" at x = {', '.join(f'{v:g}' for v in values[:6])}{more}"
    index = tuple(int(i) for i in bad.nonzero()[0])
    return f" (first at element {index})" if index else ""


# ================================================================ check_function: the battery as one call

CHECKS: tuple[str, ...] = (
    "setup_context", "ctx_tensors", "once_differentiable", "runs", "gradcheck", "gradgradcheck",
    "forward_ad", "vmap", "reference", "float32", "finite",
)  # fmt: skip
"""The rows of a report, in order; `check_function(checks=...)` takes any subset."""

CHECK_DESCRIPTIONS: dict[str, str] = {
    "setup_context": "forward(...) + setup_context(ctx, inputs, output), the style torch.func needs (static)",
    "ctx_tensors": "no tensor kept as a ctx attribute instead of ctx.save_for_backward",
    "once_differentiable": "backward is not @once_differentiable when double backward is checked (static)",
    "runs": "forward and backward run in float64; backward returns one gradient per input",
    "gradcheck": "backward against finite differences, float64",
    "gradgradcheck": "double backward against finite differences of backward, float64",
    "forward_ad": "jvp against finite differences (and the reference's jvp), float64",
    "vmap": "batched gradients, torch.func.vmap and jacrev equal a loop (or the reference)",
    "reference": "value, dtype and gradients equal the reference's, float64 and float32",
    "float32": "float32 inputs give float32 outputs, and backward returns float32 gradients",
    "finite": "value and gradients finite at extreme inputs (or non-finite only where the reference is)",
}

DEFAULT_EXTREMES: tuple[float, ...] = (-1e4, -1000.0, -100.0, 0.0, 100.0, 1000.0, 1e4)
"""The values the finite check tries, in float32, on a function of a single tensor."""

HINTS: dict[str, str] = {
    "jvp": "define a jvp staticmethod (and save tensors it needs with ctx.save_for_forward)",
    "setup_context": "split forward(ctx, ...) into forward(...) + setup_context(ctx, inputs, output), "
                     "and set generate_vmap_rule = True",
    "vmap_rule": "set generate_vmap_rule = True on the Function (or write a vmap staticmethod)",
    "gradient_count": "backward must return one gradient per forward input (None for non-tensors)",
    "ctx_tensor": "save it with ctx.save_for_backward (an intermediate computed in forward: save the input "
                  "or output it comes from and recompute it in backward)",
    "once_differentiable": "remove @once_differentiable and write backward with differentiable torch ops",
    "nonfinite": "use a stable formula: never form exp(x) or 1/x that overflow (e.g. sigmoid via torch.sigmoid or "
                 "torch.where on the sign, log(1 + exp(x)) via torch.logaddexp or softplus, torch.logsumexp), "
                 "and write backward from the saved output where it saturates cleanly",
    "float32": "forward/backward changed float32 to float64; keep the input dtype "
               "(no .double(), no float64 constants made with torch.tensor(...) or numpy)",
    "backward": "check the derivative formula in backward (its sign, constant factors, broadcasting); if a sample "
                "sits on a kink or a pole (relu at 0, 1/x at 0), move it away",
    "jvp_formula": "check the formula in jvp: it must be the derivative applied to the input tangents "
                   "(ẏ = J ẋ), the same derivative backward uses transposed",
    "double_backward": "write backward with differentiable torch ops on tensors saved with ctx.save_for_backward "
                       "(inputs or outputs only: an intermediate computed in forward is a constant to double "
                       "backward, recompute it in backward)",
    "detached": "forward's output must depend on the inputs through the Function (no .detach(), .numpy(), "
                ".item() or torch.no_grad() on the way)",
}

_STATUSES = ("passed", "failed", "skipped")
_ONCE_DIFFERENTIABLE_CODE = torch.autograd.function.once_differentiable(lambda ctx: None).__code__
_BASE_FUNCTION = torch.autograd.Function


@dataclass
class CheckResult:
    """One row of a report: a check, its status and why (the reason it failed, or why it was skipped)."""

    name: str
    status: str  # "passed", "failed" or "skipped"
    detail: str = ""
    hint: str = ""

    def __post_init__(self) -> None:
        if self.status not in _STATUSES:
            raise ValueError(f"status must be one of {_STATUSES}, got {self.status!r}")

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    @property
    def skipped(self) -> bool:
        return self.status == "skipped"

    def message(self) -> str:
        """'name: detail' and, on its own line, 'fix: hint'."""
        return f"{self.name}: {self.detail}" + (f"\n  fix: {self.hint}" if self.hint else "")


class FunctionCheckError(AssertionError):
    """Raised by `Report.raise_if_failed` (and so by `assert_function_ok`): every failure with its fix."""

    def __init__(self, report: Report) -> None:
        self.report = report
        super().__init__(report.failure_message())


@dataclass
class Report:
    """What `check_function` found: one `CheckResult` per check, in the order of `CHECKS`."""

    function: str
    results: list[CheckResult] = field(default_factory=list)
    samples: int = 0

    @property
    def ok(self) -> bool:
        """No check failed (skipped ones do not count against it)."""
        return not self.failures

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.failed]

    def __getitem__(self, name: str) -> CheckResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(f"no check {name!r} in this report (it has {[r.name for r in self.results]})")

    def __contains__(self, name: object) -> bool:
        return any(r.name == name for r in self.results)

    def __iter__(self):
        return iter(self.results)

    def counts(self) -> dict[str, int]:
        return {status: sum(r.status == status for r in self.results) for status in _STATUSES}

    def summary(self) -> str:
        c = self.counts()
        return f"{c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped"

    def __str__(self) -> str:
        import textwrap

        name_w = max([len("check")] + [len(r.name) for r in self.results])
        status_w = len("skipped")
        indent = " " * (name_w + status_w + 4)
        width = max(40, 110 - len(indent))
        lines = [f"check_function: {self.function} ({self.samples} sample{'s' * (self.samples != 1)})",
                 f"{'check':<{name_w}}  {'status':<{status_w}}  detail",
                 f"{'-' * name_w}  {'-' * status_w}  {'-' * 6}"]
        for r in self.results:
            status = "FAILED" if r.failed else r.status
            detail = textwrap.wrap(r.detail, width) or [""]
            if r.hint:
                detail += textwrap.wrap(f"fix: {r.hint}", width, subsequent_indent="     ")
            lines.append(f"{r.name:<{name_w}}  {status:<{status_w}}  {detail[0]}".rstrip())
            lines += [indent + d for d in detail[1:]]
        lines.append(("OK: " if self.ok else "FAILED: ") + self.summary())
        return "\n".join(lines)

    def failure_message(self) -> str:
        failures = self.failures
        if not failures:
            return f"{self.function}: all checks passed ({self.summary()})"
        head = f"{self.function} failed {len(failures)} of {len(self.results)} checks:"
        return "\n".join([head] + [f"- {r.name}: {r.detail}" + (f"\n  fix: {r.hint}" if r.hint else "")
                                    for r in failures])

    def raise_if_failed(self) -> Report:
        """Raise `FunctionCheckError` (an AssertionError) listing every failure and its fix."""
        __tracebackhide__ = True
        if not self.ok:
            raise FunctionCheckError(self)
        return self


# ---------------------------------------------------------------- the pieces check_function needs


def as_samples(sample_inputs: Any) -> list[Sample]:
    """A tensor, a tuple of args, a `Sample`, or a list (or generator) of those, as a list of Samples."""
    if isinstance(sample_inputs, (Tensor, Sample, tuple)):
        sample_inputs = [sample_inputs]
    samples = []
    for s in sample_inputs:
        if isinstance(s, Sample):
            samples.append(s)
        elif isinstance(s, Tensor):
            samples.append(Sample((s,)))
        elif isinstance(s, tuple):
            samples.append(Sample(s))
        else:
            raise TypeError(f"a sample is a Tensor, a tuple of args or a Sample, got {type(s).__name__}")
    return samples


def _count(n: int) -> str:
    return f"{n} sample{'s' * (n != 1)}"


class _Skip(Exception):
    """A check that does not apply here: the message says why."""


class _Fail(Exception):
    """A check that failed with a known diagnosis: (detail, hint)."""

    def __init__(self, detail: str, hint: str = "") -> None:
        super().__init__(detail)
        self.detail, self.hint = detail, hint


def _overrides(cls: type, name: str) -> bool:
    return getattr(cls, name, None) is not getattr(_BASE_FUNCTION, name, None)


def _backward_name(cls: type) -> str:
    """The method autograd calls in backward: `vjp` if the Function defines it, else `backward`."""
    return "vjp" if _overrides(cls, "vjp") else "backward"


def _is_once_differentiable(cls: type) -> bool:
    return getattr(getattr(cls, _backward_name(cls)), "__code__", None) is _ONCE_DIFFERENTIABLE_CODE


def _function_of(fn: Callable) -> type | None:
    """The autograd.Function behind fn when fn is one's `apply` (or the class itself)."""
    owner = getattr(fn, "__self__", None)
    if isinstance(owner, type) and issubclass(owner, _BASE_FUNCTION):
        return owner
    if isinstance(fn, type) and issubclass(fn, _BASE_FUNCTION):
        return fn
    return None


def _describe(fn: Callable, cls: type | None) -> str:
    if cls is not None and getattr(fn, "__self__", None) is cls:
        return f"{cls.__qualname__}.apply"
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    module = getattr(fn, "__module__", None)
    return f"{module}.{name}" if module and module not in ("__main__", "builtins") else name


def _custom_nodes(outputs: list[Tensor]) -> list[Any]:
    """The nodes of custom autograd.Functions in the graph behind outputs (ctx objects)."""
    nodes, seen, stack = [], set(), [y.grad_fn for y in outputs]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if hasattr(node, "_forward_cls"):
            nodes.append(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return sorted(nodes, key=lambda n: n._sequence_nr())  # in the order forward ran them


def _ctx_tensor_attributes(node: Any) -> list[tuple[str, Tensor]]:
    """(name, tensor) for every tensor kept on ctx as an attribute (also inside tuples, lists, dicts)."""
    found = []
    for name, value in vars(node).items():
        values = value.values() if isinstance(value, dict) else value if isinstance(value, (tuple, list)) else [value]
        found += [(name, v) for v in values if isinstance(v, Tensor)][:1]
    return found


def _source_tree(func: Callable) -> tuple[Any, int, list[str]] | None:
    """(ast of func, line number of its first line, its source lines), or None where no source is found."""
    import ast
    import inspect
    import textwrap

    try:
        func = inspect.unwrap(func)
        lines, first = inspect.getsourcelines(func)
        tree = ast.parse(textwrap.dedent("".join(lines)))
    except (OSError, TypeError, SyntaxError, IndentationError):
        return None
    return tree, first, lines


def ctx_assignments(cls: type) -> list[tuple[str, str, int, str, bool]]:
    """Static look at `ctx.<attr> = ...` in forward and setup_context.

    One tuple (attr, method, line number, source line, looks_like_tensor) per assignment.
    looks_like_tensor is a heuristic: the right-hand side names a tensor the method
    receives (a forward parameter, `inputs`/`output` or a name unpacked from them) and
    does not just read its shape, dtype, device or size. The dynamic check (ctx attributes
    that hold tensors after a real forward) decides; this guess serves where the Function
    could not be run, and to show the line of a tensor found dynamically.
    """
    import ast

    found = []
    for method in ("forward", "setup_context"):
        func = cls.__dict__.get(method)
        func = getattr(func, "__func__", func)
        parsed = _source_tree(func) if callable(func) else None
        if parsed is None:
            continue
        tree, first, lines = parsed
        defn = next((n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))), None)
        if defn is None or not defn.args.args:
            continue
        params = [a.arg for a in defn.args.args]
        ctx_name = params[0] if method == "setup_context" or not _overrides(cls, "setup_context") else None
        if ctx_name is None:
            continue
        tensors = set(params[1:])
        for node in ast.walk(defn):  # names unpacked from the inputs: `x, w = inputs`
            if isinstance(node, ast.Assign) and _names_in(node.value) & tensors:
                for target in node.targets:
                    tensors |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
        for node in ast.walk(defn):
            if not isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
                continue
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                unpacked = isinstance(target, (ast.Tuple, ast.List))
                for t in target.elts if unpacked else [target]:
                    if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == ctx_name:
                        # in `a, ctx.alpha = inputs` the element's type is unknowable: not flagged
                        tensorish = not unpacked and node.value is not None and _looks_like_tensor(node.value, tensors)
                        line = first + node.lineno - 1
                        text = lines[node.lineno - 1].split("#")[0].strip()  # the comment off (naively)
                        found.append((t.attr, method, line, text, tensorish))
    return found


_NON_TENSOR_ATTRS = {"shape", "dtype", "device", "ndim", "is_cuda", "requires_grad", "layout"}
_NON_TENSOR_CALLS = {"size", "dim", "numel", "item", "tolist", "len", "isinstance", "int", "float", "bool", "tuple"}


def _names_in(node: Any) -> set[str]:
    import ast

    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _looks_like_tensor(value: Any, tensors: set[str]) -> bool:
    import ast

    if not (_names_in(value) & tensors):
        return False
    for n in ast.walk(value):
        if isinstance(n, ast.Attribute) and n.attr in _NON_TENSOR_ATTRS:
            return False
        if isinstance(n, ast.Call):
            f = n.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name in _NON_TENSOR_CALLS:
                return False
    return True


def _jacobians(f: Callable, inputs: tuple[Tensor, ...], mode: str, eps: float = 1e-6,
               limit: int = 40_000) -> list[tuple[Tensor, Tensor]] | None:
    """(analytical, numerical) Jacobian of every input, (outputs × inputs) 2-D, float64.

    mode "backward" builds the analytical one from vector-Jacobian products, "forward"
    from Jacobian-vector products (jvp); None when they would be too big to be cheap.
    """
    from torch.autograd import forward_ad

    def flat(*xs):
        return torch.cat([y.reshape(-1) for y in _outputs(f(*xs)) if y.is_floating_point()])

    inputs = tuple(x.detach() for x in inputs)
    with torch.no_grad():
        sizes = [y.numel() for y in _outputs(f(*inputs)) if y.is_floating_point()]
    n_out = sum(sizes)
    if n_out * sum(x.numel() for x in inputs) > limit:
        return None
    pairs = []
    for i, x in enumerate(inputs):
        numerical = torch.zeros(n_out, x.numel(), dtype=torch.float64)
        analytical = torch.zeros_like(numerical)
        for j in range(x.numel()):
            e = torch.zeros(x.numel(), dtype=x.dtype).reshape(x.shape)
            e.view(-1)[j] = 1
            with torch.no_grad():
                plus = flat(*[x + eps * e if k == i else y for k, y in enumerate(inputs)])
                minus = flat(*[x - eps * e if k == i else y for k, y in enumerate(inputs)])
            numerical[:, j] = (plus - minus) / (2 * eps)
            if mode == "forward":
                with forward_ad.dual_level():
                    duals = [forward_ad.make_dual(y, e if k == i else torch.zeros_like(y))
                             for k, y in enumerate(inputs)]
                    outs = [forward_ad.unpack_dual(y).tangent for y in _outputs(f(*duals)) if y.is_floating_point()]
                analytical[:, j] = torch.cat([torch.zeros(n, dtype=torch.float64) if t is None else t.reshape(-1)
                                              for t, n in zip(outs, sizes)])
        if mode == "backward":
            xs = [y.clone().requires_grad_(k == i) for k, y in enumerate(inputs)]
            out = flat(*xs)
            for r in range(n_out):
                (d,) = torch.autograd.grad(out[r], xs[i], retain_graph=True, allow_unused=True)
                analytical[r] = 0 if d is None else d.reshape(-1)
        pairs.append((analytical, numerical))
    return pairs


def _mismatch(analytical: Tensor, numerical: Tensor) -> tuple[str, str] | None:
    """How an analytical Jacobian differs from the numerical one: (what, kind), None if it agrees."""
    close = lambda a, b: torch.allclose(a, b, rtol=1e-3, atol=1e-5)  # noqa: E731
    if close(analytical, numerical):
        return None
    if numerical.abs().max() > 1e-5 and close(analytical, -numerical):
        return "has the wrong sign (analytical = −numerical)", "sign"
    if analytical.abs().max() <= 1e-12:
        return "is zero where finite differences are not (a gradient missing, None, or detached?)", "zero"
    denominator = (numerical * numerical).sum()
    if denominator > 0:
        c = float((analytical * numerical).sum() / denominator)
        if abs(c) > 1e-6 and close(analytical, c * numerical):
            return f"is off by a factor of {c:.4g} (analytical = {c:.4g} × numerical)", "factor"
    square = analytical.shape[0] == analytical.shape[1]
    if square and close(analytical, numerical.T) and not close(numerical, numerical.T):
        return "is transposed", "transpose"
    err = (analytical - numerical).abs()
    r, c = divmod(int(err.argmax()), err.shape[1])
    return (f"differs from finite differences (largest error {float(err.max()):.3g}: analytical "
            f"{float(analytical[r, c]):.6g}, numerical {float(numerical[r, c]):.6g} at output element {r}, "
            f"input element {c})", "other")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _known_error(exc: BaseException) -> _Fail | None:
    """A torch error with a known cause, turned into what is wrong and how to fix it."""
    text = str(exc)
    if isinstance(exc, _Fail):
        return exc
    if "implement the jvp function" in text:
        return _Fail("missing jvp: forward-mode AD (torch.func.jvp, jacfwd, dual tensors) needs a jvp staticmethod",
                     HINTS["jvp"])
    if "must override the setup_context staticmethod" in text:
        return _Fail("torch.func (vmap, grad, jacrev, jvp) refuses the Function: forward(ctx, ...) without "
                     "setup_context", HINTS["setup_context"])
    if "does not have vmap support" in text or "generate_vmap_rule" in text:
        return _Fail("vmap refuses the Function: it has neither generate_vmap_rule = True nor a vmap staticmethod",
                     HINTS["vmap_rule"])
    if "incorrect number of gradients" in text:
        return _Fail(f"wrong number of gradients: {text.strip().splitlines()[0]}", HINTS["gradient_count"])
    if "once_differentiable" in text:
        return _Fail(f"double backward through @once_differentiable: {_first_line(exc)}", HINTS["once_differentiable"])
    if "does not require grad and does not have a grad_fn" in text or "None of the outputs have requires_grad" in text:
        return _Fail(f"the output is not connected to the inputs: {_first_line(exc)}", HINTS["detached"])
    return None


# ---------------------------------------------------------------- check_function


def check_function(fn: Callable, sample_inputs: Any, reference: Callable | None = None, *,
                   checks: Any = None, skip: Any = (), extreme_inputs: Any = None,
                   functions: Any = None, atol: float | None = None, rtol: float | None = None,
                   raise_on_failure: bool = False, name: str | None = None) -> Report:
    """Run the verification battery on a user's autograd.Function and report, one row per check.

    fn: a Function's `apply` (or the Function class), or any callable built from Functions.
    sample_inputs: a tensor, a tuple of args, a `Sample`, or a list of those; float tensors
        are converted to float64 for gradcheck, gradgradcheck, forward AD and vmap, so float32
        round-off never raises a false alarm.
    reference: an optional callable that computes the same thing (e.g. torch.sigmoid):
        values and gradients must agree in float64 and float32.
    checks / skip: the names (from `CHECKS`) to run, default all / to leave out.
    extreme_inputs: samples, in float32, where value and gradients must stay finite (or be
        non-finite only where the reference is); default, for a function of a single tensor,
        that tensor filled with ±1e4, ±1000, ±100 and 0; [] to skip.
    functions: the autograd.Function classes behind fn, for the static checks; found
        without it when fn is `MyFunction.apply` or when they appear in the autograd graph.
    atol / rtol: tolerances of the comparisons with the reference.
    raise_on_failure: raise `FunctionCheckError` (an AssertionError) instead of returning
        a report with failures.

    Returns a `Report`: `.ok`, `str(report)` a table, `report["gradcheck"]` a row.
    """
    selected = list(CHECKS if checks is None else [checks] if isinstance(checks, str) else checks)
    skipped_by_user = {skip} if isinstance(skip, str) else set(skip)
    unknown = [c for c in [*selected, *skipped_by_user] if c not in CHECKS]
    if unknown:
        raise ValueError(f"unknown check(s) {unknown}; the checks are {list(CHECKS)}")
    selected = [c for c in CHECKS if c in selected and c not in skipped_by_user]

    cls = _function_of(fn)
    if isinstance(fn, type):
        fn = fn.apply
    samples = as_samples(sample_inputs)
    if not samples:
        raise ValueError("check_function needs at least one sample input")
    battery = _Battery(fn, samples, reference, cls, functions, extreme_inputs, atol, rtol, selected)
    report = Report(name or _describe(fn, cls), samples=len(samples))
    for check in CHECKS:
        if check in selected or (check == "runs" and battery.probe_error is not None):
            report.results.append(battery.run(check))
    if raise_on_failure:
        report.raise_if_failed()
    return report


def assert_function_ok(fn: Callable, sample_inputs: Any, reference: Callable | None = None, **options: Any) -> Report:
    """pytest form of `check_function`: raise an AssertionError that says what is wrong and how to fix it.

        def test_my_sigmoid():
            assert_function_ok(MySigmoid.apply, [torch.randn(4, 5)], reference=torch.sigmoid)
    """
    __tracebackhide__ = True
    report = check_function(fn, sample_inputs, reference, **options)
    if not report.ok:
        raise FunctionCheckError(report)
    return report


class _Battery:
    """The state one check_function call shares between its checks."""

    BACKWARD_CHECKS = ("gradcheck", "gradgradcheck", "vmap", "reference", "float32", "finite")
    STATIC_CHECKS = ("setup_context", "ctx_tensors", "once_differentiable")  # run even when fn does not

    def __init__(self, fn, samples, reference, cls, functions, extreme_inputs, atol, rtol, selected):
        self.fn, self.samples, self.reference = fn, samples, reference
        self.atol, self.rtol, self.selected = atol, rtol, selected
        self.extreme_inputs = extreme_inputs
        given = [functions] if isinstance(functions, type) else list(functions or [])
        self.classes: list[type] = list(dict.fromkeys(([cls] if cls else []) + given))
        self.ctx_tensors: dict[type, list[tuple[str, Tensor]]] = {}
        self.observed: set[type] = set()
        self.probe_error: tuple[str, BaseException] | None = None
        self.probed = 0
        self.results: dict[str, CheckResult] = {}
        self._probe()

    # -- the probe: run forward and backward once per sample; find the Functions and their ctx

    def _probe(self) -> None:
        for sample in self.samples:
            s = _float64(sample)
            try:
                ys = _outputs(self.fn(*s.args, **s.kwargs))
            except Exception as exc:  # noqa: BLE001 (the user's code: any error is a finding)
                self.probe_error = (f"forward raised on {sample}", exc)
                return
            for node in _custom_nodes(ys):
                owner = node._forward_cls
                self.observed.add(owner)
                if owner not in self.classes:
                    self.classes.append(owner)
                for attr, t in _ctx_tensor_attributes(node):
                    if attr not in [a for a, _ in self.ctx_tensors.get(owner, [])]:
                        self.ctx_tensors.setdefault(owner, []).append((attr, t))
            inputs = [s.args[i] for i in s.differentiable()]
            outputs = [y for y in ys if y.requires_grad]
            if inputs and not outputs:
                self.probe_error = (f"no output requires grad on {sample}", _Fail(
                    f"no output requires grad though the inputs do, on {sample}", HINTS["detached"]))
                return
            if inputs:
                try:
                    torch.autograd.grad(outputs, inputs, [_random_like(y, seed=1) for y in outputs], allow_unused=True)
                except Exception as exc:  # noqa: BLE001
                    self.probe_error = (f"backward raised on {sample}", exc)
                    return
            self.probed += 1

    @property
    def forward_failed(self) -> bool:
        return self.probe_error is not None and self.probe_error[0].startswith("forward")

    # -- running one check

    def run(self, check: str) -> CheckResult:
        result = self._run(check)
        self.results[check] = result
        return result

    def _run(self, check: str) -> CheckResult:
        try:
            if self.probe_error is not None and check not in ("runs", *self.STATIC_CHECKS):
                if self.forward_failed or check in self.BACKWARD_CHECKS:
                    raise _Skip(f"{self.probe_error[0].split(' on ')[0]} (see 'runs')")
            detail = getattr(self, "check_" + check)()
            return CheckResult(check, "passed", detail or "")
        except _Skip as why:
            return CheckResult(check, "skipped", str(why))
        except Exception as exc:  # noqa: BLE001 (the user's code: any error is a finding)
            known = _known_error(exc)
            if known is not None:
                return CheckResult(check, "failed", known.detail, known.hint)
            return CheckResult(check, "failed", str(exc).strip() if isinstance(exc, AssertionError) else
                               _first_line(exc))

    def each_sample(self, what: Callable[[Sample], None], need_grad: bool = True) -> str:
        done = 0
        for sample in self.samples:
            if need_grad and not sample.differentiable():
                continue
            what(sample)
            done += 1
        if not done:
            raise _Skip("no sample has a floating-point tensor input to differentiate")
        return _count(done)

    def failed(self, check: str) -> bool:
        return check in self.results and self.results[check].failed

    def no_function(self) -> _Skip:
        return _Skip("no torch.autograd.Function found behind fn (pass functions=[MyFunction])")

    # -- static checks

    def check_setup_context(self) -> str:
        if not self.classes:
            raise self.no_function()
        old = [c for c in self.classes if not _overrides(c, "setup_context")]
        if old:
            names = ", ".join(f"{c.__qualname__}.forward(ctx, ...)" for c in old)
            raise _Fail(f"old style: {names} without setup_context; torch.func (vmap, grad, jacrev, jvp) refuses it",
                        HINTS["setup_context"])
        return ", ".join(c.__qualname__ for c in self.classes)

    def check_once_differentiable(self) -> str:
        if not self.classes:
            raise self.no_function()
        if "gradgradcheck" not in self.selected:
            raise _Skip("double backward not asked for (gradgradcheck is not among the checks)")
        once = [c for c in self.classes if _is_once_differentiable(c)]
        if once:
            raise _Fail(f"{', '.join(c.__qualname__ + '.' + _backward_name(c) for c in once)} is @once_differentiable: "
                        f"double backward raises or is silently zero", HINTS["once_differentiable"])
        return ""

    def check_ctx_tensors(self) -> str:
        if not self.classes:
            raise self.no_function()
        findings = []
        for c in self.classes:
            lines = {attr: (method, line, text) for attr, method, line, text, _ in ctx_assignments(c)}
            for attr, t in self.ctx_tensors.get(c, []):
                where = lines.get(attr)
                at = f" ({where[0]}, line {where[1]}: `{where[2]}`)" if where else ""
                findings.append(f"{c.__qualname__} keeps a tensor {tuple(t.shape)} as ctx.{attr}{at}")
            if c not in self.observed:  # never ran: guess from the source
                findings += [f"{c.__qualname__} seems to keep a tensor as ctx.{attr} ({method}, line {line}: `{text}`;"
                             f" found by inspection, the Function did not run)"
                             for attr, method, line, text, tensorish in ctx_assignments(c) if tensorish]
        if findings:
            raise _Fail("; ".join(findings) + ": a tensor kept on ctx escapes autograd's saved-tensor checks, "
                        "keeps the graph alive and is a constant to double backward", HINTS["ctx_tensor"])
        unseen = [c.__qualname__ for c in self.classes if c not in self.observed]
        return f"by inspection only for {', '.join(unseen)}" if unseen else ""

    # -- dynamic checks

    def check_runs(self) -> str:
        if self.probe_error is not None:
            where, exc = self.probe_error
            known = _known_error(exc)
            if known is not None:
                raise _Fail(f"{known.detail} ({where})", known.hint)
            raise _Fail(f"{where}: {_first_line(exc)}")
        return _count(self.probed)

    def check_gradcheck(self) -> str:
        def one(sample):
            try:
                check_gradcheck(self.fn, sample)
            except GradcheckError as exc:
                raise self._diagnose(sample, "backward", exc) from exc

        return self.each_sample(one)

    def check_gradgradcheck(self) -> str:
        def one(sample):
            try:
                check_gradgradcheck(self.fn, sample)
            except GradcheckError as exc:
                once = [c.__qualname__ for c in self.classes if _is_once_differentiable(c)]
                kept = [f"ctx.{a}" for c in self.classes for a, _ in self.ctx_tensors.get(c, [])]
                if once:
                    raise _Fail(f"double backward mismatch on {sample}: {', '.join(once)}.backward is "
                                f"@once_differentiable, so its own derivative is lost",
                                HINTS["once_differentiable"]) from exc
                if kept:
                    raise _Fail(f"double backward mismatch on {sample}: a tensor kept on ctx ({', '.join(kept)}) is "
                                f"used in backward; save it with ctx.save_for_backward", HINTS["ctx_tensor"]) from exc
                raise _Fail(f"double backward mismatch on {sample}: the derivative of backward disagrees with finite "
                            f"differences ({str(exc).splitlines()[0].rstrip(',')})", HINTS["double_backward"]) from exc

        return self.each_sample(one)

    def check_forward_ad(self) -> str:
        def one(sample):
            try:
                check_forward_ad(self.fn, sample)
            except GradcheckError as exc:
                raise self._diagnose(sample, "forward", exc) from exc
            if self.reference is not None:
                check_jvp_matches_reference(self.fn, self.reference, sample)

        detail = self.each_sample(one)
        return detail + (", and the reference's jvp" if self.reference is not None else "")

    def check_vmap(self) -> str:
        if self.failed("gradcheck"):
            raise _Skip("backward itself is wrong (see 'gradcheck'); its batching is checked once it is right")

        def one(sample):
            check_batched_grad(self.fn, sample)
            f, primals = sample.converted(torch.float64).bind(self.fn)
            batched = tuple(torch.stack([p, p.flip(tuple(range(p.dim())))]) for p in primals)
            ys = _outputs(torch.func.vmap(f)(*batched))
            loops = [_outputs(f(*(b[k] for b in batched))) for k in range(2)]
            for n, y in enumerate(ys):
                _assert_close(y, torch.stack([loop[n] for loop in loops]), f"torch.func.vmap output {n} of {sample}")
            if any(p.numel() == 0 for p in primals):
                return  # torch's own vmap decompositions divide by zero on empty inputs
            if self.reference is not None and len(_outputs(f(*primals))) == 1:
                check_jacrev_matches_reference(self.fn, self.reference, sample)
            elif len(_outputs(f(*primals))) == 1:
                argnums = tuple(range(len(primals)))
                jac = torch.func.jacrev(f, argnums=argnums)(*primals)
                loop = torch.autograd.functional.jacobian(f, primals)
                for i, (j, j_loop) in enumerate(zip(jac, loop)):
                    _assert_close(j, j_loop, f"torch.func.jacrev w.r.t. input {i} of {sample}")

        return self.each_sample(one)

    def check_reference(self) -> str:
        if self.reference is None:
            raise _Skip("no reference given")
        for sample in self.samples:
            for dtype in (torch.float64, torch.float32):
                try:
                    check_matches_reference(self.fn, self.reference, sample, dtype, self.atol, self.rtol)
                except AssertionError as exc:
                    text = str(exc).strip()
                    hint = (HINTS["float32"] if "dtype torch.float64 != reference torch.float32" in text else
                            "backward's gradient differs from the reference's: if gradcheck passes, the reference "
                            "computes something else (check its arguments); if not, fix backward"
                            if text.startswith("gradient") else
                            "forward computes another value than the reference: check forward (and its tolerance: "
                            "atol=, rtol=)" if text.startswith("value") else "")
                    raise _Fail(f"{dtype}: {text}", hint) from exc
        return f"{_count(len(self.samples))}, float64 and float32"

    def check_float32(self) -> str:
        from unittest import mock

        def one(sample):
            s = sample.converted(torch.float32, requires_grad=True)
            returned: list[tuple[type, Any]] = []
            patches = []
            for c in self.observed:
                method = _backward_name(c)
                original = getattr(c, method)

                def recording(ctx, *grads, _original=original, _c=c):
                    result = _original(ctx, *grads)
                    returned.append((_c, result))
                    return result

                patches.append(mock.patch.object(c, method, staticmethod(recording)))
            for p in patches:
                p.start()
            try:
                ys = _outputs(self.fn(*s.args, **s.kwargs))
                for n, y in enumerate(ys):
                    if y.is_floating_point() and y.dtype != torch.float32:
                        raise _Fail(f"float32 inputs {sample} give a {y.dtype} output"
                                    f"{f' {n}' if len(ys) > 1 else ''}", HINTS["float32"])
                inputs = [s.args[i] for i in s.differentiable()]
                outputs = [y for y in ys if y.requires_grad]
                if inputs and outputs:
                    ones = [torch.ones_like(y) for y in outputs]
                    grads = torch.autograd.grad(outputs, inputs, ones, allow_unused=True)
                    for i, d in zip(s.differentiable(), grads):
                        if d is not None and d.dtype != torch.float32:
                            raise _Fail(f"gradient of float32 input {i} is {d.dtype}", HINTS["float32"])
            finally:
                for p in reversed(patches):
                    p.stop()
            for c, result in returned:
                for k, d in enumerate(result if isinstance(result, tuple) else (result,)):
                    if isinstance(d, Tensor) and d.is_floating_point() and d.dtype != torch.float32:
                        raise _Fail(f"{c.__qualname__}.backward returns a {d.dtype} gradient for float32 input {k} "
                                    f"on {sample} (autograd casts it back silently, after computing in {d.dtype})",
                                    HINTS["float32"])

        return self.each_sample(one)

    def check_finite(self) -> str:
        samples = self._extreme_samples()
        compare = self.reference is not None and not self.failed("reference")
        for sample in samples:
            try:
                if self.reference is None:
                    check_finite(self.fn, sample)
                else:
                    self._finite_where_reference_is(sample)
            except AssertionError as exc:
                raise _Fail(str(exc).split(": tensor")[0].strip(), HINTS["nonfinite"]) from exc
            if compare:
                try:
                    check_matches_reference(self.fn, self.reference, sample, torch.float32, self.atol, self.rtol)
                except AssertionError as exc:
                    raise _Fail(f"at extreme inputs: {str(exc).strip()}", HINTS["nonfinite"]) from exc
        values = "default extremes ±1e4, ±1000, ±100, 0" if self.extreme_inputs is None else "extreme inputs"
        return f"{_count(len(samples))}, {values}, float32" + (", equal to the reference" if compare else "")

    # -- helpers

    def _extreme_samples(self) -> list[Sample]:
        if self.extreme_inputs is not None:
            samples = as_samples(self.extreme_inputs)
            if not samples:
                raise _Skip("no extreme inputs (extreme_inputs=[])")
            return samples
        base = next((s for s in self.samples if len([a for a in s.args if isinstance(a, Tensor)]) == 1
                     and len(s.differentiable()) == 1 and s.args[s.differentiable()[0]].numel() > 0), None)
        if base is None:
            raise _Skip("no default extremes for a function of several tensors: pass extreme_inputs=[...]")
        i = base.differentiable()[0]
        shape = base.args[i].shape
        values = torch.tensor(DEFAULT_EXTREMES, dtype=torch.float32)
        cyclic = values.repeat(shape.numel() // len(values) + 1)[: shape.numel()].reshape(shape)
        fills = [cyclic] + [torch.full(shape, v, dtype=torch.float32) for v in DEFAULT_EXTREMES]
        return [Sample(base.args[:i] + (x,) + base.args[i + 1:], dict(base.kwargs), base.desc) for x in fills]

    def _finite_where_reference_is(self, sample: Sample) -> None:
        """Non-finite value or gradient only where the reference's is non-finite too."""
        ours = sample.converted(torch.float32, requires_grad=True)
        theirs = sample.converted(torch.float32, requires_grad=True)
        ys = _outputs(self.fn(*ours.args, **ours.kwargs))
        ys_ref = _outputs(self.reference(*theirs.args, **theirs.kwargs))
        for y, y_ref in zip(ys, ys_ref):
            if y.shape == y_ref.shape:
                bad = ~torch.isfinite(y) & torch.isfinite(y_ref)
                assert not bad.any(), f"non-finite value{_where(bad, ours)} on {sample} where the reference is finite"
        positions = ours.differentiable()
        pairs = [(y, r) for y, r in zip(ys, ys_ref) if y.requires_grad and r.requires_grad and y.shape == r.shape]
        if not positions or not pairs:
            return
        ones = [torch.ones_like(r) for _, r in pairs]
        grads = torch.autograd.grad([y for y, _ in pairs], [ours.args[i] for i in positions], ones, allow_unused=True)
        grads_ref = torch.autograd.grad([r for _, r in pairs], [theirs.args[i] for i in positions], ones,
                                        allow_unused=True)
        for i, d, d_ref in zip(positions, grads, grads_ref):
            if d is not None and d_ref is not None and d.shape == d_ref.shape:
                bad = ~torch.isfinite(d) & torch.isfinite(d_ref)
                assert not bad.any(), (f"non-finite gradient of input {i}{_where(bad, ours, i)} on {sample} "
                                       f"where the reference's is finite")

    def _diagnose(self, sample: Sample, mode: str, exc: BaseException) -> _Fail:
        """Turn a gradcheck mismatch into what is wrong: the sign, a factor, a zero, a transpose."""
        which = "backward" if mode == "backward" else "jvp"
        f, inputs = _float64(sample).bind(self.fn)
        positions = sample.differentiable()
        hint = HINTS["backward"] if mode == "backward" else HINTS["jvp_formula"]
        try:
            pairs = _jacobians(f, inputs, mode)
        except Exception:  # noqa: BLE001 (a diagnosis is best effort)
            pairs = None
        for k, (analytical, numerical) in enumerate(pairs or []):
            found = _mismatch(analytical, numerical)
            if found is not None:
                what, kind = found
                if kind == "sign":
                    hint = (f"flip the sign of the gradient {which} returns for input {positions[k]}"
                            if mode == "backward" else f"flip the sign of the tangent jvp computes from input "
                                                       f"{positions[k]}")
                elif kind == "zero" and mode == "backward":
                    hint = f"return the gradient of input {positions[k]} from backward, computed from the incoming g"
                elif kind == "factor" and mode == "backward":
                    hint = "check the constant factors of the derivative in backward"
                noun = "the gradient" if mode == "backward" else "the tangent"
                return _Fail(f"{which} disagrees with finite differences for input {positions[k]} of {sample}: "
                             f"{noun} {what}", hint)
        first = str(exc).splitlines()[0].rstrip(",")
        return _Fail(f"{which} disagrees with finite differences on {sample}: {first}", hint)
