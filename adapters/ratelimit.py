"""Rate limits per (provider, credential), shared by every job and every worker process.

A limit is counted in the unit the provider counts (Clarifai: requests/s; Custom Vision:
images/s): ``acquire(weight)`` blocks until ``weight`` units fit. The buckets are
pyrate-limiter's: in memory (one process), SQLite (the embedded mode: every process on the
machine) or PostgreSQL (production: every process on every machine). Two rates are stacked,
R per second and 1 per 1/R seconds, so a limiter paces evenly instead of bursting R requests
at the start of each second (bursts are what providers' sliding windows punish).

A throttle answer slows *every* user of the credential: ``pause(seconds)`` stores a
"nobody sends before" instant in the same backend, which every ``acquire`` honours.
"""

from __future__ import annotations

import hashlib
import math
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from pyrate_limiter import Duration, InMemoryBucket, Limiter, Rate, SQLiteBucket


def credential_key(provider: str, secret: str) -> str:
    """A stable, non-reversible bucket name for (provider, credential)."""
    digest = hashlib.sha256(f"{provider}\0{secret}".encode()).hexdigest()[:16]
    return f"{provider}_{digest}"


def pacing_rates(per_second: float) -> list[Rate]:
    if per_second <= 0:
        raise ValueError("a rate limit must be positive")
    interval_ms = max(1, math.ceil(1000.0 / per_second))
    rates = [Rate(1, interval_ms)]
    if per_second >= 1:
        rates.append(Rate(int(per_second), Duration.SECOND))
    return sorted(rates, key=lambda r: r.interval)


class PauseStore(ABC):
    """Where the shared "do not send before" instants live (seconds since the epoch)."""

    @abstractmethod
    def get(self, key: str) -> float: ...

    @abstractmethod
    def extend(self, key: str, until: float) -> None:
        """Move the pause end to ``until`` unless it is already later."""


class MemoryPauseStore(PauseStore):
    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> float:
        return self._until.get(key, 0.0)

    def extend(self, key: str, until: float) -> None:
        with self._lock:
            self._until[key] = max(self._until.get(key, 0.0), until)


class SqlPauseStore(PauseStore):
    """A one-table store on SQLite or PostgreSQL. ``connection`` returns a context manager
    yielding a DB-API connection that commits on exit; ``param`` is the placeholder style."""

    def __init__(self, connection: Callable[[], AbstractContextManager], param: str) -> None:
        self._connection, self._p = connection, param
        with self._connection() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS rate_pause (key VARCHAR(64) PRIMARY KEY, "
                "until_ts DOUBLE PRECISION NOT NULL)"
            )

    def get(self, key: str) -> float:
        with self._connection() as conn:
            row = conn.execute(
                f"SELECT until_ts FROM rate_pause WHERE key = {self._p}", (key,)
            ).fetchone()
        return float(row[0]) if row else 0.0

    def extend(self, key: str, until: float) -> None:
        p = self._p
        with self._connection() as conn:
            conn.execute(
                f"INSERT INTO rate_pause (key, until_ts) VALUES ({p}, {p}) ON CONFLICT (key) "
                "DO UPDATE SET until_ts = CASE WHEN excluded.until_ts > rate_pause.until_ts "
                "THEN excluded.until_ts ELSE rate_pause.until_ts END",
                (key, until),
            )


@contextmanager
def _sqlite_connection(path: str) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path, timeout=30)
    try:
        with conn:  # commits on success
            yield conn
    finally:
        conn.close()


@dataclass
class SharedRateLimiter:
    """Blocks callers so that all of them together stay under one provider limit."""

    key: str
    per_second: float
    limiter: Limiter
    pauses: PauseStore
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep

    def acquire(self, weight: int = 1) -> None:
        """Block until ``weight`` units may be sent (and no pause is in force)."""
        while (wait := self.pauses.get(self.key) - self.clock()) > 0:
            self.sleep(min(wait, 1.0))
        for _ in range(weight):  # the pacing rate admits one unit at a time
            while not self.limiter.try_acquire(self.key, 1, blocking=True):
                self.sleep(0.005)  # lost a race for the shared bucket's lock; try again

    def pause(self, seconds: float) -> None:
        """Nobody sends with this credential for ``seconds`` (a provider's Retry-After)."""
        if seconds > 0:
            self.pauses.extend(self.key, self.clock() + seconds)


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


def _build(key: str, per_second: float, backend: str) -> SharedRateLimiter:
    rates = pacing_rates(per_second)
    if backend == "memory":
        return SharedRateLimiter(
            key, per_second, Limiter(InMemoryBucket(rates)), MemoryPauseStore()
        )
    if backend.startswith("sqlite:///"):
        path = backend.removeprefix("sqlite:///")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        bucket = SQLiteBucket.init_from_file(
            rates, table=f"rl_{key}", db_path=path, use_file_lock=True
        )
        pauses = SqlPauseStore(lambda: _sqlite_connection(path), "?")
        return SharedRateLimiter(key, per_second, Limiter(bucket), pauses)
    if backend.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        from psycopg_pool import ConnectionPool
        from pyrate_limiter import PostgresBucket

        dsn = backend.replace("postgresql+psycopg://", "postgresql://", 1)
        pool = ConnectionPool(dsn, min_size=1, max_size=4, open=True)
        bucket = PostgresBucket(pool, f"rl_{key}", rates)
        return SharedRateLimiter(
            key, per_second, Limiter(bucket), SqlPauseStore(pool.connection, "%s")
        )
    raise ValueError(f"unknown rate-limit backend {backend!r}")
