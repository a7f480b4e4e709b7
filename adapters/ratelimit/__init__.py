"""Rate limits per (provider, credential), shared by every job and every worker process.

A limit is counted in the unit the provider counts (Clarifai: requests/s; Custom Vision:
images/s): ``acquire(weight)`` blocks until ``weight`` units fit. The buckets are
pyrate-limiter's: in memory (one process), SQLite (the embedded mode: every process on the
machine) or PostgreSQL (production: every process on every machine). One pacing rate admits
units evenly spaced at the limit instead of R at the start of each second (bursts are what
providers' token buckets and short windows punish).

A throttle answer slows *every* user of the credential: ``pause(seconds)`` stores a
"nobody sends before" instant in the same backend, which every ``acquire`` honours.

One idea a module:

- ``keys``: bucket names for a credential, and the tables they live in;
- ``pacing``: the pyrate rates that space units evenly at a limit;
- ``stores``: where the shared pauses live (memory, SQLite, PostgreSQL);
- ``clock``: the database's clock, followed locally;
- ``limiter``: ``SharedRateLimiter``, the waiting loop (and why it is not pyrate's);
- ``backends``: a limiter on a backend URL (``build_limiter``);
- ``registry``: one limiter per process and credential (``shared_limiter``);
- ``cleanup``: removing what limiters leave in PostgreSQL (tests, benchmarks).
"""

from adapters.ratelimit.backends import build_limiter
from adapters.ratelimit.cleanup import drop_postgres_state, pause_table_exists
from adapters.ratelimit.clock import ServerClock
from adapters.ratelimit.keys import bucket_table, credential_key
from adapters.ratelimit.limiter import (
    CATCH_UP_MS,
    CONTENTION_RETRY_S,
    LEAK_EVERY_S,
    MIN_SLEEP_S,
    SharedRateLimiter,
)
from adapters.ratelimit.pacing import pacing_rates
from adapters.ratelimit.registry import shared_limiter
from adapters.ratelimit.stores import (
    MemoryPauseStore,
    PauseStore,
    PostgresPauseStore,
    SqlPauseStore,
    sqlite_connection,
)

__all__ = [
    "CATCH_UP_MS",
    "CONTENTION_RETRY_S",
    "LEAK_EVERY_S",
    "MIN_SLEEP_S",
    "MemoryPauseStore",
    "PauseStore",
    "PostgresPauseStore",
    "ServerClock",
    "SharedRateLimiter",
    "SqlPauseStore",
    "bucket_table",
    "build_limiter",
    "credential_key",
    "drop_postgres_state",
    "pacing_rates",
    "pause_table_exists",
    "shared_limiter",
    "sqlite_connection",
]
