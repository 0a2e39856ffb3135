"""Property tests (hypothesis) over the CSV loader and the command line.

Every generated input either loads (and then loads correctly) or is refused with a
UserError of one line; train.main returns 0, 2 (bad input, one `error:` line on
stderr) or 3 (training diverged, one `error:` line); no other exception escapes, and
no case hangs (each runs under an alarm). The example counts are fixed and the
examples derandomized (tests/conftest.py), so a run is reproducible.
"""

from __future__ import annotations

import contextlib
import io
import re
import signal
import sys
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, find, given, settings
from hypothesis import strategies as st

from helpers import assert_one_error_line
import train
from training import UserError, read_csv

# ------------------------------------------------------------------------------ helpers


class Hang(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int):
    """Turn a hang into a failure (SIGALRM): generous, it only catches a loop that never ends."""

    def on_alarm(signum, frame):
        raise Hang(f"no answer after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def fresh_file(folder: Path, content: bytes, suffix: str = ".csv") -> Path:
    path = folder / f"{uuid.uuid4().hex}{suffix}"
    path.write_bytes(content)
    return path


def assert_one_line(message: str) -> None:
    assert message and message == message.strip() and len(message.splitlines()) == 1, repr(message)


def load(path: Path):
    """read_csv's result, or the UserError's message; anything else fails the test."""
    with time_limit(60):
        try:
            return read_csv(path)
        except UserError as error:
            assert_one_line(str(error))
            return str(error)


def assert_valid_dataset(dataset) -> None:
    features, labels = dataset.features, dataset.labels
    assert features.ndim == 2 and features.dtype == np.float64 and features.shape[1] >= 1
    assert np.isfinite(features).all()
    assert labels.dtype == np.int64 and labels.shape == (len(features),)
    assert dataset.num_classes >= 2 and len(set(dataset.class_names)) == dataset.num_classes
    assert labels.min() >= 0 and labels.max() < dataset.num_classes
    assert set(labels.tolist()) == set(range(dataset.num_classes))  # every class index is used
    # the class names are the labels as integers, in increasing order
    assert [int(name) for name in dataset.class_names] == sorted(int(name) for name in dataset.class_names)


# ------------------------------------------------------------------------------ CSV: random bytes


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=400))
@example(content=b"")
@example(content=b"\xff\xfe1\x00,\x002\x00\n\x00")  # UTF-16
@example(content=b"\xef\xbb\xbf1,2\n0,3\n")  # UTF-8 with a BOM: loads
@example(content=b"1,2\x00\n0,3\n")  # a NUL byte
@example(content=b"1,2\r0,3\r")  # old Mac line ends
def test_csv_random_bytes_load_or_refuse_in_one_line(scratch, content):
    result = load(fresh_file(scratch, content))
    if not isinstance(result, str):
        assert_valid_dataset(result)


# ------------------------------------------------------------------------------ CSV: structured text

NUMBERS = st.one_of(
    st.integers(-3, 3).map(str),
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(repr),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda v: f"{v:.6g}"),
)
JUNK = st.one_of(
    st.sampled_from([
        "", " ", "nan", "NaN", "inf", "-inf", "1e400", "-1e400", "1e-400", "4.9e-324", "1.7976931348623157e308",
        "9" * 30, "-" + "9" * 400, str(2**63), str(-(2**63) - 1), "9007199254740993", "1e16", "0x10", "1_000",
        "1e", "--1", "+1", " 2 ", "2.", ".5", "1,5", '"1"', "'1'", "abc", "label", "١٢", "½", "\t3", "3\t",
        "1e5 ", "\u00a01", "１", "\x00", "#1", "1#", "0.5", "-0", "1.0",
    ]),
    st.text(max_size=6),
)  # fmt: skip
# one cell in 25 is junk (hypothesis favours small draws: the rare branch is the largest)
CELLS = st.integers(0, 24).flatmap(lambda k: JUNK if k == 24 else NUMBERS)


@st.composite
def tables(draw, max_rows: int = 10) -> list[str]:
    """Rows of a CSV: a label (mostly 0 or 1) then `width` cells; now and then a junk cell,
    an odd label or a row of another length."""
    width = draw(st.integers(1, 4))
    rows = []
    for _ in range(draw(st.integers(0, max_rows))):
        label = draw(st.integers(0, 9).flatmap(lambda k: CELLS if k == 9 else st.sampled_from(["0", "1"])))
        length = draw(st.integers(0, 9).map(lambda k: {8: 0, 9: width + 1}.get(k, width)))  # ragged one time in 5
        rows.append(",".join([label, *draw(st.lists(CELLS, min_size=length, max_size=length))]))
    return rows


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=tables(),
    header=st.sampled_from(["", "label,a,b", "y", ",,", "label;a;b"]),
    newline=st.sampled_from(["\n", "\r\n", "\r", "\n\n", "\x85", "\u2028"]),
    encoding=st.sampled_from(["utf-8", "utf-8", "utf-8-sig", "utf-16", "latin-1", "cp1252"]),
)
def test_csv_text_loads_or_refuses_in_one_line(scratch, rows, header, newline, encoding):
    text = newline.join(([header] if header else []) + rows)
    try:
        content = text.encode(encoding)
    except UnicodeEncodeError:
        content = text.encode("utf-8", "surrogatepass")
    result = load(fresh_file(scratch, content))
    if not isinstance(result, str):
        assert_valid_dataset(result)


def test_csv_text_strategy_finds_both_outcomes(scratch):
    """The structured strategy is not all refusals, nor all loads: both paths are fuzzed."""

    def refused(rows: list[str]) -> bool:
        return isinstance(load(fresh_file(scratch, "\n".join(rows).encode())), str)

    quick = settings(max_examples=500, database=None, suppress_health_check=list(HealthCheck))
    assert not refused(find(tables(), lambda rows: not refused(rows), settings=quick))
    assert refused(find(tables(), refused, settings=quick))


# ------------------------------------------------------------------------------ CSV: valid tables load exactly

LABELS = st.one_of(st.integers(-5, 5), st.integers(-(2**53) + 1, 2**53 - 1))  # what float64 holds exactly
FEATURES = st.floats(allow_nan=False, allow_infinity=False)  # float64, denormals and ±1.7e308 included


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    table=st.integers(1, 4).flatmap(
        lambda width: st.lists(st.tuples(LABELS, st.lists(FEATURES, min_size=width, max_size=width)),
                               min_size=2, max_size=12)  # fmt: skip
    ),
    header=st.booleans(),
    trailing_blank_lines=st.integers(0, 2),
)
def test_valid_csv_loads_exactly(scratch, table, header, trailing_blank_lines):
    labels = [label for label, _ in table]
    text = ("label," + ",".join(f"x{i}" for i in range(len(table[0][1]))) + "\n") * header
    text += "".join(f"{label}," + ",".join(repr(v) for v in row) + "\n" for label, row in table)
    text += "\n" * trailing_blank_lines
    result = load(fresh_file(scratch, text.encode()))
    if len(set(labels)) < 2:
        assert isinstance(result, str) and "same label" in result
        return
    assert not isinstance(result, str), result
    assert_valid_dataset(result)
    assert result.features.tolist() == [row for _, row in table]  # repr round-trips a float64 exactly
    assert [int(result.class_names[i]) for i in result.labels] == labels


@pytest.mark.parametrize(
    "label, message",
    [
        (str(2**53 + 2), r"too large"),  # distinct integers beyond 2**53 would merge into one float64
        ("-1e300", r"too large"),
        ("1e400", r"not a finite number"),
        ("99999999999999999999", r"too large"),
    ],
)
def test_labels_out_of_range_are_refused(scratch, label, message):
    path = fresh_file(scratch, f"0,1.0\n{label},2.0\n1,3.0\n".encode())
    result = load(path)
    assert isinstance(result, str) and message in result, result


def test_labels_that_only_differ_beyond_float_precision_are_not_merged(scratch):
    """2**53 + 1 and 2**53 are one float64: the loader must refuse, not merge two classes."""
    result = load(fresh_file(scratch, f"{2**53},1\n{2**53 + 1},2\n{2**53},3\n{2**53 + 1},4\n".encode()))
    assert isinstance(result, str) and "too large" in result


# ------------------------------------------------------------------------------ the command line


# warnings a run may print on stderr besides its error line: anomaly mode's own notices
EXPECTED_WARNINGS = re.compile(r"Anomaly Detection has been enabled|Traceback of forward call|Error detected in")


def run_main(argv: list[str]) -> tuple[int, str, str]:
    """train.main(argv): (exit status, stdout, stderr); the warnings it raised are printed
    into stderr, as python train.py would print them."""
    out, err = io.StringIO(), io.StringIO()
    with time_limit(120), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            warnings.catch_warnings(record=True) as caught:  # fmt: skip
        warnings.simplefilter("always")
        try:
            code = train.main(argv)
        except SystemExit as exit_:  # only --help (or an abbreviation of it) exits this way
            code = exit_.code
            assert code == 0 and out.getvalue().startswith("usage:"), (code, out.getvalue(), err.getvalue())
    unexpected = [f"{w.category.__name__}: {w.message}" for w in caught if not EXPECTED_WARNINGS.search(str(w.message))]
    return code, out.getvalue(), "".join(f"{line}\n" for line in unexpected) + err.getvalue()


def check_outcome(code: int, out: str, err: str) -> None:
    assert code in (0, 2, train.EXIT_NON_FINITE), (code, err)
    assert "Traceback" not in err and "Traceback" not in out
    if code != 0:
        assert_one_line(assert_one_error_line(err))


WEIRD_TEXT = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", " ", "-", "--", "-1", "0", "1e400", "nan", "inf", "-inf", "1e-320", "9" * 40, "0x1f", "1_0",
                     "\x00", "a\x00b", "\udcff", "x\udcfe.csv", "..", ".", "/", "a/b", "~", "$HOME", "\n", "é",
                     "１"]),
)  # fmt: skip
def mostly(plausible: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Plausible values three times in four, weird text otherwise."""
    return st.integers(0, 3).flatmap(lambda k: WEIRD_TEXT if k == 3 else plausible)


FLAG_VALUES = {
    "--model": mostly(st.sampled_from(["lr", "mlp"])),
    "--hidden": mostly(st.sampled_from(["4", "3,2", "0", "-1", "4,", ",4", "1" * 25, "4;4", "2,2,2"])),
    "--activation": mostly(st.sampled_from(["relu", "tanh", "sigmoid", "gelu"])),
    "--dataset": mostly(st.sampled_from(["iris", "wine", "breast_cancer", "mnist", "nope", "x.csv", "/dev/null", "/"])),
    "--data-dir": WEIRD_TEXT,
    "--val-fraction": mostly(st.one_of(st.floats(-1, 2).map(repr), st.sampled_from(["0.5", "1e-300", "0.99999"]))),
    "--optimizer": mostly(st.sampled_from(["sgd", "adam", "SGD"])),
    "--lr": mostly(st.one_of(st.floats().map(repr), st.sampled_from(["1e6", "1e30", "1e-30", "0.1", "1e308"]))),
    "--batch-size": mostly(st.integers(-2, 10**20).map(str)),
    "--epochs": mostly(st.integers(-2, 10**20).map(str)),
    "--device": mostly(st.sampled_from(["cpu", "auto", "cuda", "cuda:7", "cuda:" + "9" * 30, "CPU"])),
    "--seed": mostly(st.integers(-2, 2**65).map(str)),
    "--init": mostly(st.sampled_from(["random", "zero", "xavier"])),
    "--threads": mostly(st.integers(-2, 10**20).map(str)),
    "--run-name": WEIRD_TEXT,
    "--metrics-format": mostly(st.sampled_from(["10601", "csv"])),
    "--resume": mostly(st.sampled_from(["last.pt", "runs/x/last.pt", "/dev/null", "/"])),
    "--logdir": WEIRD_TEXT,
}
SWITCHES = ["--quiet", "--detect-anomaly", "--amp", "--metrics-format=10601", "--colour", "stray", "--", "--epochs"]


def sanitize(argv: list[str]) -> list[str]:
    """Bound what a valid argument may cost (the fuzz is about validation, not about
    long runs): at most 2 epochs, hidden layers of at most 16 units, 1 thread."""

    def parses(value: str, kind) -> object | None:
        try:
            return kind(value)
        except Exception:  # noqa: BLE001
            return None

    limits = {
        "--epochs": lambda v: "2" if (parses(v, train.positive_int) or 0) > 2 else v,
        "--hidden": lambda v: "16" if max(parses(v, train.hidden_sizes) or [0]) > 16 else v,
        "--threads": lambda v: "1" if parses(v, train.positive_int) else v,
    }
    out = list(argv)
    for i, token in enumerate(out):
        flag, equals, value = token.partition("=")
        if equals and flag in limits:  # --epochs=N
            out[i] = f"{flag}={limits[flag](value)}"
        elif token in limits and i + 1 < len(out):  # --epochs N
            out[i + 1] = limits[token](out[i + 1])
    return out


ARGV = st.lists(
    st.one_of(
        st.sampled_from(sorted(FLAG_VALUES)).flatmap(lambda flag: FLAG_VALUES[flag].map(lambda value: [flag, value])),
        st.sampled_from(sorted(FLAG_VALUES)).flatmap(lambda flag: FLAG_VALUES[flag].map(lambda v: [f"{flag}={v}"])),
        st.sampled_from(SWITCHES).map(lambda switch: [switch]),
    ),
    max_size=6,
).map(lambda pairs: [token for pair in pairs for token in pair])


@settings(max_examples=120, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(argv=ARGV)
@example(argv=["--run-name", "a\x00b"])
@example(argv=["--logdir", "a\x00b"])
@example(argv=["--dataset", "a\x00b.csv"])
@example(argv=["--resume", "a\x00b"])
@example(argv=["--run-name", "\udcff"])
@example(argv=["--dataset", "x\udcfe.csv"])
@example(argv=["--threads", "99999999999999999999"])
@example(argv=["--hidden", "9" * 30])
@example(argv=["--batch-size", "9" * 30])
@example(argv=["--lr", "1e30", "--optimizer", "sgd"])
@example(argv=["--val-fraction", "1e-300"])
@example(argv=["--val-fraction", "0.9999999"])
@example(argv=["--dataset", "/dev/null"])
@example(argv=["--dataset", "/"])
@example(argv=["--hel"])
@example(argv=["--epochs=2432902008176640001"])  # found by the hang guard: sanitize missed the = form
@example(argv=["--resume="])  # was silently ignored: a new run started in ./runs
@example(argv=["--resume", ""])
def test_command_line_fuzz(scratch, argv):
    base = ["--dataset", "iris", "--hidden", "4", "--epochs", "1", "--batch-size", "64", "--threads", "1",
            "--device", "cpu", "--quiet"]  # fmt: skip
    # writes stay in the scratch folder: the working directory (for relative paths), and
    # --logdir last (it overrides a fuzzed one; not with --resume, which refuses --logdir)
    tail = [] if any(token.startswith("--resume") for token in argv) else ["--logdir", str(scratch / "runs")]
    threads = torch.get_num_threads()
    try:
        with contextlib.chdir(scratch):
            code, out, err = run_main([*base, *sanitize(argv), *tail])
    finally:
        torch.set_num_threads(threads)
    check_outcome(code, out, err)


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    rows=tables(max_rows=12),
    valid_rows=st.integers(0, 40),
)
def test_command_line_with_fuzzed_csv(scratch, rows, valid_rows):
    """A fuzzed CSV through the whole program: trains (exit 0) or one error line (exit 2)."""
    rng = np.random.default_rng(valid_rows)
    good = [f"{i % 2},{rng.standard_normal():.4f},{rng.standard_normal():.4f}" for i in range(valid_rows)]
    path = fresh_file(scratch, "\n".join(good + rows).encode())
    argv = ["--dataset", str(path), "--hidden", "4", "--epochs", "1", "--threads", "1", "--device", "cpu",
            "--quiet", "--logdir", str(scratch / "runs")]  # fmt: skip
    check_outcome(*run_main(argv))


def test_features_too_large_to_standardize_are_refused(scratch):
    """Finite values whose squares overflow: numpy warned, the standardized features were
    NaN and the run 'diverged'; now one line names the column."""
    rows = "".join(f"{i % 2},{(-1) ** i * 1.5e308!r},{i}\n" for i in range(20))
    argv = ["--dataset", str(fresh_file(scratch, rows.encode())), "--hidden", "4", "--epochs", "1", "--threads", "1",
            "--device", "cpu", "--quiet", "--logdir", str(scratch / "runs")]  # fmt: skip
    code, out, err = run_main(argv)
    check_outcome(code, out, err)
    assert code == 2 and "feature 1 (in a CSV file, column 2) has values too large to standardize" in err, err


def test_a_feature_overflowing_float32_only_in_validation_is_refused(scratch):
    """Training values near 1, one validation value of 1e300: its z-score is no float32."""
    rows = "".join(f"{i % 2},{1e300 if i == 0 else (i % 7) / 7!r}\n" for i in range(40))
    argv = ["--dataset", str(fresh_file(scratch, rows.encode())), "--hidden", "4", "--epochs", "1", "--threads", "1",
            "--device", "cpu", "--quiet", "--logdir", str(scratch / "runs")]  # fmt: skip
    for seed in range(6):  # seeds that put the large value in the validation set, and in the training set
        code, out, err = run_main([*argv, "--seed", str(seed)])
        check_outcome(code, out, err)
        assert code == 2 and "column 2) has values too large to standardize (up to 1e+300)" in err, err


def test_sanitize_bounds_both_spellings():
    assert sanitize(["--epochs=99", "--epochs", "99", "--hidden", "64,8", "--threads=4", "--epochs", "x"]) == [
        "--epochs=2", "--epochs", "2", "--hidden", "16", "--threads=1", "--epochs", "x"]  # fmt: skip


def test_the_checks_can_fail():
    """check_outcome refuses a traceback, two lines and an unexpected exit status."""
    with pytest.raises(AssertionError):
        check_outcome(1, "", "Traceback (most recent call last):\n")
    with pytest.raises(AssertionError):
        check_outcome(2, "", "error: one\nerror: two\n")
    with pytest.raises(AssertionError):
        check_outcome(2, "", "")
    check_outcome(2, "", "error: fine\n")

