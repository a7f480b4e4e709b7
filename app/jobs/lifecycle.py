"""A job's state transitions and its lease: the only module that changes ``Job.status``.

::

    queued ──claim──▶ running ──finish──▶ succeeded | failed | cancelled | budget_exhausted
      ▲                  │
      └──── requeue ─────┘  (its process died: lease gone stale, or the queue said so)
      └─ wait_for_quota ─┘  (the oracle's quota is used up: queued, claimable again
                              from not_before; production's wake_waiting defers it then)
    queued ──cancel──▶ cancelled           running + stale + cancel requested ──▶ cancelled

One execution at a time holds a job's *lease* (a random token). While it runs, a heartbeat
thread refreshes ``heartbeat_at`` every ``HEARTBEAT`` seconds, so a lease that has been
silent for ``LEASE_TIMEOUT`` belongs to a dead process, however long one iteration takes.
Every write by an execution is conditional on its lease: a process that lost its lease
(another took over) can neither spend nor write. Taking a lease over releases the dead
holder's budget reservations (the images it had reserved were never answered to us, or their
answers died with it), so a crash never leaks budget.

The worker (``app.jobs.execute``), the queue and the embedded runner (``app.jobs.queue``) and
the API (``app.services.jobs``) only call these functions.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import case, delete, select, update
from sqlalchemy.orm import Session

from app.storage.db import Database
from app.storage.models import Checkpoint, Job, MetricRow, PaidAnswers, utcnow

log = logging.getLogger("reprogram.lifecycle")

HEARTBEAT = timedelta(seconds=2)
LEASE_TIMEOUT = timedelta(seconds=10)  # five missed heartbeats: the holder is gone


class Status(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    BUDGET_EXHAUSTED = "budget_exhausted"


FINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.BUDGET_EXHAUSTED})


class LeaseLost(Exception):
    """Another execution has taken this job over; this one must stop."""


def new_lease() -> str:
    return secrets.token_hex(16)


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _is_stale(job: Job) -> bool:
    return job.heartbeat_at is None or utcnow() - _aware(job.heartbeat_at) > LEASE_TIMEOUT


def claim(db: Database, job_id: str, lease: str, *, force: bool = False) -> Job | None:
    """Take the job's lease if it is queued, or running under a lease that went silent
    (its process died). ``force`` takes a running job over at once (the queue has already
    decided its worker is dead). A job whose cancel was requested ends ``cancelled`` here
    instead of running. Returns the job, or None if it is not ours to run."""
    with db.session() as s:
        job = s.get(Job, job_id)
        if job is None or job.status in FINAL:
            return None
        if job.status == Status.RUNNING and not (force or _is_stale(job)):
            return None
        if job.status == Status.QUEUED and not _due(job):
            return None  # waiting for its oracle's quota; woken when it is due
        cond = [Job.id == job_id, Job.status == job.status]
        cond.append(Job.lease.is_(None) if job.lease is None else Job.lease == job.lease)
        if job.cancel_requested:
            s.execute(update(Job).where(*cond).values(**_cancelled_values()))
            return None
        won = s.execute(
            update(Job)
            .where(*cond)
            .values(
                status=Status.RUNNING,
                lease=lease,
                heartbeat_at=utcnow(),
                attempts=Job.attempts + 1,
                started_at=job.started_at or utcnow(),
                # The previous holder is dead: what it had reserved will never settle.
                reserved_queries=0,
                not_before=None,
                waiting=None,
            )
        ).rowcount
        return s.get(Job, job_id) if won else None


def _cancelled_values() -> dict[str, Any]:
    return {
        "status": Status.CANCELLED,
        "lease": None,
        "reserved_queries": 0,
        "finished_at": utcnow(),
        "not_before": None,
        "waiting": None,
    }


def save_plan(
    db: Database,
    job_id: str,
    lease: str,
    *,
    resolved_spec: dict[str, Any],
    choices: list[str],
    iterations: int,
) -> None:
    with db.session() as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id, Job.lease == lease)
            .values(resolved_spec=resolved_spec, choices=choices, iterations=iterations)
        )


def record_progress(
    db: Database,
    job_id: str,
    lease: str,
    *,
    iteration: int,
    iterations: int,
    state: bytes,
    metrics_row: Callable[[Job], dict[str, Any]] | None,
    seq: int,
) -> bool:
    """One iteration's checkpoint, metrics row and progress in one transaction under the
    lease; ``metrics_row`` builds the row from the job's spend as of this transaction. The
    answers paid for since the last checkpoint go: this one holds what they taught. Returns
    whether a cancel has been requested; raises LeaseLost."""
    with db.session() as s:
        job = s.get(Job, job_id, with_for_update=not db.is_sqlite)
        if job is None or job.lease != lease:
            raise LeaseLost(job_id)
        ckpt = s.get(Checkpoint, job_id)
        if ckpt is None:
            s.add(Checkpoint(job_id=job_id, iteration=iteration, state=state))
        else:
            ckpt.state, ckpt.iteration, ckpt.updated_at = state, iteration, utcnow()
        job.iteration, job.iterations = iteration, iterations
        job.heartbeat_at = utcnow()
        job.quota_waits = 0  # it progressed: the quota it waited for came back
        drop_paid_answers(s, job_id)
        if metrics_row is not None:
            row = metrics_row(job)
            s.add(MetricRow(job_id=job_id, seq=seq, row=row))
            job.metrics = row
        return bool(job.cancel_requested)


def cancel_requested(db: Database, job_id: str) -> bool:
    with db.session() as s:
        return bool(s.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def heartbeat(db: Database, job_id: str, lease: str) -> bool:
    """Refresh the lease; False if it is no longer ours."""
    with db.session() as s:
        return bool(
            s.execute(
                update(Job)
                .where(Job.id == job_id, Job.lease == lease, Job.status == Status.RUNNING)
                .values(heartbeat_at=utcnow())
            ).rowcount
        )


class Heartbeat:
    """Keeps a lease alive from a background thread while the job computes (one iteration
    of a slow cloud oracle can take longer than the lease timeout)."""

    def __init__(self, db: Database, job_id: str, lease: str) -> None:
        self.db, self.job_id, self.lease = db, job_id, lease
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{job_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT.total_seconds()):
            try:
                if not heartbeat(self.db, self.job_id, self.lease):
                    return
            except Exception:  # a database hiccup: the next beat tries again
                log.warning("job %s: heartbeat failed", self.job_id, exc_info=True)


def finish(db: Database, job_id: str, lease: str, status: Status, **values: Any) -> bool:
    """The final status (with result, error, program) written under the lease."""
    assert status in FINAL
    with db.session() as s:
        won = s.execute(
            update(Job)
            .where(Job.id == job_id, Job.lease == lease)
            .values(status=status, finished_at=utcnow(), reserved_queries=0, **values)
        ).rowcount
        if won:
            drop_paid_answers(s, job_id)
        return bool(won)


def process_exited(db: Database, job_id: str, exitcode: int | None, *, requeue: bool) -> None:
    """A job's process ended without finishing it: back to the queue (a shutdown), or
    failed with the exit code (it was killed or crashed)."""
    values: dict[str, Any] = (
        {"status": Status.QUEUED, "lease": None, "reserved_queries": 0}
        if requeue
        else {
            "status": Status.FAILED,
            "error": f"the job's process exited with code {exitcode}",
            "finished_at": utcnow(),
            "reserved_queries": 0,
        }
    )
    with db.session() as s:
        s.execute(
            update(Job).where(Job.id == job_id, Job.status == Status.RUNNING).values(**values)
        )


def requeue_stale(db: Database) -> list[str]:
    """Jobs left running by a process that died go back to the queue (or end cancelled,
    if that was asked). Returns the requeued ids."""
    limit = utcnow() - LEASE_TIMEOUT
    stale = (
        Job.status == Status.RUNNING,
        (Job.heartbeat_at.is_(None)) | (Job.heartbeat_at < limit),
    )
    with db.session() as s:
        s.execute(update(Job).where(*stale, Job.cancel_requested).values(**_cancelled_values()))
        ids = list(s.scalars(select(Job.id).where(*stale)))
        if ids:
            s.execute(
                update(Job)
                .where(Job.id.in_(ids), *stale)
                .values(status=Status.QUEUED, lease=None, reserved_queries=0)
            )
    for job_id in ids:
        log.warning("job %s: its process is gone; requeued", job_id)
    return ids


def _due(job: Job) -> bool:
    return job.not_before is None or _aware(job.not_before) <= utcnow()


def wait_for_quota(
    db: Database,
    job_id: str,
    lease: str,
    *,
    seconds: float,
    max_waits: int,
    reason: str,
) -> datetime | None:
    """Put a running job back in the queue until ``seconds`` from now, because its oracle's
    quota is used up (``reason``, in words); its checkpoint stays, so it resumes where it
    was, and so do the answers it paid for since (``paid_answers``). Returns when it may run
    again, or None when it has already waited ``max_waits`` times without progress (then the
    caller fails it)."""
    until = utcnow() + timedelta(seconds=seconds)
    with db.session() as s:
        won = s.execute(
            update(Job)
            .where(Job.id == job_id, Job.lease == lease, Job.quota_waits < max_waits)
            .values(
                status=Status.QUEUED,
                lease=None,
                reserved_queries=0,
                not_before=until,
                waiting=reason,
                quota_waits=Job.quota_waits + 1,
            )
        ).rowcount
    return until if won else None


def save_answers(db: Database, job_id: str, lease: str, pack: bytes) -> bool:
    """Keep one request's answers (``pack_answers``) until the job's next checkpoint, while
    the lease is ours (the job row locked meanwhile, so that no finish or takeover leaves
    them behind); False when it is not."""
    with db.session() as s:
        held = s.scalar(
            select(Job.id)
            .where(Job.id == job_id, Job.lease == lease, Job.status == Status.RUNNING)
            .with_for_update()
        )
        if held is not None:
            s.add(PaidAnswers(job_id=job_id, answers=pack, created_at=utcnow()))
        return held is not None


def drop_paid_answers(session: Session, job_id: str) -> None:
    """The answers paid for since the last checkpoint are held by a newer one, or will
    never be used: gone."""
    session.execute(delete(PaidAnswers).where(PaidAnswers.job_id == job_id))


def paid_answers(db: Database, job_id: str) -> list[bytes]:
    """The packs of answers the job's earlier executions paid for since its checkpoint, in
    the order they came."""
    with db.session() as s:
        return list(
            s.scalars(
                select(PaidAnswers.answers)
                .where(PaidAnswers.job_id == job_id)
                .order_by(PaidAnswers.id)
            )
        )


def due_waiting(db: Database) -> list[tuple[str, datetime]]:
    """Queued jobs whose wait for their quota is over: (id, not_before) each."""
    with db.session() as s:
        rows = s.execute(
            select(Job.id, Job.not_before).where(
                Job.status == Status.QUEUED, Job.not_before.is_not(None), Job.not_before <= utcnow()
            )
        )
        return [(job_id, when) for job_id, when in rows]


def woken(db: Database, job_id: str, not_before: datetime) -> None:
    """A due job has been handed to the queue: clear its wait (only the one that was due,
    should it have waited again since)."""
    with db.session() as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id, Job.not_before == not_before)
            .values(not_before=None, waiting=None)
        )


def next_queued(db: Database, exclude: set[str]) -> str | None:
    """The oldest queued job not in ``exclude`` and not waiting for its oracle's quota."""
    with db.session() as s:
        query = select(Job.id).where(
            Job.status == Status.QUEUED,
            ~Job.cancel_requested,
            Job.not_before.is_(None) | (Job.not_before <= utcnow()),
        )
        if exclude:
            query = query.where(Job.id.not_in(exclude))
        return s.scalar(query.order_by(Job.created_at).limit(1))


def request_cancel(session: Session, job: Job) -> None:
    """A queued job ends at once; a running one stops within one iteration (or, if its
    process is gone, at once)."""
    if job.status in FINAL:
        return
    job.cancel_requested = True
    if job.status == Status.QUEUED or (job.status == Status.RUNNING and _is_stale(job)):
        for key, value in _cancelled_values().items():
            setattr(job, key, value)
        # a job cancelled while it waits for its quota will not use what it paid for
        drop_paid_answers(session, job.id)


def release_reservation(held: int) -> Any:
    """The SQL expression for ``reserved_queries - held``, never below zero (a holder that
    lost its lease may settle after the new holder reset the reservations)."""
    return case(
        (Job.reserved_queries >= held, Job.reserved_queries - held),
        else_=0,
    )


def discard_unqueued(session: Session, job_id: str) -> None:
    """Take back a job that never reached the queue (still queued, nothing ran)."""
    job = session.get(Job, job_id)
    if job is not None and job.status == Status.QUEUED:
        session.delete(job)
