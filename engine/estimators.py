"""Zeroth-order gradient estimators with an ask/tell interface.

``ask(theta, rng)`` returns the K candidate points whose losses the estimator needs (a new
array; ``theta`` is not touched); ``tell(losses)`` turns the K losses into a gradient
estimate. The public methods do the bookkeeping; an estimator implements ``_perturb`` and
``_combine`` only (the nevergrad pattern). ``ESTIMATORS`` maps names to classes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from engine.registry import Registry

ESTIMATORS: Registry[Estimator] = Registry()
register = ESTIMATORS.register


def unit_sphere(rng: np.random.Generator, q: int, dim: int) -> np.ndarray:
    """q directions uniform on the unit sphere in ℝ^dim (Gaussian draws, normalised)."""
    u = rng.standard_normal((q, dim))
    return u / np.linalg.norm(u, axis=1, keepdims=True)


class Estimator(ABC):
    """Estimates ∇f(θ) from f at the candidate points it asks for."""

    name: ClassVar[str]

    def __init__(self, dim: int, q: int, beta: float, scale: float | None = None) -> None:
        """q directions of radius β in ℝ^dim; ``scale`` is the b of the sphere estimates."""
        if dim < 1 or q < 1 or beta <= 0:
            raise ValueError("dim, q and beta must be positive")
        self.dim, self.q, self.beta = dim, q, beta
        self.scale = float(dim) if scale is None else float(scale)
        self._pending: np.ndarray | None = None

    @property
    @abstractmethod
    def n_candidates(self) -> int:
        """K, the number of points asked per iteration."""

    @property
    def center_index(self) -> int | None:
        """Index of the unperturbed θ among the candidates, if it is one of them."""
        return None

    def ask(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The K×d candidate points around θ whose losses ``tell`` needs next."""
        theta = np.asarray(theta, dtype=np.float64)
        if theta.shape != (self.dim,):
            raise ValueError(f"theta must have shape ({self.dim},)")
        directions = self._directions(rng)
        self._pending = directions
        return theta[None, :] + self._offsets(directions)

    def tell(self, losses: np.ndarray) -> np.ndarray:
        """The gradient estimate from the losses at the last ask's candidates, in order."""
        if self._pending is None:
            raise RuntimeError("tell() without a matching ask()")
        losses = np.array(losses, dtype=np.float64)  # a copy: the caller's array stays as is
        if losses.shape != (self.n_candidates,):
            raise ValueError(f"expected {self.n_candidates} losses, got {losses.shape}")
        directions, self._pending = self._pending, None
        return self._combine(directions, losses)

    @abstractmethod
    def _directions(self, rng: np.random.Generator) -> np.ndarray: ...

    @abstractmethod
    def _offsets(self, directions: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _combine(self, directions: np.ndarray, losses: np.ndarray) -> np.ndarray: ...


@register
class BarEstimator(Estimator):
    """The paper's one-sided random gradient estimate (Tsai et al. 2020, eq. 5):
    g = (b/q) Σ_j [f(θ + βU_j) − f(θ)]/β · U_j with U_j uniform on the unit sphere and one
    shared f(θ), so an iteration costs q + 1 evaluations. b defaults to d."""

    name = "bar"

    @property
    def n_candidates(self) -> int:
        """θ itself, then q one-sided perturbations."""
        return self.q + 1

    @property
    def center_index(self) -> int:
        """θ itself comes first."""
        return 0

    def _directions(self, rng: np.random.Generator) -> np.ndarray:
        return unit_sphere(rng, self.q, self.dim)

    def _offsets(self, directions: np.ndarray) -> np.ndarray:
        return np.vstack([np.zeros((1, self.dim)), self.beta * directions])

    def _combine(self, directions: np.ndarray, losses: np.ndarray) -> np.ndarray:
        diffs = (losses[1:] - losses[0]) / self.beta
        return (self.scale / self.q) * diffs @ directions


class TwoSidedEstimator(Estimator):
    """Shared shape of the antithetic estimators: rows alternate θ + βD_1, θ − βD_1, ..."""

    @property
    def n_candidates(self) -> int:
        """Two points (±) per direction."""
        return 2 * self.q

    def _offsets(self, directions: np.ndarray) -> np.ndarray:
        signs = np.tile([[1.0], [-1.0]], (self.q, 1))
        return self.beta * np.repeat(directions, 2, axis=0) * signs

    def _slopes(self, losses: np.ndarray) -> np.ndarray:
        """[f(θ + βD_j) − f(θ − βD_j)] / (2β) for each j."""
        return (losses[0::2] - losses[1::2]) / (2.0 * self.beta)


@register
class AntitheticEstimator(TwoSidedEstimator):
    """Two-sided (antithetic) differences along unit-sphere directions:
    g = (b/q) Σ_j [f(θ + βU_j) − f(θ − βU_j)]/(2β) · U_j. The O(β²) bias and the cancelled
    f(θ) term make it far less noisy per query than the one-sided estimate."""

    name = "antithetic"

    def _directions(self, rng: np.random.Generator) -> np.ndarray:
        return unit_sphere(rng, self.q, self.dim)

    def _combine(self, directions: np.ndarray, losses: np.ndarray) -> np.ndarray:
        return (self.scale / self.q) * self._slopes(losses) @ directions


@register
class SpsaEstimator(TwoSidedEstimator):
    """Simultaneous perturbation (Spall 1992): Rademacher Δ_j ∈ {±1}^d, two-sided,
    g = (1/q) Σ_j [f(θ + βΔ_j) − f(θ − βΔ_j)]/(2β) · Δ_j. Here β is the per-coordinate step,
    so every coefficient moves by exactly β — large enough to survive 8-bit image encoding.
    ``scale`` (b) is ignored: E[ΔΔᵀ] = I already."""

    name = "spsa"

    def _directions(self, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, 2, size=(self.q, self.dim)).astype(np.float64) * 2.0 - 1.0

    def _combine(self, directions: np.ndarray, losses: np.ndarray) -> np.ndarray:
        return self._slopes(losses) @ directions / self.q
