"""Provider credentials, encrypted at rest. Nothing here returns a secret except
``reveal`` (through ``resolver``), which only building an oracle calls."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from adapters.errors import ConfigurationError
from app.storage.crypto import SecretBox
from app.storage.models import Credential, Job

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


def resolver(box: SecretBox, row: Credential | None) -> Callable[[object], str]:
    """The secret resolver an oracle is built with, for a job's stored credential: the secret
    is revealed only when the oracle asks for it."""

    def secret(_: object) -> str:
        if row is None:
            raise ConfigurationError("the job's credential no longer exists")
        return reveal(box, row)

    return secret


def job_using(session: Session, credential_id: str) -> str | None:
    """A job that refers to the credential (it cannot be deleted while one does)."""
    return session.scalar(select(Job.id).where(Job.credential_id == credential_id).limit(1))


def list_for(session: Session, tenant_id: str) -> list[Credential]:
    q = select(Credential).where(Credential.tenant_id == tenant_id)
    return list(session.scalars(q.order_by(Credential.created_at)))
