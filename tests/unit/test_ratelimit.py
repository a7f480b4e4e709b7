"""The shared rate limiter on an injected clock: pacing, pauses, contention, keys."""

from __future__ import annotations

import itertools

import pytest
from pyrate_limiter import InMemoryBucket

from adapters.ratelimit import (
    CONTENTION_RETRY_S,
    LEAK_EVERY_S,
    MemoryPauseStore,
    ServerClock,
    SharedRateLimiter,
    SqlPauseStore,
    credential_key,
    pacing_rates,
    shared_limiter,
    sqlite_connection,
)


class FakeTime:
    """A clock that moves only when slept on; whole microseconds, so no float drift."""

    def __init__(self, start_s: float = 1_000.0) -> None:
        self.us = int(start_s * 1e6)
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.us / 1e6

    def ms(self) -> int:
        return self.us // 1000

    def sleep(self, seconds: float) -> None:
        assert seconds > 0, "a limiter must never spin"
        self.sleeps.append(seconds)
        self.us += round(seconds * 1e6)


def limiter_on(clock: FakeTime, per_second: float, **kwargs: object) -> SharedRateLimiter:
    return SharedRateLimiter(
        "clarifai_test",
        per_second,
        InMemoryBucket(pacing_rates(per_second)),
        kwargs.pop("pauses", MemoryPauseStore()),  # type: ignore[arg-type]
        clock=clock.time,
        sleep=clock.sleep,
        now_ms=clock.ms,
    )


def admitted_at(limiter: SharedRateLimiter, clock: FakeTime, units: int) -> list[int]:
    """Acquire ``units`` one by one; the fake-clock millisecond each was admitted at."""
    stamps = []
    for _ in range(units):
        limiter.acquire()
        stamps.append(clock.ms())
    return stamps


@pytest.mark.parametrize("per_second", [0.5, 2, 10, 15, 20, 30, 45, 100, 1000])
def test_pacing_rates_stay_under_the_limit_and_lose_at_most_one_percent(per_second):
    (rate,) = pacing_rates(per_second)
    steady = rate.limit * 1000 / (rate.interval + 1)  # the window is inclusive: m + 1 ms
    assert 0.99 * per_second <= steady <= per_second


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf")])
def test_pacing_rates_refuse_nonsense(bad):
    with pytest.raises(ValueError):
        pacing_rates(bad)


@pytest.mark.parametrize("per_second", [10, 15, 45])
def test_one_sender_gets_the_full_rate_and_no_window_holds_more(per_second):
    clock = FakeTime()
    stamps = admitted_at(limiter_on(clock, per_second), clock, 120)
    achieved = sum(u < stamps[0] + 2000 for u in stamps) / 2.0  # units/s over two seconds
    assert 0.98 * per_second <= achieved <= per_second
    for i, t in enumerate(stamps):  # any one-second window [t, t + 1000)
        assert sum(t <= u < t + 1000 for u in stamps[i:]) <= per_second
    assert len(clock.sleeps) <= 2 * len(stamps)  # it sleeps as long as needed, no polling


def test_weight_counts_units():
    clock = FakeTime()
    limiter = limiter_on(clock, 10)
    limiter.acquire(1)
    start = clock.ms()
    limiter.acquire(3)  # three images of one Custom Vision request... spaced 100 ms
    assert clock.ms() - start >= 300
    assert limiter.acquire(0) == pytest.approx(0.0, abs=0.01)


def test_a_pause_holds_every_acquire_until_it_ends():
    clock = FakeTime()
    limiter = limiter_on(clock, 100)
    limiter.acquire()
    limiter.pause(2.0)
    assert limiter.paused_for() == pytest.approx(2.0)
    before = clock.time()
    limiter.acquire()
    assert clock.time() - before >= 2.0
    assert limiter.paused_for() == 0.0


def test_pauses_only_ever_grow():
    clock = FakeTime()
    limiter = limiter_on(clock, 100)
    limiter.pause(5.0)
    limiter.pause(1.0)  # a shorter Retry-After elsewhere must not cut the longer one
    limiter.pause(0.0)
    limiter.pause(-3.0)
    assert limiter.paused_for() == pytest.approx(5.0)


def test_a_pause_set_while_waiting_is_honoured():
    clock = FakeTime()
    limiter = limiter_on(clock, 1)
    limiter.acquire()
    original_sleep = clock.sleep

    def sleep_and_hear_of_a_throttle(seconds: float) -> None:
        original_sleep(seconds)
        if len(clock.sleeps) == 1:  # another worker meets a Retry-After of 10 s meanwhile
            limiter.pause(10.0)

    limiter.sleep = sleep_and_hear_of_a_throttle
    start = clock.time()
    limiter.acquire()
    assert clock.time() - start >= 10.0


def test_pauses_are_shared_through_sqlite(tmp_path):
    path = str(tmp_path / "limits.db")
    store = SqlPauseStore(lambda: sqlite_connection(path), "?")
    other_process_store = SqlPauseStore(lambda: sqlite_connection(path), "?")
    clock = FakeTime()
    one = limiter_on(clock, 10, pauses=store)
    other = limiter_on(clock, 10, pauses=other_process_store)
    one.pause(3.0)
    other.pause(1.0)
    assert other.paused_for() == pytest.approx(3.0)
    store.forget(one.key)
    assert other.paused_for() == 0.0


class ContendedBucket(InMemoryBucket):
    """Refuses the first ``losses`` puts the way PostgreSQL's NOWAIT lock does: no wait."""

    def __init__(self, losses: int) -> None:
        super().__init__(pacing_rates(10))
        self.losses = losses

    def put(self, item):
        if self.losses:
            self.losses -= 1
            self.failing_rate, self._last_wait = self.rates[0], None
            return False
        return super().put(item)

    def waiting(self, item):
        return 0 if self.losses or self.failing_rate is None else super().waiting(item)


def test_losing_a_lock_race_retries_soon_without_spinning():
    clock = FakeTime()
    limiter = limiter_on(clock, 10)
    limiter.bucket = ContendedBucket(losses=3)
    limiter.acquire()
    assert clock.sleeps == [CONTENTION_RETRY_S] * 3


class SlowBucket(InMemoryBucket):
    """Each put takes 20 ms of the clock, like database round trips on a busy machine."""

    def __init__(self, clock: FakeTime, per_second: float) -> None:
        super().__init__(pacing_rates(per_second))
        self.clock = clock

    def put(self, item):
        admitted = super().put(item)
        self.clock.us += 20_000
        return admitted


def test_slow_round_trips_do_not_stretch_the_spacing():
    clock = FakeTime()
    limiter = limiter_on(clock, 10)
    limiter.bucket = SlowBucket(clock, 10)
    stamps = admitted_at(limiter, clock, 30)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert max(gaps) <= 101  # the wait counts from the stamp, not from the end of the put


def test_waking_late_does_not_cost_the_lateness_on_every_interval():
    clock = FakeTime()
    limiter = limiter_on(clock, 10)
    limiter.sleep = lambda seconds: clock.sleep(seconds + 0.006)  # a sluggish scheduler
    done = admitted_at(limiter, clock, 51)
    assert (done[-1] - done[0]) / 50 <= 100.5  # 10/s, not 1000 / 106 = 9.4/s
    stamps = [item.timestamp for item in limiter.bucket.items]
    assert min(b - a for a, b in itertools.pairwise(stamps)) >= 100  # never closer than 1/R


def test_the_server_clock_is_read_once_then_followed_locally():
    local, reads = FakeTime(start_s=100.0), []

    def read_server_ms() -> int:
        reads.append(local.time())
        local.sleep(0.002)  # a round trip; the server stamped its answer mid-way
        return 5_000_000 + 1

    clock = ServerClock(read_server_ms, local=local.time, refresh_s=30.0)
    assert clock() == 5_000_002  # the answer is a millisecond old when it arrives
    local.sleep(12.5)
    assert clock() == 5_012_502 and len(reads) == 1  # followed, not read again
    local.sleep(30.0)
    clock()
    assert len(reads) == 2  # measured again, so drift cannot accumulate


def test_old_units_are_leaked_from_the_bucket():
    clock = FakeTime()
    limiter = limiter_on(clock, 20)
    stamps = admitted_at(limiter, clock, int(20 * LEAK_EVERY_S) + 40)
    assert stamps[-1] - stamps[0] > LEAK_EVERY_S * 1000
    assert limiter.bucket.count() < 100  # not every unit since the start


def test_credential_keys_are_stable_distinct_and_hide_the_secret():
    key = credential_key("clarifai", "sk-secret-123")
    assert key == credential_key("clarifai", "sk-secret-123")
    assert key != credential_key("clarifai", "sk-secret-124")
    assert key != credential_key("customvision", "sk-secret-123")
    assert key.startswith("clarifai_") and "secret" not in key


def test_shared_limiter_is_one_per_process_and_checks_its_arguments(tmp_path):
    key = credential_key("clarifai", "unit-test")
    assert shared_limiter(key, 15) is shared_limiter(key, 15)
    with pytest.raises(ValueError, match="letters"):
        shared_limiter("x'; DROP TABLE jobs; --", 15)  # becomes part of a table name
    with pytest.raises(ValueError, match="backend"):
        shared_limiter(key, 15, "redis://localhost")
    backend = f"sqlite:///{tmp_path / 'sub' / 'rl.db'}"
    limiter = shared_limiter(key, 15, backend)
    limiter.acquire()
    limiter.close()
    assert shared_limiter(key, 15, backend) is not limiter  # a closed one is never handed out
    shared_limiter(key, 15, backend).close()
