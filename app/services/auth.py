"""Tenants and their bearer tokens. Tokens are 32 random bytes shown once; only their SHA-256
is stored (a slow hash buys nothing against a random 256-bit secret), with the last 4
characters as a hint for telling them apart.

Every request reads its token's row: one indexed query (joined with the tenant, or with the
job it asks for in ``app.api.lean``), so there is no cache to go stale. A revoked token is
refused by the next request to any API process, on any machine. (A TTL cache once saved
that query and kept revoked tokens working for up to 30 s; in a request that reads the
database anyway the query adds about 0.1 ms of CPU, BENCHMARKS.md §9, and the status read
does it in the same statement as the job.)
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from app.storage.models import Tenant, Token, utcnow

PREFIX = "rp_"


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, *, tenant_name: str) -> str:
    """A new token for ``tenant_name`` (the tenant is created on first use)."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
    if tenant is None:
        tenant = Tenant(name=tenant_name)
        session.add(tenant)
        session.flush()
    token = PREFIX + secrets.token_urlsafe(32)
    session.add(Token(tenant_id=tenant.id, token_hash=digest(token), hint=token[-4:]))
    return token


# Built once: building the statement for every request cost 3× what running it costs.
TENANT_OF_TOKEN = (
    select(Tenant.id, Tenant.name)
    .join(Token, Token.tenant_id == Tenant.id)
    .where(Token.token_hash == bindparam("digest"), Token.revoked_at.is_(None))
)


def tenant_for_token(session: Session, token: str) -> Tenant | None:
    """The tenant a live (not revoked) token belongs to, in one query; None otherwise."""
    row = session.execute(TENANT_OF_TOKEN, {"digest": digest(token)}).first()
    return None if row is None else Tenant(id=row.id, name=row.name)  # detached: id and name


class Tokens:
    """``app.state.services.tokens``: who a bearer token is, asked of the database every
    time (see the module's docstring for why there is no cache)."""

    def tenant(self, session: Session, token: str) -> Tenant | None:
        return tenant_for_token(session, token)


@dataclass(frozen=True)
class TokenInfo:
    """A token as ``reprogram token list`` shows it: never the secret, at most its last 4
    characters."""

    id: str
    tenant: str
    created_at: datetime
    hint: str | None
    revoked_at: datetime | None


def list_tokens(session: Session, tenant_name: str | None = None) -> list[TokenInfo]:
    q = (
        select(Token.id, Tenant.name, Token.created_at, Token.hint, Token.revoked_at)
        .join(Tenant, Tenant.id == Token.tenant_id)
        .order_by(Tenant.name, Token.created_at)
    )
    if tenant_name is not None:
        q = q.where(Tenant.name == tenant_name)
    return [TokenInfo(*row) for row in session.execute(q)]


class UnknownToken(LookupError):
    """No such token (or tenant) to revoke."""


def revoke(session: Session, *, token: str | None = None, tenant_name: str | None = None) -> int:
    """Revoke one token (the secret itself, or its id ``tk_…`` from ``token list``) or every
    live token of a tenant. Returns how many were revoked (already revoked ones count 0);
    raises UnknownToken when nothing matches."""
    if (token is None) == (tenant_name is None):
        raise ValueError("name a token or a tenant, not both")
    if token is not None:
        match = Token.token_hash == digest(token)
        if token.startswith("tk_"):
            match = match | (Token.id == token)
        if session.scalar(select(Token.id).where(match)) is None:
            raise UnknownToken("no such token")
    else:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == tenant_name))
        if tenant_id is None:
            raise UnknownToken(f"no tenant named {tenant_name!r}")
        match = Token.tenant_id == tenant_id
    done = session.execute(
        update(Token).where(match, Token.revoked_at.is_(None)).values(revoked_at=utcnow())
    )
    return int(done.rowcount or 0)
