"""The one interface every black box implements.

An oracle answers *one request*: a batch of at most ``max_images_per_request`` RGB images
(float32, N×H×W×3, values in [0, 1]) becomes an N×K matrix of probabilities over the oracle's
source labels, in the stable order of ``labels``. Splitting work into requests, concurrency,
rate limiting, retries and accounting belong to ``adapters.dispatch``; an adapter only
translates one request into its provider's protocol and the provider's errors into
``adapters.errors``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Answer:
    """One request's answer: a probability row per image sent, and the provider's id."""

    probs: np.ndarray  # N×K float64, rows in the order of the request's images
    request_id: str | None = None


class Oracle(ABC):
    """A classifier we may only query."""

    #: provider name used for prices, rate limits and the ledger: "torch", "clarifai", ...
    provider: str = "unknown"
    #: how many images one request may carry
    max_images_per_request: int = 1
    #: how many requests may usefully be in flight at once
    max_concurrency: int = 1

    @property
    @abstractmethod
    def labels(self) -> tuple[str, ...]:
        """Source-label names; column j of every answer is ``labels[j]``."""

    @property
    def labels_known(self) -> bool:
        """False while the label order is still to be learned from a first answer (providers
        with no label listing); ``labels`` is valid once this is True."""
        return True

    @abstractmethod
    def predict(self, images: np.ndarray) -> Answer:
        """Answer one request; raise an ``adapters.errors.OracleError`` subclass on failure."""

    def encode(self, images: np.ndarray) -> object:
        """What a request of ``images`` will carry, prepared before it waits for its budget
        hold and rate-limit slot (a cloud oracle's PNG bytes), so that a slot is spent
        sending, not encoding. Default: nothing to prepare."""
        return None

    def predict_encoded(self, images: np.ndarray, encoded: object) -> Answer:
        """``predict`` of ``images`` whose ``encode`` is done."""
        return self.predict(images)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and threads."""

    def __enter__(self) -> Oracle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class GradientOracle(Oracle):
    """An oracle that can also differentiate (the local torch model only). Used solely by the
    white-box AR baseline; black-box estimators never call it."""

    @abstractmethod
    def predict_with_input_grad(
        self, images: np.ndarray, loss_grad: Callable[[np.ndarray], tuple[float, np.ndarray]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return (probabilities, ∂loss/∂images) where ``loss_grad`` maps the probabilities to
        (loss, ∂loss/∂probabilities)."""


def validate_images(images: np.ndarray, limit: int) -> np.ndarray:
    """Check a request's images and return them as float32."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected N×H×W×3 images, got shape {images.shape}")
    if len(images) > limit:
        raise ValueError(f"{len(images)} images exceed the request limit of {limit}")
    return images.astype(np.float32, copy=False)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[0, 1] floats to 8-bit pixels, rounding to nearest: what an encoded image carries."""
    return np.clip(np.rint(np.asarray(images) * 255.0), 0, 255).astype(np.uint8)
