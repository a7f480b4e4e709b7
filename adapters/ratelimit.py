"""Rate limits per (provider, credential), shared by every job and every worker process.

A limit is counted in the unit the provider counts (Clarifai: requests/s; Custom Vision:
images/s): ``acquire(weight)`` blocks until ``weight`` units fit. The buckets are
pyrate-limiter's: in memory (one process), SQLite (the embedded mode: every process on the
machine) or PostgreSQL (production: every process on every machine). One pacing rate admits
units evenly spaced at the limit instead of R at the start of each second (bursts are what
providers' token buckets and short windows punish).

The waiting is ours, not pyrate's ``Limiter``: its blocking loop adds a 50 ms buffer to every
wait and re-stamps a waiting item with the time it *planned* to wake rather than the time it
did, which held one sender to ~70 % of the limit and let late senders slip in early. Here
each try takes a fresh timestamp from the bucket's clock (for PostgreSQL the database's,
measured once and followed locally, so machines with skewed clocks still agree) and sleeps
exactly as long as the bucket says, counted from that timestamp. Inside one process a single
thread polls the shared bucket at a time; the others queue on a local lock, which keeps
database round trips at a few per admitted unit.

A throttle answer slows *every* user of the credential: ``pause(seconds)`` stores a
"nobody sends before" instant in the same backend, which every ``acquire`` honours.
"""

from __future__ import annotations

import hashlib
import math
import re
import sqlite3
import threading
import time
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyrate_limiter import AbstractBucket, InMemoryBucket, Rate, RateItem, SQLiteBucket

#: wait after losing a race for the shared bucket's lock (PostgreSQL's NOWAIT table lock)
CONTENTION_RETRY_S = 0.002
#: shortest sleep between tries, so a bucket that reports no wait cannot make us spin
MIN_SLEEP_S = 0.0005
#: how late (ms) a waiter may wake and still claim the slot it slept for
CATCH_UP_MS = 10
#: how often admitted units older than every window are deleted from the bucket
LEAK_EVERY_S = 10.0
_KEY = re.compile(r"[A-Za-z0-9_]{1,40}")  # becomes part of a table name


def credential_key(provider: str, secret: str) -> str:
    """A stable, non-reversible bucket name for (provider, credential)."""
    digest = hashlib.sha256(f"{provider}\0{secret}".encode()).hexdigest()[:16]
    return f"{provider}_{digest}"


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


class PauseStore(ABC):
    """Where the shared "do not send before" instants live (seconds since the epoch)."""

    @abstractmethod
    def get(self, key: str) -> float:
        """The instant before which nobody may send with ``key`` (0 when never paused)."""

    @abstractmethod
    def extend(self, key: str, until: float) -> None:
        """Move the pause end to ``until`` unless it is already later."""

    def forget(self, key: str) -> None:  # noqa: B027 - optional for stores without rows
        """Drop the pause of ``key`` (cleanup)."""


class MemoryPauseStore(PauseStore):
    """Pauses for one process."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> float:
        return self._until.get(key, 0.0)

    def extend(self, key: str, until: float) -> None:
        with self._lock:
            self._until[key] = max(self._until.get(key, 0.0), until)

    def forget(self, key: str) -> None:
        with self._lock:
            self._until.pop(key, None)


class SqlPauseStore(PauseStore):
    """A one-table store on SQLite or PostgreSQL. ``connection`` returns a context manager
    yielding a DB-API connection that commits on exit (or runs each statement on its own);
    ``param`` is the placeholder style."""

    TABLE = "rate_pause"

    def __init__(self, connection: Callable[[], AbstractContextManager], param: str) -> None:
        self._connection, self._p = connection, param
        with self._connection() as conn:
            self._create(conn)

    def _create(self, conn: Any) -> None:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self.TABLE} (key VARCHAR(64) PRIMARY KEY, "
            "until_ts DOUBLE PRECISION NOT NULL)"
        )

    def get(self, key: str) -> float:
        with self._connection() as conn:
            row = conn.execute(
                f"SELECT until_ts FROM {self.TABLE} WHERE key = {self._p}", (key,)
            ).fetchone()
        return float(row[0]) if row else 0.0

    def extend(self, key: str, until: float) -> None:
        p, t = self._p, self.TABLE
        with self._connection() as conn:
            conn.execute(
                f"INSERT INTO {t} (key, until_ts) VALUES ({p}, {p}) ON CONFLICT (key) "
                f"DO UPDATE SET until_ts = CASE WHEN excluded.until_ts > {t}.until_ts "
                f"THEN excluded.until_ts ELSE {t}.until_ts END",
                (key, until),
            )

    def forget(self, key: str) -> None:
        with self._connection() as conn:
            conn.execute(f"DELETE FROM {self.TABLE} WHERE key = {self._p}", (key,))


class PostgresPauseStore(SqlPauseStore):
    """The SQL store on PostgreSQL, whose ``CREATE TABLE IF NOT EXISTS`` is not safe against
    a second process creating the same table at the same moment: serialise it."""

    def _create(self, conn: Any) -> None:
        lock_id = zlib.crc32(self.TABLE.encode()) & 0x7FFFFFFF  # the same in every process
        with conn.transaction():  # the lock lasts to the end of it, also on autocommit
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_id,))
            super()._create(conn)


@contextmanager
def _sqlite_connection(path: str) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path, timeout=30)
    try:
        with conn:  # commits on success
            yield conn
    finally:
        conn.close()


def _no_fsync_wait(conn: Any) -> None:
    """Session setting for the PostgreSQL limiter's connections (see ``_build``)."""
    conn.execute("SET synchronous_commit = off")
    conn.commit()


def _autocommit(pool: Any) -> Callable[[], AbstractContextManager]:
    """Connections from ``pool`` that run each statement on its own: a pause read is then one
    round trip, not three (BEGIN, SELECT, COMMIT)."""

    @contextmanager
    def connection() -> Iterator[Any]:
        with pool.connection() as conn:
            conn.autocommit = True
            try:
                yield conn
            finally:
                conn.autocommit = False  # the bucket needs transactions for its table lock

    return connection


class ServerClock:
    """The database's clock in milliseconds, read once and then followed on the local clock.

    Stamps from every machine must come from one clock, the database's; but reading it costs
    round trips at the very moment a slot opens. So the offset to the local clock is measured
    (to within half a round trip) and measured again every ``refresh_s``."""

    def __init__(
        self,
        read_ms: Callable[[], int],
        local: Callable[[], float] = time.time,
        refresh_s: float = 30.0,
    ) -> None:
        self._read_ms, self._local, self._refresh_s = read_ms, local, refresh_s
        self._offset_ms = 0.0
        self._measured: float | None = None

    def __call__(self) -> int:
        now = self._local()
        if self._measured is None or now - self._measured >= self._refresh_s:
            server = self._read_ms()
            after = self._local()
            self._offset_ms = server - 500.0 * (now + after)  # the read landed mid-way
            self._measured = now = after
        return int(now * 1000.0 + self._offset_ms)


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

    def close(self) -> None:
        """Release the bucket's connections (later acquires fail) and leave the registry, so
        ``shared_limiter`` builds a fresh one when asked again."""
        with _registry_lock:
            for ident in [i for i, limiter in _registry.items() if limiter is self]:
                del _registry[ident]
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


_registry: dict[tuple[str, str, float], SharedRateLimiter] = {}
_registry_lock = threading.Lock()


def shared_limiter(key: str, per_second: float, backend: str = "memory") -> SharedRateLimiter:
    """The process-wide limiter for ``key``, created once per (backend, key, rate).

    ``backend``: ``"memory"``, ``"sqlite:///path/to/file.db"`` or a PostgreSQL URL
    (``postgresql://...``)."""
    ident = (backend, key, per_second)
    with _registry_lock:
        if ident not in _registry:
            _registry[ident] = _build(key, per_second, backend)
        return _registry[ident]


def close_shared_limiters() -> None:
    """Close every limiter ``shared_limiter`` made (process shutdown, tests)."""
    with _registry_lock:
        limiters = list(_registry.values())
    for limiter in limiters:
        limiter.close()


def bucket_table(key: str, backend: str) -> str:
    """The table the bucket of ``key`` lives in on an SQL ``backend`` (for cleanup)."""
    if backend.startswith("sqlite:///"):
        return f"rl_{key}"
    return f"ratelimit___rl_{key}".lower()  # pyrate's PostgresBucket prefixes and lowercases


def _build(key: str, per_second: float, backend: str) -> SharedRateLimiter:
    if not _KEY.fullmatch(key):
        raise ValueError(f"a limiter key is 1-40 letters, digits or underscores, not {key!r}")
    rates = pacing_rates(per_second)
    if backend == "memory":
        return SharedRateLimiter(key, per_second, InMemoryBucket(rates), MemoryPauseStore())
    if backend.startswith("sqlite:///"):
        path = backend.removeprefix("sqlite:///")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        bucket = SQLiteBucket.init_from_file(
            rates, table=bucket_table(key, backend), db_path=path, use_file_lock=True
        )
        pauses = SqlPauseStore(lambda: _sqlite_connection(path), "?")
        return SharedRateLimiter(key, per_second, bucket, pauses)
    if backend.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        from psycopg_pool import ConnectionPool
        from pyrate_limiter import PostgresBucket

        dsn = backend.replace("postgresql+psycopg://", "postgresql://", 1)
        # One thread per process polls the bucket (see SharedRateLimiter); pauses set by
        # other threads need the second connection. The rows are seconds-lived: waiting for
        # the WAL to reach the disk on each commit cost ~4 ms per admitted unit, a tenth of
        # a 15/s pacing interval, for durability nobody needs after a crash.
        pool = ConnectionPool(dsn, min_size=1, max_size=2, configure=_no_fsync_wait, open=True)
        bucket = PostgresBucket(pool, f"rl_{key}", rates)
        pauses = PostgresPauseStore(_autocommit(pool), "%s")
        return SharedRateLimiter(key, per_second, bucket, pauses, now_ms=ServerClock(bucket.now))
    raise ValueError(f"unknown rate-limit backend {backend!r}")
