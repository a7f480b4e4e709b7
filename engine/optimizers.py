"""First-order update rules applied to (estimated) gradients. State is plain arrays so that
it serialises with the trainer and a resumed run continues bit-for-bit."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from engine.registry import Registry

OPTIMIZERS: Registry[Optimizer] = Registry()
register = OPTIMIZERS.register


class Optimizer(ABC):
    """An update rule θ ← θ − step(g) with learning rate lr · lr_decay^t at step t."""

    name: ClassVar[str]

    def __init__(self, dim: int, lr: float, *, lr_decay: float = 1.0, clip: float | None = None):
        """An optimiser for d = ``dim`` coefficients; ``clip`` caps ‖g‖₂ when given."""
        self.dim, self.lr, self.lr_decay, self.clip = dim, lr, lr_decay, clip
        self.t = 0

    def step(self, theta: np.ndarray, grad: np.ndarray) -> np.ndarray:
        """Return the updated θ (a new array). ``clip`` caps the gradient's L2 norm first."""
        grad = np.asarray(grad, dtype=np.float64)
        if self.clip is not None:
            norm = float(np.linalg.norm(grad))
            if norm > self.clip:
                grad = grad * (self.clip / norm)
        lr = self.lr * self.lr_decay**self.t
        self.t += 1
        return np.asarray(theta, dtype=np.float64) - self._direction(grad, lr)

    @abstractmethod
    def _direction(self, grad: np.ndarray, lr: float) -> np.ndarray: ...

    def state(self) -> dict[str, np.ndarray]:
        """The step count and any moments, as arrays."""
        return {"t": np.array(self.t)}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Continue from ``state()``."""
        self.t = int(state["t"])


@register
class Sgd(Optimizer):
    """The paper's update W ← W − α_t g with α_t = η · decay^t (exponential decay)."""

    name = "sgd"

    def _direction(self, grad: np.ndarray, lr: float) -> np.ndarray:
        return lr * grad


@register
class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) on the estimated gradient (ZO-AdaMM, Chen et al. 2019)."""

    name = "adam"
    beta1, beta2, eps = 0.9, 0.999, 1e-8

    def __init__(self, dim: int, lr: float, **kwargs: float | None) -> None:
        """Zero moments; ``kwargs`` as for ``Optimizer``."""
        super().__init__(dim, lr, **kwargs)  # type: ignore[arg-type]
        self.m = np.zeros(dim)
        self.v = np.zeros(dim)

    def _direction(self, grad: np.ndarray, lr: float) -> np.ndarray:
        self.m = self.beta1 * self.m + (1 - self.beta1) * grad
        self.v = self.beta2 * self.v + (1 - self.beta2) * grad**2
        m_hat = self.m / (1 - self.beta1**self.t)
        v_hat = self.v / (1 - self.beta2**self.t)
        return lr * m_hat / (np.sqrt(v_hat) + self.eps)

    def state(self) -> dict[str, np.ndarray]:
        """The step count and both moment estimates."""
        return {**super().state(), "m": self.m.copy(), "v": self.v.copy()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Continue from ``state()``."""
        super().load_state(state)
        self.m = np.array(state["m"], dtype=np.float64)
        self.v = np.array(state["v"], dtype=np.float64)
