"""A limiter on a backend named by URL: memory, SQLite or PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyrate_limiter import InMemoryBucket, SQLiteBucket

from adapters.ratelimit.clock import ServerClock
from adapters.ratelimit.keys import bucket_table, check_key
from adapters.ratelimit.limiter import SharedRateLimiter
from adapters.ratelimit.pacing import pacing_rates
from adapters.ratelimit.stores import (
    MemoryPauseStore,
    PostgresPauseStore,
    SqlPauseStore,
    autocommit,
    sqlite_connection,
)


def build_limiter(key: str, per_second: float, backend: str) -> SharedRateLimiter:
    """A new limiter for ``key`` on ``backend``, with its own connections and not kept
    anywhere: what one worker process holds. Two of them on one SQL backend share their
    bucket and pauses as two processes do. Services want ``shared_limiter``, which builds
    one per process and hands it out again.

    ``backend``: ``"memory"``, ``"sqlite:///path/to/file.db"`` or a PostgreSQL URL
    (``postgresql://...``)."""
    check_key(key)
    rates = pacing_rates(per_second)
    if backend == "memory":
        return SharedRateLimiter(key, per_second, InMemoryBucket(rates), MemoryPauseStore())
    if backend.startswith("sqlite:///"):
        path = backend.removeprefix("sqlite:///")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        bucket = SQLiteBucket.init_from_file(
            rates, table=bucket_table(key, backend), db_path=path, use_file_lock=True
        )
        pauses = SqlPauseStore(lambda: sqlite_connection(path), "?")
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
        pauses = PostgresPauseStore(autocommit(pool), "%s")
        return SharedRateLimiter(key, per_second, bucket, pauses, now_ms=ServerClock(bucket.now))
    raise ValueError(f"unknown rate-limit backend {backend!r}")


def _no_fsync_wait(conn: Any) -> None:
    """Session setting for the PostgreSQL limiter's connections (see ``build_limiter``)."""
    conn.execute("SET synchronous_commit = off")
    conn.commit()
