"""Typed dependencies: the database session, the calling tenant, owned objects."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.db import Database
from app.models import Job, Tenant
from app.services.auth import tenant_for_token
from app.services.crypto import SecretBox
from app.services.jobs import NotFoundError, get_owned
from app.settings import Settings


@dataclass
class Services:
    """Everything the app factory built, on ``app.state.services``."""

    settings: Settings
    db: Database
    box: SecretBox
    queue: Any = None  # procrastinate app (PostgreSQL mode)


def services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(services)]


def session(svc: ServicesDep) -> Iterator[Session]:
    with svc.db.session() as s:
        yield s


SessionDep = Annotated[Session, Depends(session)]
_bearer = HTTPBearer(auto_error=False)


def current_tenant(
    s: SessionDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Tenant:
    if creds is None or creds.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    tenant = tenant_for_token(s, creds.credentials)
    if tenant is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "invalid token", headers={"WWW-Authenticate": "Bearer"}
        )
    return tenant


CurrentTenant = Annotated[Tenant, Depends(current_tenant)]


def owned_job(job_id: str, s: SessionDep, tenant: CurrentTenant) -> Job:
    """Load, or 404, then check ownership: another tenant's job does not exist for you."""
    try:
        return get_owned(s, Job, job_id, tenant.id)
    except NotFoundError as err:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(err)) from err


OwnedJob = Annotated[Job, Depends(owned_job)]
