"""Provider credentials, encrypted at rest. Nothing here returns a secret except
``reveal``, which only the worker calls to build an oracle."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import Credential
from app.services.crypto import SecretBox

PROVIDERS = ("clarifai", "customvision")


def create(
    session: Session,
    box: SecretBox,
    *,
    tenant_id: str,
    provider: str,
    secret: str,
    name: str | None = None,
) -> Credential:
    row = Credential(tenant_id=tenant_id, provider=provider, name=name, ciphertext=box.seal(secret))
    session.add(row)
    return row


def reveal(box: SecretBox, row: Credential) -> str:
    return box.open(row.ciphertext)


def list_for(session: Session, tenant_id: str) -> list[Credential]:
    q = select(Credential).where(Credential.tenant_id == tenant_id)
    return list(session.scalars(q.order_by(Credential.created_at)))
