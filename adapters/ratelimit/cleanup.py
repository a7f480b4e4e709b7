"""Removing what limiters leave in PostgreSQL: the buckets of some keys, their pauses and, when
nobody else uses it, the pause table (tests and benchmarks that borrow a database)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from adapters.ratelimit.keys import bucket_table
from adapters.ratelimit.stores import SqlPauseStore

PAUSES = SqlPauseStore.TABLE


def pause_table_exists(backend: str) -> bool:
    """Whether the shared pause table is in the PostgreSQL database ``backend``."""
    import psycopg

    with psycopg.connect(backend) as conn:
        return _has_pause_table(conn)


def drop_postgres_state(backend: str, keys: Iterable[str], *, pause_table_existed: bool) -> None:
    """Drop the buckets of ``keys`` and delete their pauses; drop the pause table too when it
    did not exist before (``pause_table_existed``, from ``pause_table_exists``) and no other
    key has a pause in it now."""
    import psycopg
    from psycopg import sql

    keys = list(keys)
    with psycopg.connect(backend, autocommit=True) as conn:
        for key in keys:
            table = sql.Identifier(bucket_table(key, backend))
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
        if _has_pause_table(conn):
            conn.execute(f"DELETE FROM {PAUSES} WHERE key = ANY(%s)", (keys,))
            if not pause_table_existed and not conn.execute(f"SELECT 1 FROM {PAUSES}").fetchone():
                conn.execute(f"DROP TABLE {PAUSES}")


def _has_pause_table(conn: Any) -> bool:
    return conn.execute("SELECT to_regclass(%s)", (PAUSES,)).fetchone()[0] is not None
