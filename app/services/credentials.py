"""Provider credentials, encrypted at rest. Nothing here returns a secret except
``reveal`` (through ``resolver``), which only building an oracle calls. Deleting one drops
its secret and keeps a tombstone row, so the jobs that used it keep their history."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from adapters.errors import ConfigurationError
from app.jobs.lifecycle import FINAL
from app.storage.crypto import SecretBox
from app.storage.models import Credential, Job, utcnow

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
        if row is None or row.deleted_at is not None:
            raise ConfigurationError("the job's credential was deleted")
        return reveal(box, row)

    return secret


def active_job_using(session: Session, credential_id: str) -> Job | None:
    """A queued or running job that uses the credential (it cannot be deleted while one
    does: cancel the job first, or let it finish)."""
    q = select(Job).where(Job.credential_id == credential_id, Job.status.not_in(FINAL))
    return session.scalars(q.order_by(Job.created_at).limit(1)).first()


def delete(session: Session, row: Credential) -> None:
    """Drop the secret and its name; the row stays as a tombstone for the jobs that used it
    (their ``credential_id`` and the ledger's keep naming it). The caller checks first that
    no active job uses it."""
    row.ciphertext, row.name, row.deleted_at = b"", None, utcnow()


def list_for(session: Session, tenant_id: str) -> list[Credential]:
    q = select(Credential).where(Credential.tenant_id == tenant_id, Credential.deleted_at.is_(None))
    return list(session.scalars(q.order_by(Credential.created_at)))
