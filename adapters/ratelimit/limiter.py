"""The limiter: blocks callers until their units fit the shared bucket and no pause is in
force.

The waiting is ours, not pyrate's ``Limiter``: its blocking loop adds a 50 ms buffer to every
wait and re-stamps a waiting item with the time it *planned* to wake rather than the time it
did, which held one sender to ~70 % of the limit and let late senders slip in early. Here
each try takes a fresh timestamp from the bucket's clock (for PostgreSQL the database's,
measured once and followed locally, so machines with skewed clocks still agree) and sleeps
exactly as long as the bucket says, counted from that timestamp. Inside one process a single
thread polls the shared bucket at a time; the others queue on a local lock, which keeps
database round trips at a few per admitted unit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pyrate_limiter import AbstractBucket, RateItem

from adapters.ratelimit.stores import PauseStore

#: wait after losing a race for the shared bucket's lock (PostgreSQL's NOWAIT table lock)
CONTENTION_RETRY_S = 0.002
#: shortest sleep between tries, so a bucket that reports no wait cannot make us spin
MIN_SLEEP_S = 0.0005
#: how late (ms) a waiter may wake and still claim the slot it slept for
CATCH_UP_MS = 10
#: how often admitted units older than every window are deleted from the bucket
LEAK_EVERY_S = 10.0


@dataclass
class SharedRateLimiter:
    """Blocks callers so that all of them together stay under one provider limit.

    ``now_ms`` stamps admitted units (default: the bucket's own clock); ``clock`` dates
    pauses (seconds since the epoch); ``sleep`` waits. Tests replace all three."""

    key: str
    per_second: float
    bucket: AbstractBucket
    pauses: PauseStore
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    now_ms: Callable[[], int] | None = None
    _turn: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _last_leak_ms: int | None = field(default=None, init=False, repr=False)
    _on_close: list[Callable[[SharedRateLimiter], None]] = field(
        default_factory=list, init=False, repr=False
    )

    def acquire(self, weight: int = 1) -> float:
        """Block until ``weight`` units may be sent (and no pause is in force); returns the
        seconds spent waiting."""
        if weight < 0:
            raise ValueError("weight must be ≥ 0")
        start = time.perf_counter()
        # One thread per process polls the shared bucket; the others queue here.
        with self._turn:
            for _ in range(weight):  # one unit at a time: the pacing rate admits so few
                self._take_one()
        return time.perf_counter() - start

    def pause(self, seconds: float) -> None:
        """Nobody sends with this credential for ``seconds`` (a provider's Retry-After)."""
        if seconds > 0:
            self.pauses.extend(self.key, self.clock() + seconds)

    def paused_for(self) -> float:
        """Seconds until the current pause ends (0 when none is in force)."""
        return max(0.0, self.pauses.get(self.key) - self.clock())

    def on_close(self, callback: Callable[[SharedRateLimiter], None]) -> None:
        """Call ``callback(self)`` when the limiter closes (a registry forgets it then)."""
        self._on_close.append(callback)

    def close(self) -> None:
        """Release the bucket's connections (later acquires fail) and leave the registry, so
        ``shared_limiter`` builds a fresh one when asked again."""
        for callback in self._on_close:
            callback(self)
        self.bucket.close()

    def _take_one(self) -> None:
        slot: int | None = None  # the bucket time of the slot we last slept for
        while True:
            while (pause := self.paused_for()) > 0:
                self.sleep(pause)  # then look again: someone may have extended it
                slot = None
            now = self.now_ms() if self.now_ms is not None else int(self.bucket.now())
            # Waking for a slot costs a little (a late scheduler, round trips before the
            # put): claim the slot itself, so that the lateness is not added to every
            # interval. Only slightly late: a unit is never stamped far into the past.
            stamp = slot if slot is not None and 0 <= now - slot <= CATCH_UP_MS else now
            stamped = self.clock() - (now - stamp) / 1000.0  # the stamp, on our clock
            item = RateItem(self.key, stamp, 1)
            if self.bucket.put(item):
                self._leak(now)
                return
            wait_ms = self.bucket.waiting(item)
            if wait_ms <= 0:  # refused without a wait: another process held PostgreSQL's lock
                slot = None
                self.sleep(CONTENTION_RETRY_S)
                continue
            slot = stamp + wait_ms
            # The wait counts from the stamp, not from now: the put's round trips (slow when
            # another thread holds the GIL) must not delay the next slot.
            self.sleep(max(wait_ms / 1000.0 - (self.clock() - stamped), MIN_SLEEP_S))

    def _leak(self, now: int) -> None:
        """Delete units that left every window, every ``LEAK_EVERY_S`` (done inline rather
        than by pyrate's background thread, so nothing outlives ``close``)."""
        if self._last_leak_ms is None:
            self._last_leak_ms = now
        elif now - self._last_leak_ms >= LEAK_EVERY_S * 1000:
            self._last_leak_ms = now
            self.bucket.leak(now)
