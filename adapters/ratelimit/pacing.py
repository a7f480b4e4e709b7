"""The pyrate rates that space units evenly at a limit."""

from __future__ import annotations

import math

from pyrate_limiter import Rate


def pacing_rates(per_second: float, *, max_loss: float = 0.01) -> list[Rate]:
    """The pyrate rates that admit at most ``per_second`` units per second, evenly spaced.

    pyrate's sliding window counts ``[t - interval, t]`` inclusive, so ``Rate(n, m)`` admits
    n units per m + 1 ms in steady state. n is the smallest count whose rounding to whole
    milliseconds gives away at most ``max_loss`` of the limit: 1 per 67 ms for 15/s, 3 per
    67 ms for 45/s; n > 1 only where the millisecond grid is too coarse, so bursts stay tiny.
    """
    if not (math.isfinite(per_second) and per_second > 0):
        raise ValueError("a rate limit must be a positive number of units per second")
    n = 1
    while True:
        exact_ms = n * 1000.0 / per_second  # the span n units need at exactly the limit
        span = math.ceil(exact_ms - 1e-9)  # rounded towards slower: never over the limit
        if span >= 2 and exact_ms >= span * (1.0 - max_loss):
            return [Rate(n, span - 1)]
        n += 1
