"""Where the shared "do not send before" instants live: memory (one process), or one table
on SQLite or PostgreSQL (every process that reaches the database)."""

from __future__ import annotations

import sqlite3
import threading
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any


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
def sqlite_connection(path: str) -> Iterator[sqlite3.Connection]:
    """A connection to the SQLite file at ``path`` that commits on success and is closed
    after: what ``SqlPauseStore`` wants on SQLite (placeholder ``"?"``)."""
    conn = sqlite3.connect(path, timeout=30)
    try:
        with conn:  # commits on success
            yield conn
    finally:
        conn.close()


def autocommit(pool: Any) -> Callable[[], AbstractContextManager]:
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
