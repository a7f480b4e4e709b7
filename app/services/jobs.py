"""Jobs as tenants see them: creation (with ownership, budget and egress checks), views,
deletion (state changes themselves are ``app.jobs.lifecycle``'s)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from adapters.egress import DEFAULT_ENDPOINTS
from adapters.errors import EndpointRefused
from adapters.torch_local import BUNDLED_MODELS
from app.config.settings import Settings
from app.config.spec import CloudCredential, JobSpec
from app.jobs.accounting import query_cap
from app.jobs.lifecycle import FINAL, drop_paid_answers
from app.storage.models import Base, Checkpoint, Credential, Dataset, Job, MetricRow, utcnow

M = TypeVar("M", bound=Base)


class NotFoundError(LookupError):
    """No such object for this tenant (another tenant's objects do not exist for you)."""


class InvalidRequest(ValueError):
    """The request is well-formed but cannot be carried out; the message names the field."""


class Conflict(Exception):
    """The object cannot change now (e.g. a job still running); the message says why."""


def get_owned(session: Session, model: type[M], obj_id: str, tenant_id: str) -> M:
    """The tenant's object; NotFoundError for another tenant's, an unknown or a deleted one."""
    row = session.get(model, obj_id)
    if (
        row is None
        or getattr(row, "tenant_id", None) != tenant_id
        or getattr(row, "deleted_at", None) is not None
    ):
        raise NotFoundError(f"{model.__tablename__.rstrip('s')} {obj_id!r} not found")
    return row


def create_job(session: Session, settings: Settings, *, tenant_id: str, spec: JobSpec) -> Job:
    if spec.dataset_id is None:
        raise InvalidRequest("dataset_id: required")
    try:
        get_owned(session, Dataset, spec.dataset_id, tenant_id)
    except NotFoundError as err:
        raise InvalidRequest(f"dataset_id: {err}") from err
    provider = spec.oracle.kind
    credential_id = None
    if isinstance(spec.oracle, CloudCredential):
        if spec.oracle.api_key_env is not None:
            raise InvalidRequest(
                "oracle.api_key_env: the server takes keys as stored "
                "credentials; use oracle.credential_id"
            )
        if spec.oracle.credential_id is None:
            raise InvalidRequest("oracle.credential_id: required for a cloud oracle")
        try:
            cred = get_owned(session, Credential, spec.oracle.credential_id, tenant_id)
        except NotFoundError as err:
            raise InvalidRequest(f"oracle.credential_id: {err}") from err
        if cred.provider != provider:
            raise InvalidRequest(
                f"oracle.credential_id: a {cred.provider} credential cannot call {provider}"
            )
        credential_id = cred.id
        # The worker checks again whenever it connects: DNS may change in between.
        endpoint = spec.oracle.endpoint or DEFAULT_ENDPOINTS.get(provider, "")
        try:
            settings.egress.check_submitted(provider, endpoint)
        except EndpointRefused as err:
            raise InvalidRequest(f"oracle.endpoint: {err}") from err
    elif spec.oracle.kind == "torch" and spec.oracle.model not in BUNDLED_MODELS:
        # A file path would let a tenant load any TorchScript on the server's disk.
        raise InvalidRequest(
            f"oracle.model: the service runs a bundled model ({', '.join(BUNDLED_MODELS)}); "
            "TorchScript files are for `reprogram train`"
        )
    b = spec.budget
    job = Job(
        tenant_id=tenant_id,
        dataset_id=spec.dataset_id,
        credential_id=credential_id,
        provider=provider,
        spec=spec.model_dump(mode="json", exclude_none=True),
        max_queries=b.max_queries,
        max_cost_usd=b.max_cost_usd,
        query_cap=query_cap(b.max_queries, b.max_cost_usd, settings.price(provider)),
    )
    session.add(job)
    session.flush()
    return job


def _utc(when: datetime) -> datetime:
    return when if when.tzinfo else when.replace(tzinfo=UTC)  # SQLite gives naive UTC


def view(job: Job) -> dict[str, Any]:
    """The contract's job object (docs/contract.md), plus what was chosen and the result."""
    return {
        "id": job.id,
        "status": job.status,
        "progress": {"iteration": job.iteration, "iterations": job.iterations},
        "spend": {
            "queries": job.queries,
            "requests": job.requests,
            "cost_usd": round(job.cost_usd, 6),
            "max_queries": job.max_queries,
            "max_cost_usd": job.max_cost_usd,
        },
        "metrics": job.metrics or {},
        "error": job.error,
        "waiting": (
            {"until": _utc(job.not_before).isoformat(), "reason": job.waiting}
            if job.status == "queued" and job.not_before is not None
            else None
        ),
        "dataset_id": job.dataset_id,
        "oracle": job.provider,
        "choices": job.choices or [],
        "result": job.result,
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


def delete_job(session: Session, job: Job) -> Path:
    """Delete a finished job: its checkpoint, metrics rows, spec and results go; the row
    stays as a tombstone with its spend, because the ledger rows stay (``/v1/spend`` is
    billing history). Returns the job's artifact folder (relative to the data directory)
    for the caller to remove once this is committed; Conflict while the job is not final."""
    if job.status not in FINAL:
        raise Conflict(f"job {job.id} is {job.status}; cancel it first, then delete it")
    session.execute(delete(Checkpoint).where(Checkpoint.job_id == job.id))
    drop_paid_answers(session, job.id)
    session.execute(delete(MetricRow).where(MetricRow.job_id == job.id))
    job.spec, job.resolved_spec, job.choices = {}, None, None
    job.metrics, job.result, job.error = None, None, None
    job.program_path, job.program_sha256 = None, None
    job.deleted_at = utcnow()
    return Path("artifacts") / job.id


def active_job_using_dataset(session: Session, dataset_id: str) -> Job | None:
    """A queued or running job that reads the data set (it cannot be deleted meanwhile)."""
    q = select(Job).where(Job.dataset_id == dataset_id, Job.status.not_in(FINAL))
    return session.scalars(q.order_by(Job.created_at).limit(1)).first()


def list_for(session: Session, tenant_id: str) -> list[Job]:
    q = select(Job).where(Job.tenant_id == tenant_id, Job.deleted_at.is_(None))
    return list(session.scalars(q.order_by(Job.created_at.desc())))


def metric_rows(session: Session, job_id: str) -> list[dict[str, Any]]:
    """The job's metrics rows (one per iteration / validation), in order."""
    q = select(MetricRow.row).where(MetricRow.job_id == job_id).order_by(MetricRow.seq)
    return list(session.scalars(q))
