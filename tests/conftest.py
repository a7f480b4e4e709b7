"""Shared fixtures: small real data sets, isolated PostgreSQL databases. The functions behind
them live in ``tests/helpers.py``, with the other helpers test modules share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import create_database, digits_npz, drop_database


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
