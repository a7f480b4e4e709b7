"""The opinion behind the fake cloud APIs: the bundled ImageNet model, folded into the fake
model's concepts, so that reprogramming through a fake really learns something.

``FakeModel(view).probs(images)`` takes decoded 8-bit RGB images (any sizes) and returns an
N×k matrix over ``FakeModel.labels``. ``view`` is a concept view of
``adapters.label_groups`` ("nsfw", "moderation"), or None for all 1,000 ImageNet classes.
"""

from __future__ import annotations

import threading

import numpy as np

from adapters.label_groups import fold, imagenet_labels
from adapters.torch_local import TorchOracle


class FakeModel:
    def __init__(self, view: str | None = None, threads: int | None = None) -> None:
        self.view = view
        self._oracles: dict[int, TorchOracle] = {}
        self._threads = threads
        self._lock = threading.Lock()
        if view is None:
            self.labels: tuple[str, ...] = imagenet_labels()
        else:
            from adapters.label_groups import fold_matrix

            self.labels = fold_matrix(view)[0]

    def _oracle(self, size: int) -> TorchOracle:
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
                out[rows] = p if self.view is None else fold(p, self.view)
        return out
