"""The opinion behind the fake cloud APIs: the bundled ImageNet model, folded into the fake
model's concepts, so that reprogramming through a fake really learns something.

``FakeModel(view).probs(images)`` takes decoded 8-bit RGB images (any sizes) and returns an
N×k matrix over ``FakeModel.labels``. ``view`` is a concept view of
``adapters.label_groups`` ("nsfw", "moderation"), or None for all 1,000 ImageNet classes.
``CheapModel`` has the same interface without the network, for benchmarks that measure the
client; ``make_model(view, kind)`` picks one by name.
"""

from __future__ import annotations

import argparse
import threading
import zlib
from typing import TYPE_CHECKING, Literal

import numpy as np

from adapters.label_groups import fold, fold_matrix, imagenet_labels

if TYPE_CHECKING:
    from adapters.torch_local import TorchOracle

ModelKind = Literal["network", "cheap"]
MODEL_KINDS: tuple[ModelKind, ...] = ("network", "cheap")


def add_model_option(parser: argparse.ArgumentParser) -> None:
    """``--model``, a fake's command-line choice of ``ModelKind``."""
    parser.add_argument(
        "--model",
        choices=MODEL_KINDS,
        default="network",
        help="the fake's opinion: the bundled network, or cheap for benchmarks",
    )


def _labels(view: str | None) -> tuple[str, ...]:
    return imagenet_labels() if view is None else fold_matrix(view)[0]


class FakeModel:
    def __init__(self, view: str | None = None, threads: int | None = None) -> None:
        self.view = view
        self._oracles: dict[int, TorchOracle] = {}
        self._threads = threads
        self._lock = threading.Lock()
        self.labels = _labels(view)

    def _oracle(self, size: int) -> TorchOracle:
        # Imported here: a fake with the cheap model (benchmarks) never pays torch's import.
        from adapters.torch_local import TorchOracle

        with self._lock:
            if size not in self._oracles:
                self._oracles[size] = TorchOracle(input_size=size, threads=self._threads)
            return self._oracles[size]

    def probs(self, images: list[np.ndarray]) -> np.ndarray:
        """Probabilities (N×k) for decoded uint8 H×W×3 images; square sizes are batched."""
        out = np.zeros((len(images), len(self.labels)))
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, img in enumerate(images):
            by_shape.setdefault(img.shape, []).append(i)
        for shape, idx in by_shape.items():
            h, w = shape[:2]
            batch = np.stack([images[i] for i in idx]).astype(np.float32) / 255.0
            if h != w:  # the real services resize too; a centre crop keeps it simple
                s = min(h, w)
                top, left = (h - s) // 2, (w - s) // 2
                batch = batch[:, top : top + s, left : left + s]
            oracle = self._oracle(batch.shape[1])
            for start in range(0, len(idx), oracle.max_images_per_request):
                chunk = batch[start : start + oracle.max_images_per_request]
                p = oracle.predict(chunk).probs
                rows = idx[start : start + len(chunk)]
                # Real providers never answer outside [0, 1]; float32 sums can, by an ulp.
                out[rows] = np.clip(p if self.view is None else fold(p, self.view), 0.0, 1.0)
        return out


class CheapModel:
    """An opinion that costs microseconds per image: a softmax over a fixed random projection
    of each image's mean colour. Deterministic, and different for differently coloured
    images, so tests can still tell whose answer is whose; no torch."""

    def __init__(self, view: str | None = None) -> None:
        self.view = view
        self.labels = _labels(view)
        rng = np.random.default_rng(zlib.crc32(str(view).encode()))
        self._weights = rng.normal(scale=4.0, size=(3, len(self.labels)))

    def probs(self, images: list[np.ndarray]) -> np.ndarray:
        """Probabilities (N×k) for decoded uint8 H×W×3 images."""
        if not images:
            return np.zeros((0, len(self.labels)))
        means = np.stack(
            [np.asarray(img, np.float64).reshape(-1, 3).mean(axis=0) for img in images]
        )
        logits = (means / 255.0 - 0.5) @ self._weights
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))
        return weights / weights.sum(axis=1, keepdims=True)


def make_model(view: str | None, kind: ModelKind = "network") -> FakeModel | CheapModel:
    """The opinion of a fake: the bundled network ("network") or ``CheapModel`` ("cheap")."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"model is one of {MODEL_KINDS}, not {kind!r}")
    return FakeModel(view) if kind == "network" else CheapModel(view)
