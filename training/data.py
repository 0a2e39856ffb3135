"""Datasets: scikit-learn's bundled sets, CSV files, MNIST's IDX files; the split into
train and validation sets and feature standardization.

Every loader returns a `Dataset` (features, integer class indices 0..K-1); bad files
raise `UserError` with the file, line and column at fault.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError

SKLEARN_DATASETS = ("digits", "breast_cancer", "iris", "wine")
BUILTIN_DATASETS = (*SKLEARN_DATASETS, "mnist")


@dataclass
class Dataset:
    name: str
    features: np.ndarray  # (N, D) floats (float32 for MNIST, to halve its memory)
    labels: np.ndarray  # (N,) int64, class indices 0..K-1
    class_names: list[str]  # class index -> the label as the source wrote it

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_features(self) -> int:
        return self.features.shape[1]

    def fingerprint(self) -> str:
        """A hash of the data, stored in checkpoints: a resumed run must see the same data."""
        digest = hashlib.sha256(f"{self.features.dtype.str}{self.features.shape}".encode())
        digest.update(np.ascontiguousarray(self.features).tobytes())
        digest.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        return digest.hexdigest()


@dataclass
class Split:
    """Train and validation sets, standardized with the training set's statistics."""

    x_train: np.ndarray  # float32
    y_train: np.ndarray  # int64
    x_val: np.ndarray
    y_val: np.ndarray
    mean: np.ndarray  # per-feature statistics of the training set
    std: np.ndarray


def load_dataset(spec: str, data_dir: str | os.PathLike[str] = "data") -> Dataset:
    """`spec` is a bundled dataset's name, 'mnist' (IDX files in data_dir) or a CSV path."""
    if spec in SKLEARN_DATASETS:
        return load_sklearn(spec)
    if spec == "mnist":
        return load_mnist(data_dir)
    if spec.lower().endswith(".csv") or os.sep in spec or "/" in spec or os.path.exists(spec):
        return read_csv(spec)
    raise UserError(f"unknown dataset {spec!r}: use one of {', '.join(BUILTIN_DATASETS)}, or the path to a CSV file")


# the files scikit-learn ships in sklearn/datasets/data/ (its loaders read the same ones)
SKLEARN_FILES = {"digits": "digits.csv.gz", "breast_cancer": "breast_cancer.csv", "iris": "iris.csv",
                 "wine": "wine_data.csv"}  # fmt: skip


def load_sklearn(name: str) -> Dataset:
    """One of scikit-learn's bundled datasets (shipped with the package: no download).

    Read straight from the package's data files, as `sklearn.datasets.load_<name>` reads
    them, without importing scikit-learn: that import (scipy with it) took 0.85 s of a
    3.4 s `python train.py` here. Should a scikit-learn release move the files, its own
    loader is used. tests/test_data.py checks both ways give the same arrays."""
    path = _sklearn_data_file(name)
    if path is None:
        import sklearn.datasets

        features, labels = getattr(sklearn.datasets, f"load_{name}")(return_X_y=True)
    else:
        # digits.csv.gz: 64 pixels then the label a row; the others start with a header
        # row (sample count, feature count, class names), then features and the label
        with gzip.open(path, "rt") if path.suffix == ".gz" else open(path) as rows:
            table = np.loadtxt(rows, delimiter=",", skiprows=0 if name == "digits" else 1, dtype=np.float64)
        features, labels = table[:, :-1], table[:, -1].astype(np.int64)
    return _from_labels(name, np.asarray(features, dtype=np.float64), np.asarray(labels))


def _sklearn_data_file(name: str) -> Path | None:
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / SKLEARN_FILES[name]
    return path if path.is_file() else None


def _from_labels(name: str, features: np.ndarray, raw_labels: np.ndarray) -> Dataset:
    """Map whatever integer labels the source uses (e.g. -1/1, or 3, 5, 7) to 0..K-1."""
    classes, labels = np.unique(raw_labels, return_inverse=True)
    if len(classes) < 2:
        only = classes[0] if len(classes) else "none"
        raise UserError(f"{name}: every sample has the same label ({only}); a classifier needs at least 2 classes")
    return Dataset(name, features, labels.astype(np.int64).reshape(-1), [str(int(c)) for c in classes])


# ------------------------------------------------------------------------------ CSV


MAX_LABEL = 2**53  # labels are read as float64, exact for integers below this


def _show(cell: str, limit: int = 40) -> str:
    """A cell for an error message: quoted, escaped (one line, whatever it holds), shortened."""
    cell = cell.strip()
    return repr(cell if len(cell) <= limit else cell[:limit] + "...")


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def read_csv(path: str | os.PathLike[str]) -> Dataset:
    """A CSV file, one sample a line: the label (an integer) first, then numeric features.

    The first line is a header, and skipped, when its first cell is not a number.
    Blank lines are skipped. Everything else must be finite numbers, every row as long
    as the first.
    """
    path = Path(path)
    where = str(path)
    if not path.exists():
        raise UserError(f"CSV file {where} not found: check the path given to --dataset")
    if not path.is_file():
        raise UserError(f"{where} is not a file: --dataset takes a CSV file's path")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{where} is not a text CSV file (it is not valid UTF-8)") from None
    except OSError as e:
        raise UserError(f"cannot read {where}: {e.strerror}") from None

    # (line number, line) of every non-blank line, numbered as an editor shows them
    lines = [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise UserError(f"{where} is empty: expected one sample per line, the label first")
    if not _is_number(lines[0][1].split(",")[0]):
        lines = lines[1:]  # a header row
        if not lines:
            raise UserError(f"{where} has a header but no data rows")

    try:
        table = np.loadtxt([line for _, line in lines], delimiter=",", dtype=np.float64, ndmin=2, comments=None)
    except ValueError as e:
        # loadtxt's message does not name the file's own line numbers: find the fault ourselves
        raise UserError(_describe_csv_fault(where, lines) or f"{where} is not a valid CSV file: {e}") from None

    if table.shape[1] < 2:
        raise UserError(f"{where} has a single column: expected the label, then at least one feature per line")
    bad_rows, bad_cols = np.nonzero(~np.isfinite(table))
    if len(bad_rows):
        row, col = bad_rows[0], bad_cols[0]
        raise UserError(
            f"{where} line {lines[row][0]}, column {col + 1}: {table[row, col]} is not a finite number "
            "(remove or fill in missing values)"
        )
    raw_labels = table[:, 0]
    not_integer = np.nonzero(raw_labels != np.round(raw_labels))[0]
    if len(not_integer):
        row = not_integer[0]
        raise UserError(
            f"{where} line {lines[row][0]}: label {raw_labels[row]:g} is not an integer "
            "(the first column must hold integer class labels)"
        )
    # beyond 2**53 float64 has gaps between integers: two labels could read as one
    too_large = np.nonzero(np.abs(raw_labels) >= MAX_LABEL)[0]
    if len(too_large):
        row = too_large[0]
        raise UserError(
            f"{where} line {lines[row][0]}: label {_show(lines[row][1].split(',')[0])} is too large "
            f"(class labels must be integers of magnitude below 2**53 = {MAX_LABEL})"
        )
    return _from_labels(where, table[:, 1:], raw_labels.astype(np.int64))


def _describe_csv_fault(where: str, lines: list[tuple[int, str]]) -> str | None:
    width = None
    for number, line in lines:
        cells = line.split(",")
        if width is None:
            width = len(cells)
        elif len(cells) != width:
            return (
                f"{where} line {number} has {len(cells)} columns, but the first row has {width}: "
                "every row needs the same number"
            )
        for column, cell in enumerate(cells, 1):
            if not cell.strip():
                return f"{where} line {number}, column {column} is empty: every cell must hold a number"
            if not _is_number(cell) and column == 1:
                return (
                    f"{where} line {number}: label {_show(cell)} is not an integer "
                    "(the first column must hold integer class labels)"
                )
            if not _is_number(cell):
                return f"{where} line {number}, column {column}: {_show(cell)} is not a number"
    return None


# ------------------------------------------------------------------------------ IDX / MNIST

# IDX type codes (third byte of the magic number) -> big-endian numpy dtypes
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """An array from an IDX file (MNIST's format), gzipped or not: magic number
    0x00 0x00 <type> <ndim>, then ndim big-endian uint32 sizes, then the data."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # gzip's magic number, whatever the file is called
            raw = gzip.decompress(raw)
    except OSError as e:  # includes gzip.BadGzipFile
        raise UserError(f"cannot read IDX file {path}: {e.strerror or e}") from None
    except EOFError:
        raise UserError(f"IDX file {path} is truncated (its gzip stream ends early)") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise UserError(f"{path} is not an IDX file (bad magic number)")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"IDX file {path} is truncated (its header is incomplete)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) - header != expected:
        raise UserError(f"IDX file {path} holds {len(raw) - header} data bytes, but its header promises {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


MNIST_FILES = {"images": "train-images-idx3-ubyte", "labels": "train-labels-idx1-ubyte"}


def _find_mnist_file(data_dir: Path, stem: str) -> Path | None:
    # the names as published (gzipped or not), a variant some mirrors use
    # (train-images.idx3-ubyte), and torchvision's layout (MNIST/raw/)
    dotted = stem.replace("-idx", ".idx")
    for folder in (data_dir, data_dir / "MNIST" / "raw", data_dir / "mnist"):
        for name in (stem, f"{stem}.gz", dotted, f"{dotted}.gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def load_mnist(data_dir: str | os.PathLike[str]) -> Dataset:
    """MNIST's 60,000 training images (28×28 pixels -> 784 features) from the IDX files
    in data_dir; train.py splits them into train and validation sets like any dataset."""
    data_dir = Path(data_dir)
    found = {kind: _find_mnist_file(data_dir, stem) for kind, stem in MNIST_FILES.items()}
    missing = [f"{MNIST_FILES[kind]}.gz" for kind, path in found.items() if path is None]
    if missing:
        raise UserError(
            f"MNIST files not found in {data_dir}/: put {' and '.join(missing)} (gzipped or not, from the MNIST "
            "distribution) there, or point --data-dir at the folder that holds them"
        )
    images, labels = read_idx(found["images"]), read_idx(found["labels"])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(
            f"MNIST files in {data_dir} do not match: images of shape {images.shape}, labels of shape {labels.shape}"
        )
    return _from_labels("mnist", images.reshape(len(images), -1).astype(np.float32), labels.astype(np.int64))


# ------------------------------------------------------------------------------ split


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices, each class in both in proportion to its size.

    The same indices as scikit-learn's `train_test_split(arange(n), test_size=val_fraction,
    stratify=labels, random_state=seed)` (its StratifiedShuffleSplit, step by step, with
    the same random draws): runs and checkpoints made when train.py called it keep their
    split, without importing scikit-learn (0.8 s here). tests/test_data.py compares the
    two on many label sets, fractions and seeds. Raises ValueError when a class has one
    sample or either set would have fewer samples than there are classes."""
    n_samples = len(labels)
    n_val = math.ceil(val_fraction * n_samples)
    n_train = n_samples - n_val
    if n_train <= 0:
        raise ValueError(f"the training set would be empty ({n_samples} samples)")
    classes, class_of, class_counts = np.unique(labels, return_inverse=True, return_counts=True)
    if class_counts.min() < 2:
        lonely = int((class_counts < 2).sum())
        raise ValueError(f"{lonely} of the {len(classes)} classes {'has' if lonely == 1 else 'have'} only 1 sample; "
                         "each class needs at least 2")  # fmt: skip
    for name, size in (("training", n_train), ("validation", n_val)):
        if size < len(classes):
            raise ValueError(f"the {name} set would have {size} samples, fewer than the {len(classes)} classes")
    by_class = np.split(np.argsort(class_of, kind="stable"), np.cumsum(class_counts)[:-1])
    rng = np.random.RandomState(seed)
    train_counts = _approximate_mode(class_counts, n_train, rng)
    val_counts = _approximate_mode(class_counts - train_counts, n_val, rng)
    train, val = [], []
    for members, n_t, n_v in zip(by_class, train_counts, val_counts):
        shuffled = members.take(rng.permutation(len(members)), mode="clip")
        train.extend(shuffled[:n_t])
        val.extend(shuffled[n_t : n_t + n_v])
    return rng.permutation(train), rng.permutation(val)


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """How many of n_draws samples to take from each class: each class's share rounded
    down, then one more for the classes with the largest remainders (ties drawn at
    random), until n_draws are taken (scikit-learn's `_approximate_mode`)."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (tied,) = np.where(remainder == value)
            add_now = min(len(tied), need_to_add)
            floored[rng.choice(tied, size=add_now, replace=False)] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)


def split_and_standardize(dataset: Dataset, val_fraction: float, seed: int) -> Split:
    """A stratified train/validation split drawn with `seed` (the same seed, the same
    split), then z-scores with the training set's mean and std only, so nothing about
    the validation set leaks into training."""
    try:
        train_idx, val_idx = stratified_split(dataset.labels, val_fraction, seed)
    except ValueError as e:
        raise UserError(
            f"cannot split {dataset.name} ({len(dataset.labels)} samples, {dataset.num_classes} classes) into train "
            f"and validation sets with --val-fraction {val_fraction}: {e}"
        ) from None
    x_train, x_val = dataset.features[train_idx], dataset.features[val_idx]
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is checked below, with a message
        mean = x_train.mean(axis=0)
        std = x_train.std(axis=0)
        std[std < 1e-12] = 1.0  # a constant feature (e.g. a border pixel): leave it at 0, don't divide by 0
        z_train, z_val = (((x - mean) / std).astype(np.float32) for x in (x_train, x_val))
    # values so large that their squares overflow (std), or whose z-scores pass float32's
    # 3.4e38: refused here, or they would reach training as inf and NaN
    finite = np.isfinite(mean) & np.isfinite(std) & np.isfinite(z_train).all(axis=0) & np.isfinite(z_val).all(axis=0)
    overflowed = np.nonzero(~finite)[0]
    if len(overflowed):
        column = overflowed[0]
        largest = max(np.abs(dataset.features[:, column]).max(), 0.0)
        raise UserError(
            f"{dataset.name}: feature {column + 1} (in a CSV file, column {column + 2}) has values too large to "
            f"standardize (up to {largest:.3g}): rescale the data"
        )
    return Split(
        x_train=z_train,
        y_train=dataset.labels[train_idx],
        x_val=z_val,
        y_val=dataset.labels[val_idx],
        mean=mean,
        std=std,
    )
