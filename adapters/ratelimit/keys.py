"""Bucket names: one per (provider, credential), safe to put in a table name."""

from __future__ import annotations

import hashlib
import re

_KEY = re.compile(r"[A-Za-z0-9_]{1,40}")  # becomes part of a table name


def credential_key(provider: str, secret: str) -> str:
    """A stable, non-reversible bucket name for (provider, credential)."""
    digest = hashlib.sha256(f"{provider}\0{secret}".encode()).hexdigest()[:16]
    return f"{provider}_{digest}"


def check_key(key: str) -> None:
    """Refuse a key that cannot be part of a table name."""
    if not _KEY.fullmatch(key):
        raise ValueError(f"a limiter key is 1-40 letters, digits or underscores, not {key!r}")


def bucket_table(key: str, backend: str) -> str:
    """The table the bucket of ``key`` lives in on an SQL ``backend`` (for cleanup)."""
    if backend.startswith("sqlite:///"):
        return f"rl_{key}"
    return f"ratelimit___rl_{key}".lower()  # pyrate's PostgresBucket prefixes and lowercases
