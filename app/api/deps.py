"""Typed dependencies: the database session, the calling tenant, owned objects."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.config.settings import Settings
from app.services.auth import Tokens
from app.services.jobs import NotFoundError, get_owned
from app.storage.crypto import SecretBox
from app.storage.db import Database
from app.storage.models import Base, Job, Tenant

M = TypeVar("M", bound=Base)


@dataclass
class Services:
    """Everything the app factory built, on ``app.state.services``."""

    settings: Settings
    db: Database
    box: SecretBox
    queue: Any = None  # procrastinate app (PostgreSQL mode)
    tokens: Tokens = field(default_factory=Tokens)
    reads: Any = None  # app.api.lean.JobReader: job views on a connection per thread
    watch: Any = None  # app.api.events.JobWatch: the process's job poller for event streams


def services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(services)]


def session(svc: ServicesDep) -> Iterator[Session]:
    with svc.db.session() as s:
        yield s


# scope="function": the transaction commits before the response is sent, so a client that
# has its 201 can use what it created at once, and a failed commit is never answered 2xx.
SessionDep = Annotated[Session, Depends(session, scope="function")]
_bearer = HTTPBearer(auto_error=False)


def current_tenant(
    s: SessionDep,
    svc: ServicesDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Tenant:
    if creds is None or creds.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    tenant = svc.tokens.tenant(s, creds.credentials)
    if tenant is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "invalid token", headers={"WWW-Authenticate": "Bearer"}
        )
    return tenant


CurrentTenant = Annotated[Tenant, Depends(current_tenant)]


def plausible_id(obj_id: str) -> bool:
    """Ids are short printable strings (``job_…``); anything else names nothing, and must not
    reach the database (PostgreSQL refuses NUL characters with an error, not a miss)."""
    return 0 < len(obj_id) <= 64 and obj_id.isprintable()


def find_owned(s: Session, model: type[M], obj_id: str, tenant_id: str) -> M:
    """Load, or 404, then check ownership: another tenant's object does not exist for you."""
    try:
        if not plausible_id(obj_id):
            raise NotFoundError(f"{model.__tablename__.rstrip('s')} {obj_id[:64]!r} not found")
        return get_owned(s, model, obj_id, tenant_id)
    except NotFoundError as err:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(err)) from err


def owned_job(job_id: str, s: SessionDep, tenant: CurrentTenant) -> Job:
    return find_owned(s, Job, job_id, tenant.id)


OwnedJob = Annotated[Job, Depends(owned_job)]
