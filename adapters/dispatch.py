"""From "answer these N images" to provider requests, each one accounted, rate-limited and
retried: the path every query takes (architecture.md: budget reservation → shared rate limiter
→ call → retry policy → ledger commit).

The dispatcher splits a batch into requests of at most ``oracle.max_images_per_request``
images and keeps up to ``oracle.max_concurrency`` of them in flight on a thread pool. Each
attempt of each request first reserves its images with the ledger (which refuses with
``BudgetExceeded`` when the budget cannot cover them), waits for the shared rate limiter,
calls the oracle, and settles the reservation with what the provider answered. A mixed batch
keeps its answered rows and retries only the failed inputs, so no answer is lost or paid twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from adapters.base import GradientOracle, Oracle
from adapters.errors import OracleError, PartialFailure, Throttled
from adapters.ratelimit import SharedRateLimiter
from adapters.retry import RetryPolicy


@dataclass(frozen=True)
class RequestRecord:
    """One request as sent: what the ledger stores."""

    purpose: str
    images: int  # images sent
    answered: int  # images the provider answered (what it bills)
    outcome: str  # "ok", "partial", or the error class name
    request_id: str | None
    seconds: float


class Reservation(Protocol):
    def settle(self, record: RequestRecord) -> None: ...


class Ledger(Protocol):
    """Accounting supplied by the caller (the service's database, or memory for the CLI)."""

    def reserve(self, purpose: str, images: int) -> Reservation:
        """Hold ``images`` against the budget before sending; raises BudgetExceeded."""
        ...


class NullLedger:
    """Counts nothing; for tests and benchmarks that measure the oracle alone."""

    class _Null:
        def settle(self, record: RequestRecord) -> None:
            pass

    def reserve(self, purpose: str, images: int) -> Reservation:
        return self._Null()


class Dispatcher:
    def __init__(
        self,
        oracle: Oracle,
        *,
        ledger: Ledger | None = None,
        limiter: SharedRateLimiter | None = None,
        limit_unit: str = "request",  # what the provider counts: "request" or "image"
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if limit_unit not in ("request", "image"):
            raise ValueError("limit_unit is 'request' or 'image'")
        self.oracle, self.ledger = oracle, ledger or NullLedger()
        self.limiter, self.limit_unit = limiter, limit_unit
        self.retry, self.sleep = retry or RetryPolicy(), sleep
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    # ----------------------------------------------------------------- public
    def query(self, images: np.ndarray, purpose: str) -> np.ndarray:
        """Probabilities (N×K) for ``images`` (N×H×W×3 in [0, 1]), in order."""
        images = np.asarray(images, dtype=np.float32)
        step = self.oracle.max_images_per_request
        chunks = [images[i : i + step] for i in range(0, len(images), step)]
        if len(chunks) <= 1 or self.oracle.max_concurrency <= 1:
            parts = [self._request(c, purpose) for c in chunks]
        else:
            parts = list(self._executor().map(lambda c: self._request(c, purpose), chunks))
        if not parts:
            return np.zeros((0, len(self.oracle.labels)))
        return np.concatenate(parts)

    def query_with_gradient(
        self,
        images: np.ndarray,
        loss_grad: Callable[[np.ndarray], tuple[float, np.ndarray]],
        purpose: str,
    ) -> tuple[np.ndarray, np.ndarray]:
        """White-box baseline only: one accounted forward + backward pass per image."""
        if not isinstance(self.oracle, GradientOracle):
            raise TypeError("this oracle offers no gradients (the white-box baseline needs one)")
        oracle = self.oracle
        reservation = self.ledger.reserve(purpose, len(images))
        start = time.perf_counter()
        probs, grad = oracle.predict_with_input_grad(images, loss_grad)
        reservation.settle(
            RequestRecord(purpose, len(images), len(images), "ok", None,
                          time.perf_counter() - start)
        )
        return probs, grad

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # ----------------------------------------------------------------- one request
    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=self.oracle.max_concurrency, thread_name_prefix="oracle"
                )
            return self._pool

    def _request(self, images: np.ndarray, purpose: str) -> np.ndarray:
        """Answer one request's images, retrying per policy; only unanswered inputs are
        sent again."""
        rows: dict[int, np.ndarray] = {}
        pending = list(range(len(images)))

        def attempt() -> None:
            nonlocal pending
            batch = images[pending]
            reservation = self.ledger.reserve(purpose, len(batch))
            if self.limiter is not None:
                self.limiter.acquire(1 if self.limit_unit == "request" else len(batch))
            start = time.perf_counter()
            try:
                answer = self.oracle.predict(batch)
            except PartialFailure as err:
                for pos, row in err.answered.items():
                    rows[pending[pos]] = np.asarray(row, dtype=np.float64)
                reservation.settle(self._record(purpose, batch, len(err.answered), "partial",
                                                err.request_id, start))
                pending = [pending[pos] for pos in sorted(err.failed)]
                raise
            except OracleError as err:
                reservation.settle(self._record(purpose, batch, 0, type(err).__name__,
                                                err.request_id, start))
                raise
            except BaseException:
                # Not an answer we understand: assume the provider may have billed it.
                reservation.settle(self._record(purpose, batch, len(batch), "unknown", None,
                                                start))
                raise
            reservation.settle(self._record(purpose, batch, len(batch), "ok",
                                            answer.request_id, start))
            for pos, row in zip(pending, answer.probs, strict=True):
                rows[pos] = row
            pending = []

        def before_sleep(err: BaseException, seconds: float) -> None:
            if isinstance(err, Throttled) and self.limiter is not None:
                self.limiter.pause(seconds)  # everyone on this credential waits, not just us

        self.retry.call(attempt, sleep=self.sleep, before_sleep=before_sleep)
        return np.stack([rows[i] for i in range(len(images))])

    @staticmethod
    def _record(purpose: str, batch: np.ndarray, answered: int, outcome: str,
                request_id: str | None, start: float) -> RequestRecord:
        return RequestRecord(purpose, len(batch), answered, outcome, request_id,
                             time.perf_counter() - start)
