"""Tokens: one query per authentication (nothing cached that could outlive a revocation),
revocation by token, id or tenant, and a listing that never shows a secret."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import event

from app.services.auth import (
    Tokens,
    UnknownToken,
    create_token,
    list_tokens,
    revoke,
)
from app.storage.db import Database
from app.storage.migrate import upgrade


@pytest.fixture
def db(tmp_path: Path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'a.db'}"
    upgrade(url)
    database = Database(url)
    yield database
    database.dispose()


def test_each_lookup_is_one_query_and_sees_a_revocation_at_once(db: Database) -> None:
    statements: list[str] = []
    event.listen(db.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    with db.session() as s:
        token = create_token(s, tenant_name="acme")
    tokens = Tokens()
    statements.clear()
    with db.session() as s:
        first = tokens.tenant(s, token)
        assert first is not None and first.name == "acme"
        assert tokens.tenant(s, "rp_not-a-token") is None
    assert len(statements) == 2  # one each: the token joined with its tenant
    with db.session() as s:
        assert revoke(s, token=token) == 1
    with db.session() as s:
        assert tokens.tenant(s, token) is None  # no cache window


def test_revoke_by_id_or_tenant_and_list_without_secrets(db: Database) -> None:
    with db.session() as s:
        a1 = create_token(s, tenant_name="acme")
        a2 = create_token(s, tenant_name="acme")
        b = create_token(s, tenant_name="beta")
    with db.session() as s:
        listed = list_tokens(s)
    assert [t.tenant for t in listed] == ["acme", "acme", "beta"]
    assert {t.hint for t in listed} == {a1[-4:], a2[-4:], b[-4:]}
    assert all(t.id.startswith("tk_") and t.revoked_at is None for t in listed)
    shown = repr(listed)
    assert not any(secret[:-4] in shown for secret in (a1, a2, b))
    with db.session() as s:
        assert revoke(s, token=listed[0].id) == 1  # by id, as `token list` shows it
        assert revoke(s, token=listed[0].id) == 0  # already revoked
        assert revoke(s, tenant_name="acme") == 1  # the other one
        with pytest.raises(UnknownToken):
            revoke(s, token="rp_nope")
        with pytest.raises(UnknownToken):
            revoke(s, tenant_name="nobody")
    tokens = Tokens()
    with db.session() as s:
        assert tokens.tenant(s, a1) is None and tokens.tenant(s, a2) is None
        assert tokens.tenant(s, b) is not None
        assert [t.revoked_at is not None for t in list_tokens(s, "acme")] == [True, True]
