"""The API's token cache: a hit skips the database until its TTL runs out; unknown tokens
are never cached."""

from __future__ import annotations

from pathlib import Path

from app.services.auth import TokenCache, create_token
from app.storage.db import Database
from app.storage.migrate import upgrade


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class CountingSession:
    """A real session that counts the statements it runs."""

    def __init__(self, session) -> None:  # type: ignore[no-untyped-def]
        self._s, self.statements = session, 0

    def scalar(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.statements += 1
        return self._s.scalar(*args, **kwargs)

    def get(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.statements += 1
        return self._s.get(*args, **kwargs)


def test_cached_tenant_until_the_ttl_then_read_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    upgrade(url)
    db = Database(url)
    with db.session() as s:
        token = create_token(s, tenant_name="acme")
    clock = Clock()
    cache = TokenCache(ttl=30, clock=clock)
    with db.session() as raw:
        s = CountingSession(raw)
        first = cache.tenant(s, token)  # type: ignore[arg-type]
        assert first is not None and first.name == "acme" and s.statements == 2
        clock.now = 29.0
        again = cache.tenant(s, token)  # type: ignore[arg-type]
        assert again is not None and (again.id, again.name) == (first.id, "acme")
        assert s.statements == 2  # served from the cache
        clock.now = 31.0
        assert cache.tenant(s, token) is not None  # type: ignore[arg-type]
        assert s.statements == 4  # expired: read from the database again
        assert cache.tenant(s, "rp_not-a-token") is None  # type: ignore[arg-type]
        assert cache.tenant(s, "rp_not-a-token") is None  # type: ignore[arg-type]
        assert s.statements == 6  # unknown tokens are asked about every time
    db.dispose()
