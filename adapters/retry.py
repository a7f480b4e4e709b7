"""The one retry policy for every oracle, on tenacity.

The decision is a pure function of (error, attempt): retry only what may pass (throttling,
5xx, unavailable, timeouts, and a mixed batch whose failures are all of that kind), never
auth failures, unknown models or refused inputs; wait with full-jitter exponential backoff,
or as long as the provider's ``Retry-After`` says (capped); give up after a bounded number
of attempts. Sleeping and randomness are injected so tests control the clock.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from tenacity import RetryCallState, Retrying, stop_after_attempt

from adapters.errors import OracleError, Throttled

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    base_delay: float = 0.25  # seconds; the first backoff is drawn from [0, base_delay]
    max_delay: float = 20.0
    max_retry_after: float = 60.0  # a provider asking for longer than this gets this
    rng: random.Random = field(default_factory=lambda: random.Random(0), compare=False)

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """Retry ``error`` after ``attempt`` attempts (1-based)?"""
        return isinstance(error, OracleError) and error.retryable and attempt < self.max_attempts

    def delay(self, error: BaseException, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1``."""
        if isinstance(error, Throttled) and error.retry_after is not None:
            return min(max(error.retry_after, 0.0), self.max_retry_after)
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return self.rng.uniform(0.0, ceiling)  # "full jitter" (AWS architecture blog)

    def call(
        self,
        fn: Callable[[], T],
        *,
        sleep: Callable[[float], None] = time.sleep,
        before_sleep: Callable[[BaseException, float], None] | None = None,
    ) -> T:
        """Run ``fn`` under this policy; re-raises the last error when giving up."""

        def wait(state: RetryCallState) -> float:
            assert state.outcome is not None
            err = state.outcome.exception()
            assert err is not None
            seconds = self.delay(err, state.attempt_number)
            if before_sleep is not None:
                before_sleep(err, seconds)
            return seconds

        def retry(state: RetryCallState) -> bool:
            out = state.outcome
            return bool(out and out.failed) and self.should_retry(
                out.exception(),
                state.attempt_number,  # type: ignore[union-attr,arg-type]
            )

        retrying = Retrying(
            stop=stop_after_attempt(self.max_attempts),
            retry=retry,
            wait=wait,
            sleep=sleep,
            reraise=True,
        )
        return retrying(fn)
