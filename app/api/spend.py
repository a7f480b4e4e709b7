"""GET /v1/spend, /healthz, /readyz."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, status
from sqlalchemy import text

from app.api.deps import CurrentTenant, ServicesDep
from app.jobs.ledger import spend as spend_totals

router = APIRouter()


@router.get("/v1/spend", tags=["spend"])
def spend(tenant: CurrentTenant, svc: ServicesDep) -> dict[str, Any]:
    """Queries (images answered), requests and cost, by oracle and by job, from the ledger."""
    return spend_totals(svc.db, tenant.id)


@router.get("/healthz", tags=["health"])
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", tags=["health"])
def readyz(svc: ServicesDep) -> dict[str, str]:
    """The database answers."""
    try:
        with svc.db.session() as s:
            s.execute(text("SELECT 1"))
    except Exception as err:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "database unavailable") from err
    return {"status": "ready"}
