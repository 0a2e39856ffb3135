"""The bundled datasets and the train/validation split, read and drawn without importing
scikit-learn, against scikit-learn's own loaders and train_test_split."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import sklearn.datasets
from sklearn.model_selection import train_test_split

from helpers import subprocess_env
from training import data
from training.data import SKLEARN_DATASETS, load_sklearn, stratified_split


@pytest.mark.parametrize("name", SKLEARN_DATASETS)
@pytest.mark.parametrize("read", ["from the file", "through scikit-learn"])
def test_bundled_datasets_equal_sklearns_loaders(name, read, monkeypatch):
    if read == "through scikit-learn":  # what a scikit-learn that moved its files gets
        monkeypatch.setattr(data, "_sklearn_data_file", lambda name: None)
    features, labels = getattr(sklearn.datasets, f"load_{name}")(return_X_y=True)
    dataset = load_sklearn(name)
    assert dataset.features.dtype == np.float64 and np.array_equal(dataset.features, features)
    assert np.array_equal(dataset.labels, np.unique(labels, return_inverse=True)[1])


def _labels(counts: list[int], seed: int) -> np.ndarray:
    labels = np.repeat(np.arange(len(counts)) * 3 + 1, counts)  # classes 1, 4, 7...: not 0..K-1
    return np.random.default_rng(seed).permutation(labels)


CASES = [
    ([5, 5], 0.2),
    ([50, 50, 50], 0.26),  # iris
    ([178, 182, 177, 183, 181, 182, 181, 179, 174, 180], 0.2),  # digits
    ([212, 357], 0.2),  # breast cancer
    ([2, 2, 2, 2], 0.5),
    ([3, 7, 11, 2], 0.3),  # remainders that tie, broken at random
    ([100, 3, 3], 0.1),
    ([13, 17, 19, 23], 0.33),
    ([40, 40, 41], 0.9),
]


@pytest.mark.parametrize("counts,val_fraction", CASES)
@pytest.mark.parametrize("seed", [0, 1, 7, 42, 2**32 - 1])
def test_split_equals_sklearns_train_test_split(counts, val_fraction, seed):
    # runs and checkpoints made when train.py called scikit-learn keep their split
    labels = _labels(counts, seed % 1000)
    train, val = stratified_split(labels, val_fraction, seed)
    sk_train, sk_val = train_test_split(
        np.arange(len(labels)), test_size=val_fraction, stratify=labels, random_state=seed, shuffle=True
    )
    assert np.array_equal(train, sk_train) and np.array_equal(val, sk_val)


@pytest.mark.parametrize(
    "counts,val_fraction,message",
    [
        ([5, 1, 5], 0.3, "1 of the 3 classes has only 1 sample"),
        ([1, 4, 1], 0.3, "2 of the 3 classes have only 1 sample"),
        ([3, 3, 3], 0.1, "validation set would have 1 samples, fewer than the 3 classes"),
        ([3, 3, 3], 0.85, "training set would have 1 samples"),
        ([3, 3], 0.9999999, "training set would be empty"),
        ([3, 3], 1e-300, "validation set would have 1 samples"),
    ],
)
def test_split_refuses_what_sklearn_refuses(counts, val_fraction, message):
    labels = _labels(counts, 0)
    with pytest.raises(ValueError):
        train_test_split(np.arange(len(labels)), test_size=val_fraction, stratify=labels, random_state=0)
    with pytest.raises(ValueError, match=message):
        stratified_split(labels, val_fraction, 0)


def test_train_py_reads_and_splits_digits_without_importing_sklearn():
    code = (
        "import sys; from training.data import load_dataset, split_and_standardize; "
        "split = split_and_standardize(load_dataset('digits'), 0.2, 0); "
        "print(len(split.y_train), len(split.y_val), 'sklearn' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(),
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1437", "360", "False"]
