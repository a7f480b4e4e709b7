"""Shared fixtures: small real data sets, isolated PostgreSQL databases, settings."""

from __future__ import annotations

import io
import secrets
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def digits_npz(n_per_class: int = 12, classes: int = 3, size: int = 16, seed: int = 0) -> bytes:
    """Real handwritten digits (scikit-learn's 8×8 set, upscaled) as product.md's .npz."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for c in range(classes):
        idx = rng.permutation(np.flatnonzero(d.target == c))[:n_per_class]
        for i in idx:
            img = (d.images[i] / 16.0 * 255).astype(np.uint8)
            xs.append(np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR)))
            ys.append(c)
    buf = io.BytesIO()
    np.savez(
        buf,
        x=np.stack(xs)[..., None],
        y=np.array(ys),
        classes=np.array([f"digit{c}" for c in range(classes)]),
    )
    return buf.getvalue()


@pytest.fixture(scope="session")
def small_npz() -> bytes:
    return digits_npz()


@pytest.fixture
def small_npz_path(tmp_path: Path, small_npz: bytes) -> Path:
    path = tmp_path / "digits.npz"
    path.write_bytes(small_npz)
    return path


def create_database() -> str:
    name = f"rp_test_{secrets.token_hex(6)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql://postgres@127.0.0.1:5432/{name}"


def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    url = create_database()
    try:
        yield url
    finally:
        drop_database(url)
