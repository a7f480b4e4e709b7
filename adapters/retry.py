"""The one retry policy for every oracle, on tenacity.

The decision is a pure function of (error, attempt): retry only what may pass (throttling,
5xx, unavailable, timeouts, and a mixed batch whose failures are all of that kind), never
auth failures, unknown models or refused inputs; wait with full-jitter exponential backoff,
or as long as the provider's ``Retry-After`` says (capped); give up after a bounded number
of attempts. Sleeping and randomness are injected so tests control the clock.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

from tenacity import RetryCallState, Retrying, stop_after_attempt

from adapters.errors import OracleError, Throttled

T = TypeVar("T")

#: the longest wait we believe from a Retry-After header; longer ones are capped
MAX_RETRY_AFTER_S = 300.0


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delay-seconds or an HTTP date), capped
    at ``MAX_RETRY_AFTER_S``; a date in the past gives 0. None when absent or invalid."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT even when they fail to say so
            when = when.replace(tzinfo=UTC)
        seconds = max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, MAX_RETRY_AFTER_S)


@dataclass(frozen=True)
class RetryPolicy:
    """When to try a failed request again, and how long to wait first."""

    max_attempts: int = 8
    base_delay: float = 0.25  # seconds; the first backoff is drawn from [0, base_delay]
    max_delay: float = 20.0
    max_retry_after: float = 60.0  # a provider asking for longer than this gets this
    # Unseeded by default: workers sharing a credential must not draw the same "random"
    # backoffs, or they retry in lockstep and jitter buys nothing. Tests pass a seeded one.
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 <= self.base_delay <= self.max_delay or self.max_retry_after < 0:
            raise ValueError("delays must satisfy 0 ≤ base_delay ≤ max_delay, max_retry_after ≥ 0")

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """Retry ``error`` after ``attempt`` attempts (1-based)?"""
        return isinstance(error, OracleError) and error.retryable and attempt < self.max_attempts

    def delay(self, error: BaseException, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1``: the provider's Retry-After when it
        gave one (capped at ``max_retry_after``), else a full-jitter exponential backoff."""
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
        """Run ``fn`` under this policy; re-raises the last error when giving up.

        ``before_sleep(error, seconds)`` runs before each wait (the dispatcher uses it to
        pause every user of a throttled credential)."""

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
