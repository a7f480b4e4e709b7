"""Shared fixtures: small real data sets, isolated PostgreSQL databases. The functions behind
them live in ``tests/helpers.py``, with the other helpers test modules share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.helpers import create_database, digits_npz, drop_database, service_settings

if TYPE_CHECKING:
    from app.config.settings import Settings


@pytest.fixture(scope="session")
def small_npz() -> bytes:
    return digits_npz()


@pytest.fixture
def small_npz_path(tmp_path: Path, small_npz: bytes) -> Path:
    path = tmp_path / "digits.npz"
    path.write_bytes(small_npz)
    return path


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    url = create_database()
    try:
        yield url
    finally:
        drop_database(url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings of an in-process service under ``tmp_path``: once on SQLite, once (marked
    ``postgres``) on a fresh PostgreSQL database."""
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    return service_settings(tmp_path, url)
