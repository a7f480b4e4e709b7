"""The query ledger in the database: one row per request sent, and the job's live totals.

Budgets hold across processes because a reservation is a single conditional UPDATE
(``spent + reserved + n ≤ cap``) that the database serialises: two workers can never both
take the last images of a budget. Settling releases the reservation, adds what the provider
answered and writes the ledger row in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from adapters.dispatch import NOT_SENT, RequestRecord
from adapters.errors import BudgetExceeded
from app.jobs.lifecycle import LeaseLost, release_reservation
from app.storage.db import Database
from app.storage.models import Job, LedgerEntry, ProviderCounter


@dataclass
class DbLedger:
    db: Database
    job_id: str
    tenant_id: str
    provider: str
    credential_id: str | None
    price: float
    lease: str | None = None  # when set, only the lease holder may spend
    # Predictions after training are ledgered (and in /v1/spend) but are not part of the
    # job's training spend or budget.
    training: bool = True

    def reserve(self, purpose: str, images: int) -> _DbReservation:
        if not self.training:
            return _DbReservation(self, purpose, images)
        cond = [Job.id == self.job_id]
        cond.append(
            (Job.query_cap.is_(None))
            | (Job.queries + Job.reserved_queries + images <= Job.query_cap)
        )
        if self.lease is not None:
            cond.append(Job.lease == self.lease)
        with self.db.session() as s:
            done = s.execute(
                update(Job).where(*cond).values(reserved_queries=Job.reserved_queries + images)
            ).rowcount
            if done == 0:
                job = s.get(Job, self.job_id)
                if job is not None and self.lease is not None and job.lease != self.lease:
                    raise LeaseLost(self.job_id)
                spent = job.queries if job else 0
                cap = job.query_cap if job else 0
                raise BudgetExceeded(
                    f"{images} more images would exceed the budget of {cap} queries ({spent} spent)"
                )
        return _DbReservation(self, purpose, images)

    def settle(self, held: int, record: RequestRecord) -> None:
        cost = record.answered * self.price
        if record.outcome == NOT_SENT:  # never left: release the hold, no request, no row
            if self.training:
                with self.db.session() as s:
                    s.execute(
                        update(Job)
                        .where(Job.id == self.job_id)
                        .values(reserved_queries=release_reservation(held))
                    )
            return
        with self.db.session() as s:
            if self.training:
                s.execute(
                    update(Job)
                    .where(Job.id == self.job_id)
                    .values(
                        reserved_queries=release_reservation(held),
                        queries=Job.queries + record.answered,
                        requests=Job.requests + 1,
                        cost_usd=Job.cost_usd + cost,
                    )
                )
            add_counters(s, self.provider, counts_of(record, cost))
            s.add(
                LedgerEntry(
                    job_id=self.job_id,
                    tenant_id=self.tenant_id,
                    provider=self.provider,
                    credential_id=self.credential_id,
                    purpose=record.purpose,
                    images=record.images,
                    answered=record.answered,
                    outcome=record.outcome[:40],
                    cost_usd=cost,
                    request_id=record.request_id,
                    seconds=record.seconds,
                )
            )


# The provider counters (``ProviderCounter.name``) and what each counts.
COUNTERS = {
    "requests": "requests sent, by outcome (ok, partial, or the error's kind)",
    "images_sent": "images sent",
    "images": "images answered (what the provider bills)",
    "cost_usd": "dollars, at the configured price per image",
    "retries": "requests that were a retry of an earlier attempt",
    "ratelimit_waits": "requests the shared rate limiter held back",
    "ratelimit_wait_seconds": "seconds requests spent held back by the rate limiter",
}
WAITED = 0.001  # a limiter acquire longer than this was held back


def counts_of(record: RequestRecord, cost: float) -> dict[tuple[str, str], float]:
    """What one request adds to its provider's counters, by (name, label)."""
    counts = {
        ("requests", record.outcome[:40]): 1.0,
        ("images_sent", ""): float(record.images),
        ("images", ""): float(record.answered),
        ("cost_usd", ""): cost,
        ("retries", ""): 1.0 if record.attempt > 1 else 0.0,
        ("ratelimit_waits", ""): 1.0 if record.waited > WAITED else 0.0,
        ("ratelimit_wait_seconds", ""): record.waited,
    }
    return {key: value for key, value in counts.items() if value}


def add_counters(session: Session, provider: str, counts: dict[tuple[str, str], float]) -> None:
    """Add to the provider's counters in one statement (an upsert on SQLite and PostgreSQL).
    Rows go in a fixed order, so concurrent transactions lock them in the same order."""
    if not counts:
        return
    rows = [
        {"provider": provider, "name": name, "label": label, "value": value}
        for (name, label), value in sorted(counts.items())
    ]
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(ProviderCounter).values(rows)
    stmt = stmt.on_conflict_do_update(
        index_elements=["provider", "name", "label"],
        set_={"value": ProviderCounter.value + stmt.excluded.value},
    )
    session.execute(stmt)


@dataclass
class _DbReservation:
    ledger: DbLedger
    purpose: str
    images: int

    def settle(self, record: RequestRecord) -> None:
        self.ledger.settle(self.images, record)


def totals_by_purpose(db: Database, job_id: str) -> dict[str, object]:
    """The job's training spend (predictions excluded) in the shape of
    ``app.jobs.accounting.Totals.as_dict``."""
    with db.session() as s:
        rows = s.execute(
            select(
                LedgerEntry.purpose,
                func.sum(LedgerEntry.answered),
                func.count(),
                func.sum(LedgerEntry.cost_usd),
                func.sum(LedgerEntry.images),
            )
            .where(LedgerEntry.job_id == job_id, LedgerEntry.purpose != "predict")
            .group_by(LedgerEntry.purpose)
        ).all()
    by = {
        p: {"queries": int(q or 0), "requests": int(r), "cost_usd": round(float(c or 0), 6)}
        for p, q, r, c, _ in rows
    }
    return {
        "queries": sum(v["queries"] for v in by.values()),
        "requests": sum(v["requests"] for v in by.values()),
        "images_sent": sum(int(i or 0) for *_, i in rows),
        "cost_usd": round(sum(v["cost_usd"] for v in by.values()), 6),
        "by_purpose": by,
    }


def spend(db: Database, tenant_id: str) -> dict[str, object]:
    """Queries, requests and cost by oracle (provider) and by job for a tenant."""
    cols = (func.sum(LedgerEntry.answered), func.count(), func.sum(LedgerEntry.cost_usd))

    def rows(key):  # type: ignore[no-untyped-def]
        with db.session() as s:
            q = select(key, *cols).where(LedgerEntry.tenant_id == tenant_id).group_by(key)
            return {
                k: {"queries": int(a or 0), "requests": int(r), "cost_usd": round(float(c or 0), 6)}
                for k, a, r, c in s.execute(q)
            }

    by_oracle, by_job = rows(LedgerEntry.provider), rows(LedgerEntry.job_id)
    total = {k: sum(v[k] for v in by_oracle.values()) for k in ("queries", "requests")}
    total["cost_usd"] = round(sum(v["cost_usd"] for v in by_oracle.values()), 6)
    return {"total": total, "by_oracle": by_oracle, "by_job": by_job}
