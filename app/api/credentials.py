"""POST/GET/DELETE /v1/credentials. Secrets go in and never come out; a deleted one's secret
is gone, while the jobs that used it keep naming it."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from app.api.deps import CurrentTenant, ServicesDep, SessionDep, find_owned
from app.api.errors import check_storable, deletion
from app.api.paging import PageDep
from app.services import credentials
from app.storage.models import Credential

router = APIRouter(prefix="/v1/credentials", tags=["credentials"])


class CredentialIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"provider": "clarifai", "secret": "your-api-key", "name": "prod"}]
        },
    )
    provider: Literal["clarifai", "customvision"]
    secret: SecretStr = Field(min_length=1, max_length=4096)
    name: str | None = Field(default=None, max_length=200)


class CredentialOut(BaseModel):
    id: str
    provider: str
    name: str | None = None


@router.post("", status_code=status.HTTP_201_CREATED)
def create(
    body: CredentialIn, s: SessionDep, tenant: CurrentTenant, svc: ServicesDep
) -> CredentialOut:
    """Store a provider key, encrypted with the server key; it is never returned."""
    check_storable(body.model_dump(exclude={"secret"}))
    row = credentials.create(
        s,
        svc.box,
        tenant_id=tenant.id,
        provider=body.provider,
        secret=body.secret.get_secret_value(),
        name=body.name,
    )
    s.flush()
    return CredentialOut(id=row.id, provider=row.provider, name=row.name)


@router.get("")
def list_credentials(s: SessionDep, tenant: CurrentTenant, pager: PageDep) -> list[CredentialOut]:
    """The tenant's credentials (never their secrets), oldest first, one page at a time."""
    rows = pager.rows(s, Credential, tenant.id)
    return [CredentialOut(id=r.id, provider=r.provider, name=r.name) for r in rows]


@router.delete(
    "/{credential_id}",
    **deletion("credential", "a queued or running job uses it (the message names the job)"),
)
def delete(credential_id: str, s: SessionDep, tenant: CurrentTenant) -> None:
    """Delete a credential: its secret is erased. Finished jobs that used it keep their
    history (and their `credential_id`), but cannot `predict` any more; a queued or running
    job that uses it must be cancelled (or finish) first."""
    row = find_owned(s, Credential, credential_id, tenant.id)
    user = credentials.active_job_using(s, row.id)
    if user is not None:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"credential in use by job {user.id} ({user.status}); cancel the job first",
        )
    credentials.delete(s, row)
