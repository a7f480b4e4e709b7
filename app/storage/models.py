"""Tables. One row per thing a tenant owns; a job carries its live spend and budget
reservation so that a budget check is a single atomic UPDATE on both SQLite and PostgreSQL.

Deleting a data set, a credential or a job leaves a tombstone: the row keeps its id (jobs
and the ledger refer to it: billing history must not vanish) and ``deleted_at``; what the
tenant put in (the secret, the file, the spec, the results) is gone. A tombstone does not
exist for the API (404)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def _ts() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)


def _when() -> Mapped[datetime | None]:
    """A moment that may not have come yet (started, finished, deleted, revoked)."""
    return mapped_column(DateTime(timezone=True), nullable=True)


def _id(prefix: str) -> Mapped[str]:
    return mapped_column(String(32), primary_key=True, default=lambda: new_id(prefix))


class _Owned:
    """What every thing a tenant owns and may delete has: its tenant, when it was made, and
    ``deleted_at`` once it is a tombstone (the module docstring)."""

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    created_at: Mapped[datetime] = _ts()
    deleted_at: Mapped[datetime | None] = _when()


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[str] = _id("tn")
    name: Mapped[str] = mapped_column(String(200), unique=True, nullable=False)
    created_at: Mapped[datetime] = _ts()


class Token(Base):
    __tablename__ = "tokens"
    id: Mapped[str] = _id("tk")
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), nullable=False)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    created_at: Mapped[datetime] = _ts()
    # The token's last 4 characters, to tell tokens apart in `reprogram token list` (NULL for
    # tokens made before 0005); 4 of 43 random characters leave 232 bits unknown.
    hint: Mapped[str | None] = mapped_column(String(8), nullable=True)
    # Revoked tokens keep their row (who had access, and until when) and authenticate nothing.
    revoked_at: Mapped[datetime | None] = _when()


class Dataset(_Owned, Base):
    __tablename__ = "datasets"
    id: Mapped[str] = _id("ds")
    filename: Mapped[str] = mapped_column(String(255))
    path: Mapped[str] = mapped_column(String(500))  # relative to the data directory
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    n_samples: Mapped[int] = mapped_column(Integer)
    classes: Mapped[list[str]] = mapped_column(JSON)
    image_shape: Mapped[list[int] | None] = mapped_column(JSON, nullable=True)
    has_split: Mapped[bool] = mapped_column(Boolean, default=False)


class Credential(_Owned, Base):
    __tablename__ = "credentials"
    id: Mapped[str] = _id("cr")
    provider: Mapped[str] = mapped_column(String(32))
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)  # Fernet token; b"" once deleted


class Job(_Owned, Base):
    __tablename__ = "jobs"
    id: Mapped[str] = _id("job")
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"))
    credential_id: Mapped[str | None] = mapped_column(ForeignKey("credentials.id"), nullable=True)
    provider: Mapped[str] = mapped_column(String(32))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # as submitted
    resolved_spec: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    choices: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    status: Mapped[str] = mapped_column(String(20), default="queued", index=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    iteration: Mapped[int] = mapped_column(Integer, default=0)
    iterations: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Budget and live spend. queries/cost count answered images; reserved_* hold requests
    # in flight. A reservation is one UPDATE ... WHERE spent + reserved + n <= cap.
    max_queries: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    max_cost_usd: Mapped[float | None] = mapped_column(Float, nullable=True)
    query_cap: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    queries: Mapped[int] = mapped_column(BigInteger, default=0)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    reserved_queries: Mapped[int] = mapped_column(BigInteger, default=0)
    # Lease: the worker running the job and when it last proved alive.
    lease: Mapped[str | None] = mapped_column(String(64), nullable=True)
    heartbeat_at: Mapped[datetime | None] = _when()
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # latest row
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    program_path: Mapped[str | None] = mapped_column(String(500), nullable=True)
    program_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_at: Mapped[datetime | None] = _when()
    finished_at: Mapped[datetime | None] = _when()
    # Waiting for the oracle's quota (app.jobs.lifecycle.wait_for_quota): queued, not to be
    # claimed before not_before; why, in words; and the waits since the job last progressed.
    not_before: Mapped[datetime | None] = _when()
    waiting: Mapped[str | None] = mapped_column(Text, nullable=True)
    quota_waits: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Checkpoint(Base):
    """The latest complete engine state of a job (one row, replaced every iteration)."""

    __tablename__ = "checkpoints"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    iteration: Mapped[int] = mapped_column(Integer)
    state: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = _ts()


class PaidAnswers(Base):
    """Answers a job has paid for since its last checkpoint, one pack (``pack_answers``) per
    provider request, written as each request is settled: an execution that dies mid-step,
    or that goes back to the queue to wait for its oracle's quota, leaves them to the next,
    which starts with them in its answer cache instead of paying for them again. Gone at the
    next checkpoint, and when the job ends."""

    __tablename__ = "paid_answers"
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    answers: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = _ts()


class MetricRow(Base):
    __tablename__ = "metrics"
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    seq: Mapped[int] = mapped_column(Integer)
    row: Mapped[dict[str, Any]] = mapped_column(JSON)
    __table_args__ = (Index("ix_metrics_job_seq", "job_id", "seq", unique=True),)


class LedgerEntry(Base):
    """One request sent to an oracle."""

    __tablename__ = "ledger"
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    provider: Mapped[str] = mapped_column(String(32))
    credential_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    purpose: Mapped[str] = mapped_column(String(20))
    images: Mapped[int] = mapped_column(Integer)  # sent
    answered: Mapped[int] = mapped_column(Integer)  # billed
    outcome: Mapped[str] = mapped_column(String(40))
    cost_usd: Mapped[float] = mapped_column(Float)
    request_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = _ts()


class ProviderCounter(Base):
    """Running totals by provider that the ledger adds to in the same transaction as each
    request's row (``app.jobs.ledger``): ``/metrics`` reads these few rows instead of summing
    the ledger, and they count what every process did, wherever it ran. ``name`` is one of
    ``app.jobs.ledger.COUNTERS``; ``label`` the request's outcome for ``requests``."""

    __tablename__ = "provider_counters"
    provider: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    label: Mapped[str] = mapped_column(String(40), primary_key=True, default="")
    value: Mapped[float] = mapped_column(Float, default=0.0, nullable=False)
