"""A derivative-free search over the program's coefficients: separable CMA-ES (Ros & Hansen
2008) from the ``cmaes`` package, behind the trainer's ask/tell shape.

Where the gradient estimators (engine.estimators) turn K losses into a gradient for an
optimiser, a search turns them into the next θ itself: its candidates are drawn from a
Gaussian N(θ, σ²·diag(C)) whose step size σ and per-coordinate variances C adapt to the
ranking of the losses alone. Ranks, not differences: on an oracle of 2 or 5 concepts a
finite difference of a minibatch loss is mostly noise, while which of two programs did
better on the same images can still be told (issue 9, item 5). The separable variant keeps
its memory and time per candidate linear in the dimension (full CMA-ES is quadratic); only
the default 8×8×3 program (192 coefficients) has been measured with it.

Determinism: the library draws from its own ``RandomState``, which its pickling drops; here
it is reseeded from the trainer's generator before every generation, so the trainer's saved
generator decides every draw, and ``state`` holds the rest of the library's own pickled
state (arrays and numbers) without pickle.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from cmaes import SepCMA

CMA = "cma"


class CmaSearch:
    """sep-CMA-ES over ``dim`` coefficients from θ = 0 with ``population`` candidates per
    generation and initial step size ``sigma`` (in coefficient units, before the tanh)."""

    def __init__(self, dim: int, population: int, sigma: float) -> None:
        """A search at θ = 0; ``population`` ≥ 2 (the ranking needs two)."""
        if dim < 2 or population < 2 or sigma <= 0:
            raise ValueError("CMA-ES needs dim ≥ 2, a population ≥ 2 and sigma > 0")
        self.n_candidates = population
        self._es = SepCMA(mean=np.zeros(dim), sigma=sigma, population_size=population)
        # Its stopping rule's history (never consulted here) starts as np.empty, whatever the
        # memory held: zeroed, two equal searches' checkpoints are equal byte for byte.
        history = getattr(self._es, "_funhist_values", None)
        if isinstance(history, np.ndarray):
            history.fill(0.0)
        self._pending: np.ndarray | None = None

    @property
    def mean(self) -> np.ndarray:
        """The search's current θ (a copy)."""
        return np.array(self._es.mean, dtype=np.float64)

    def ask(self, rng: np.random.Generator) -> np.ndarray:
        """The K×d candidates of the next generation, drawn as ``rng`` decides."""
        self._es.reseed_rng(int(rng.integers(2**31 - 1)))
        self._pending = np.stack([self._es.ask() for _ in range(self.n_candidates)])
        return self._pending.copy()

    def tell(self, losses: np.ndarray) -> np.ndarray:
        """Update on the losses of the last ask's candidates, in order; returns the new θ."""
        if self._pending is None:
            raise RuntimeError("tell() without a matching ask()")
        losses = np.asarray(losses, dtype=np.float64)
        if losses.shape != (self.n_candidates,):
            raise ValueError(f"expected {self.n_candidates} losses, got {losses.shape}")
        candidates, self._pending = self._pending, None
        self._es.tell(list(zip(candidates, losses.tolist(), strict=True)))
        return self.mean

    def state(self) -> dict[str, Any]:
        """The library's own pickled state (arrays and numbers), its generator aside."""
        return dict(self._es.__getstate__())

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from ``state()``."""
        restored = {k: np.array(v) if isinstance(v, np.ndarray) else v for k, v in state.items()}
        self._es.__setstate__(restored)
        self._pending = None
