"""Tenants and their bearer tokens. Tokens are 32 random bytes shown once; only their SHA-256
is stored (a slow hash buys nothing against a random 256-bit secret)."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable

from cachetools import TTLCache
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.storage.models import Tenant, Token


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, *, tenant_name: str) -> str:
    """A new token for ``tenant_name`` (the tenant is created on first use)."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
    if tenant is None:
        tenant = Tenant(name=tenant_name)
        session.add(tenant)
        session.flush()
    token = "rp_" + secrets.token_urlsafe(32)
    session.add(Token(tenant_id=tenant.id, token_hash=_digest(token)))
    return token


def tenant_for_token(session: Session, token: str) -> Tenant | None:
    row = session.scalar(select(Token).where(Token.token_hash == _digest(token)))
    return None if row is None else session.get(Tenant, row.tenant_id)


class TokenCache:
    """token digest → tenant, for ``ttl`` seconds: an authenticated GET then costs one query
    instead of three. Tokens are never revoked while cached for longer than ``ttl``; at most
    ``maxsize`` are kept (least recently used go first)."""

    def __init__(
        self, ttl: float = 30.0, maxsize: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._hits: TTLCache[str, tuple[str, str]] = TTLCache(maxsize, ttl, timer=clock)
        self._lock = threading.Lock()  # TTLCache is not thread-safe

    def tenant(self, session: Session, token: str) -> Tenant | None:
        digest = _digest(token)
        with self._lock:
            hit = self._hits.get(digest)
        if hit is not None:
            return Tenant(id=hit[0], name=hit[1])  # detached: callers read id and name only
        tenant = tenant_for_token(session, token)
        if tenant is not None:
            with self._lock:
                self._hits[digest] = (tenant.id, tenant.name)
        return tenant
