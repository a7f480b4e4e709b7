"""The additive input program of adversarial reprogramming.

A target image x (already resized to ``target_size``) sits in the centre of a zero frame of
``input_size``²; the source model sees X̃ = clip(Pad(x) + P, 0, 1) with P = tanh(W ⊙ M)
(Tsai et al. 2020, eq. 1), where M is 0 over the embedded image and 1 elsewhere.

W is parameterised by coefficients Z of shape (3, r, r) through a fixed linear basis A (S×r),
W_c = A Z_c Aᵀ for each colour channel c:

* ``pixel``: A = I (r = S), the paper's full-resolution program;
* ``bilinear``: A upsamples an r×r grid bilinearly to the frame (AutoZOOM-style);
* ``dct``: A holds the r lowest-frequency DCT-II basis vectors (a low-frequency program).

All images are float arrays in HWC layout with values in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np

Basis = Literal["pixel", "bilinear", "dct"]


def bilinear_matrix(size: int, resolution: int) -> np.ndarray:
    """Matrix A (size×resolution) with A @ v = bilinear upsampling of v (half-pixel centres,
    the convention of ``torch.nn.functional.interpolate(align_corners=False)``)."""
    a = np.zeros((size, resolution))
    scale = resolution / size
    for i in range(size):
        src = max((i + 0.5) * scale - 0.5, 0.0)
        lo = min(int(np.floor(src)), resolution - 1)
        hi = min(lo + 1, resolution - 1)
        frac = src - lo
        a[i, lo] += 1.0 - frac
        a[i, hi] += frac
    return a


def dct_matrix(size: int, resolution: int) -> np.ndarray:
    """Matrix A (size×resolution) of the lowest ``resolution`` DCT-II basis vectors, scaled by
    sqrt(size/resolution) so that i.i.d. coefficients give pixel values of the same spread."""
    n = np.arange(size)[:, None]
    k = np.arange(resolution)[None, :]
    a = np.cos(np.pi * (n + 0.5) * k / size) * np.sqrt(2.0 / size)
    a[:, 0] /= np.sqrt(2.0)
    return a * np.sqrt(size / resolution)


@dataclass(frozen=True)
class Program:
    """Geometry and parameterisation of a program; holds no learned values."""

    input_size: int
    target_size: int
    basis: Basis = "pixel"
    resolution: int | None = None  # r; None means input_size (only meaningful for "pixel")

    def __post_init__(self) -> None:
        """Refuse a geometry that does not fit."""
        if not 0 < self.target_size <= self.input_size:
            raise ValueError("target_size must be in (0, input_size]")
        if self.basis == "pixel" and self.resolution not in (None, self.input_size):
            raise ValueError("the pixel basis has resolution == input_size")
        if not 0 < self.r <= self.input_size:
            raise ValueError("resolution must be in (0, input_size]")

    @property
    def r(self) -> int:
        """The coefficient grid's side r."""
        return self.input_size if self.resolution is None else self.resolution

    @property
    def dim(self) -> int:
        """Number of trainable coefficients d."""
        return 3 * self.r * self.r

    @property
    def offset(self) -> int:
        """Row (and column) of the frame where the target image starts."""
        return (self.input_size - self.target_size) // 2

    @cached_property
    def mask(self) -> np.ndarray:
        """M (S×S×3): 1 where the program applies, 0 over the embedded target image."""
        m = np.ones((self.input_size, self.input_size, 3), dtype=np.float32)
        o, t = self.offset, self.target_size
        m[o : o + t, o : o + t, :] = 0.0
        return m

    @cached_property
    def _a(self) -> np.ndarray | None:
        if self.basis == "pixel":
            return None
        if self.basis == "bilinear":
            return bilinear_matrix(self.input_size, self.r)
        return dct_matrix(self.input_size, self.r)

    def weights(self, theta: np.ndarray) -> np.ndarray:
        """W (S×S×3) from the flat coefficient vector θ (length d)."""
        z = np.asarray(theta, dtype=np.float64).reshape(3, self.r, self.r)
        if self._a is None:
            return z.transpose(1, 2, 0)
        return np.einsum("ai,cij,bj->abc", self._a, z, self._a, optimize=True)

    def perturbation(self, theta: np.ndarray) -> np.ndarray:
        """P = tanh(W ⊙ M) as float32 S×S×3."""
        return (np.tanh(self.weights(theta)) * self.mask).astype(np.float32)

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Pad(x): place N×t×t×3 target images in the centre of zero N×S×S×3 frames."""
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1:] != (self.target_size, self.target_size, 3):
            raise ValueError(
                f"expected N×{self.target_size}×{self.target_size}×3 images, got {images.shape}"
            )
        out = np.zeros((len(images), self.input_size, self.input_size, 3), dtype=np.float32)
        o, t = self.offset, self.target_size
        out[:, o : o + t, o : o + t, :] = images
        return out

    def apply(self, frames: np.ndarray, theta: np.ndarray) -> np.ndarray:
        """X̃ = clip(frames + P, 0, 1) for embedded frames (N×S×S×3); returns a new array."""
        return np.clip(frames + self.perturbation(theta)[None], 0.0, 1.0)

    def backprop(
        self, frames: np.ndarray, theta: np.ndarray, grad_inputs: np.ndarray
    ) -> np.ndarray:
        """∂L/∂θ given ∂L/∂X̃ (N×S×S×3) for the same frames: the exact adjoint of ``apply``,
        used only by the white-box baseline."""
        w = self.weights(theta)
        p = np.tanh(w) * self.mask
        pre = frames.astype(np.float64) + p[None]
        passes = (pre >= 0.0) & (pre <= 1.0)  # as torch.clamp: the bounds themselves pass
        g_p = (np.asarray(grad_inputs, dtype=np.float64) * passes).sum(axis=0) * self.mask
        g_w = g_p * (1.0 - np.tanh(w) ** 2)
        if self._a is None:
            return g_w.transpose(2, 0, 1).ravel()
        return np.einsum("ai,abc,bj->cij", self._a, g_w, self._a, optimize=True).ravel()
