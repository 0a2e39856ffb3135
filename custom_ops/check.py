"""Check your own autograd.Function from the command line: the battery of `check_function`.

    python -m custom_ops.check path/to/module.py:MyFunction [--sample "shape=(4,5)"]... [--reference torch.sigmoid]

TARGET is `file.py:Name` (or `package.module:Name`). Loading it *runs that file*, as
`python file.py` would (that is the point: it is your code); nothing else is evaluated.
Name may be dotted (`Outer.MyFunction`); an autograd.Function subclass is called through
its `apply`, anything else callable as it is.

Each --sample is one positional argument, a comma-separated list of key=value pairs whose
values are Python literals (read with ast.literal_eval, never eval):

    shape=(4,5)                    a float64 tensor, standard normal
    shape=(4,5), low=0.5, high=2   uniform in [low, high)
    shape=(3,), dtype=int64, high=4    integers in [low, high) (low defaults to 0)
    value=1                        a Python value, e.g. a dim or an exponent

With no --sample, the function gets one float64 tensor of shape (3, 4).
--reference names a function in torch only (torch.sigmoid, torch.nn.functional.softplus),
found by walking attributes from the torch module.

Prints the report as a table; exit status 0 when every check passed (or was skipped),
1 when one failed, 2 on bad usage (one `error: ...` line).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import os
import sys
from typing import Any, Callable, NoReturn

import torch

from .testing import CHECK_DESCRIPTIONS, CHECKS, check_function

DEFAULT_SHAPE = (3, 4)
_DTYPES = {"float64": torch.float64, "float32": torch.float32, "int64": torch.int64}
_SAMPLE_KEYS = ("shape", "low", "high", "dtype", "value")


class UsageError(Exception):
    """Bad command line: printed as one `error: ...` line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    checks = "\n".join(f"  {name:<20} {text}" for name, text in CHECK_DESCRIPTIONS.items())
    parser = _Parser(
        prog="python -m custom_ops.check",
        description="Run the verification battery (gradcheck, gradgradcheck, forward AD, vmap, reference, "
                    "float32, finiteness, static pitfalls) on your torch.autograd.Function.",
        epilog=f"checks:\n{checks}\n\nexit status: 0 all passed, 1 a check failed, 2 bad usage",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("target", help="path/to/module.py:Name (or package.module:Name); loading it runs the file")
    parser.add_argument("--sample", action="append", default=[], metavar="SPEC",
                        help='one positional argument: "shape=(4,5)", "shape=(4,5), low=0.5, high=2", '
                             '"shape=(3,), dtype=int64, high=4" or "value=1"; repeat for several')
    parser.add_argument("--reference", metavar="torch.NAME", help="the function it must agree with, in torch")
    parser.add_argument("--skip", action="append", default=[], choices=CHECKS, metavar="CHECK",
                        help=f"leave a check out (repeatable): {', '.join(CHECKS)}")
    parser.add_argument("--no-extremes", action="store_true", help="skip the finite-at-extreme-inputs check")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random sample tensors (default 0)")
    return parser


# ---------------------------------------------------------------- the target


def load_target(target: str) -> tuple[Callable, str]:
    """(the callable to check, its display name) for 'file.py:Name' or 'package.module:Name'."""
    where, sep, name = target.rpartition(":")
    if not sep or not where or not name:
        raise UsageError(f"target must be path/to/module.py:Name, got {target!r}")
    if not all(part.isidentifier() for part in name.split(".")):
        raise UsageError(f"{name!r} is not a (dotted) Python name")
    module = _load_module(where)
    obj: Any = module
    for part in name.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"{where} has no {name!r}")
        obj = getattr(obj, part)
    if isinstance(obj, type) and issubclass(obj, torch.autograd.Function):
        return obj.apply, f"{name}.apply"
    if not callable(obj):
        raise UsageError(f"{name} is a {type(obj).__name__}, not an autograd.Function or a callable")
    return obj, name


def _load_module(where: str) -> Any:
    is_file = where.endswith(".py") or os.sep in where or "/" in where
    try:
        if not is_file:
            return importlib.import_module(where)
        path = os.path.abspath(where)
        if not os.path.isfile(path):
            raise UsageError(f"no such file: {where}")
        module_name = "_checked_" + os.path.splitext(os.path.basename(path))[0].replace("-", "_")
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise UsageError(f"cannot load {where} as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
        if os.path.dirname(path) not in sys.path:  # its own sibling imports work, as under `python file.py`
            sys.path.insert(0, os.path.dirname(path))
        spec.loader.exec_module(module)
        return module
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 (the user's module: report, don't trace)
        raise UsageError(f"importing {where} failed: {type(exc).__name__}: {exc}") from exc


# ---------------------------------------------------------------- samples and the reference


def parse_sample(spec: str) -> dict[str, Any]:
    """'shape=(4,5), low=0, high=1' as a dict of literals: parsed, never evaluated."""
    try:
        call = ast.parse(f"sample({spec})", mode="eval").body
    except SyntaxError:
        raise UsageError(f"--sample {spec!r}: expected key=value pairs such as shape=(4,5)") from None
    assert isinstance(call, ast.Call)
    if call.args or not call.keywords or any(k.arg is None for k in call.keywords):
        raise UsageError(f"--sample {spec!r}: expected key=value pairs such as shape=(4,5)")
    fields = {}
    for keyword in call.keywords:
        if keyword.arg not in _SAMPLE_KEYS:
            raise UsageError(f"--sample {spec!r}: unknown key {keyword.arg!r} (use {', '.join(_SAMPLE_KEYS)})")
        if keyword.arg == "dtype" and isinstance(keyword.value, ast.Name):
            fields["dtype"] = keyword.value.id  # dtype=float32 without quotes
            continue
        try:
            fields[keyword.arg] = ast.literal_eval(keyword.value)
        except ValueError:
            raise UsageError(f"--sample {spec!r}: {keyword.arg} must be a literal") from None
    return fields


def make_argument(spec: str, generator: torch.Generator) -> Any:
    fields = parse_sample(spec)
    if "value" in fields:
        if len(fields) > 1:
            raise UsageError(f"--sample {spec!r}: value= stands alone")
        return fields["value"]
    if "shape" not in fields:
        raise UsageError(f"--sample {spec!r}: give shape=(...) or value=...")
    shape = fields["shape"]
    shape = (shape,) if isinstance(shape, int) else shape
    if not isinstance(shape, (tuple, list)) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise UsageError(f"--sample {spec!r}: shape must be a tuple of non-negative ints")
    dtype_name = fields.get("dtype", "float64")
    if dtype_name not in _DTYPES:
        raise UsageError(f"--sample {spec!r}: dtype must be one of {', '.join(_DTYPES)}")
    dtype, low, high = _DTYPES[dtype_name], fields.get("low"), fields.get("high")
    for bound in (low, high):
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, (int, float))):
            raise UsageError(f"--sample {spec!r}: low and high must be numbers")
    if not dtype.is_floating_point:
        if high is None:
            raise UsageError(f"--sample {spec!r}: an integer tensor needs high=")
        return torch.randint(int(low or 0), int(high), tuple(shape), generator=generator)
    if low is None and high is None:
        return torch.randn(tuple(shape), generator=generator, dtype=torch.float64).to(dtype)
    low, high = (-1.0 if low is None else low), (1.0 if high is None else high)
    if not low < high:
        raise UsageError(f"--sample {spec!r}: low must be below high")
    return (torch.rand(tuple(shape), generator=generator, dtype=torch.float64) * (high - low) + low).to(dtype)


def resolve_reference(name: str) -> Callable:
    """torch.X.Y by attribute walk from the torch module; nothing else is accepted."""
    parts = name.split(".")
    if parts[0] != "torch" or len(parts) < 2 or not all(p.isidentifier() and not p.startswith("_") for p in parts):
        raise UsageError(f"--reference must name a public function in torch, like torch.sigmoid; got {name!r}")
    obj: Any = torch
    for part in parts[1:]:
        if not hasattr(obj, part):
            raise UsageError(f"--reference {name}: torch has no such attribute")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UsageError(f"--reference {name} is not callable")
    return obj


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        reference = resolve_reference(args.reference) if args.reference else None
        generator = torch.Generator().manual_seed(args.seed)
        specs = args.sample or [f"shape={DEFAULT_SHAPE}"]
        sample = tuple(make_argument(spec, generator) for spec in specs)
        fn, name = load_target(args.target)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    skip = set(args.skip) | ({"finite"} if args.no_extremes else set())
    report = check_function(fn, [sample], reference, skip=skip, name=name)
    print(report)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
