"""The one migration chain runs up, down and up again on SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from app.jobs import lifecycle
from app.storage.db import Database
from app.storage.migrate import downgrade, upgrade
from app.storage.models import Tenant
from tests.helpers import seed_job

TABLES = {
    "tenants",
    "tokens",
    "datasets",
    "credentials",
    "jobs",
    "checkpoints",
    "paid_answers",
    "ledger",
}


def tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_chain_round_trip(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path}/m.db" if backend == "sqlite" else request.getfixturevalue("pg_url")
    upgrade(url)
    assert tables(url) >= TABLES
    downgrade(url, "base")
    assert not TABLES & tables(url)
    upgrade(url)
    assert tables(url) >= TABLES


@pytest.mark.parametrize(
    ("table", "column"), [("checkpoints", "state"), ("paid_answers", "answers")]
)
def test_float_blobs_are_stored_uncompressed_on_postgres(
    pg_url: str, table: str, column: str
) -> None:
    upgrade(pg_url)
    engine = sa.create_engine(pg_url)
    try:
        with engine.connect() as c:
            storage = c.exec_driver_sql(
                "SELECT attstorage FROM pg_attribute "
                f"WHERE attrelid = '{table}'::regclass AND attname = '{column}'"
            ).scalar()
    finally:
        engine.dispose()
    assert storage == "e"  # EXTERNAL: out of line, never compressed


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_deletion_tombstones_come_and_go(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """0004 adds ``deleted_at`` to the tables whose rows can be deleted, and takes it away."""
    url = f"sqlite:///{tmp_path}/m.db" if backend == "sqlite" else request.getfixturevalue("pg_url")

    def tombstoned() -> set[str]:
        engine = sa.create_engine(url)
        try:
            inspector = sa.inspect(engine)
            present = TABLES & set(inspector.get_table_names())  # 0003 has no paid_answers
            return {
                t for t in present if "deleted_at" in {c["name"] for c in inspector.get_columns(t)}
            }
        finally:
            engine.dispose()

    upgrade(url)
    assert tombstoned() == {"datasets", "credentials", "jobs"}
    downgrade(url, "0003")
    assert tombstoned() == set()
    upgrade(url)
    assert tombstoned() == {"datasets", "credentials", "jobs"}


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_answers_a_waiting_job_carried_become_its_first_paid_pack(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """0009 moves a job's ``carried_answers`` row (kept over a wait for the quota) into
    ``paid_answers``, bytes unchanged, so the job does not pay for them after the upgrade."""
    url = f"sqlite:///{tmp_path}/m.db" if backend == "sqlite" else request.getfixturevalue("pg_url")
    upgrade(url)
    db = Database(url)
    with db.session() as s:
        s.add(Tenant(id="tn_a", name="a"))
    seed_job(db, "a", id="job_w", provider="customvision", query_cap=100)
    db.dispose()
    downgrade(url, "0008")
    engine = sa.create_engine(url)
    try:
        with engine.begin() as c:
            c.execute(
                sa.text(
                    "INSERT INTO carried_answers (job_id, answers, created_at) "
                    "VALUES ('job_w', :a, CURRENT_TIMESTAMP)"
                ),
                {"a": b"\x00packed answers\xff"},
            )
    finally:
        engine.dispose()
    upgrade(url)
    db = Database(url)
    try:
        assert lifecycle.paid_answers(db, "job_w") == [b"\x00packed answers\xff"]
    finally:
        db.dispose()
    assert "carried_answers" not in tables(url)
