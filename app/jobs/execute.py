"""Execute one job from the database: the service's counterpart of ``app.jobs.local``.

A job is leased to one execution at a time (``jobs.lease``). Every ``tell`` writes the
complete engine state, the metrics row and the progress in one transaction, conditional on
the lease; so a job whose worker dies resumes from its last iteration on any other worker,
and a worker that lost its lease (another took over) stops instead of writing. Cancel takes
effect before the next ask.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from adapters.errors import BudgetExceeded, ConfigurationError, OracleError
from app.config.settings import Settings
from app.config.spec import JobSpec
from app.data.loading import DataError
from app.data.store import load_stored
from app.jobs import runner
from app.jobs.artifacts import npz_bytes, program_arrays
from app.jobs.ledger import DbLedger, LeaseLost, totals_by_purpose
from app.jobs.oracles import open_oracle
from app.services.credentials import resolver
from app.services.jobs import FINAL
from app.storage.crypto import SecretBox
from app.storage.db import Database
from app.storage.models import Checkpoint, Credential, Dataset, Job, MetricRow, utcnow
from engine.trainer import Event, Trainer

log = logging.getLogger("reprogram.worker")
LEASE_TIMEOUT = timedelta(seconds=30)  # a running job silent this long may be taken over


def claim(db: Database, job_id: str, lease: str, *, force: bool = False) -> Job | None:
    """Take the job's lease if it is queued, or running under a lease that went silent
    (its worker died). ``force`` takes over a running job at once (the queue has already
    decided its worker is dead). Returns the job, or None if it is not ours to run."""
    with db.session() as s:
        job = s.get(Job, job_id)
        if job is None or job.status in FINAL:
            return None
        stale = job.heartbeat_at is None or utcnow() - _aware(job.heartbeat_at) > LEASE_TIMEOUT
        if job.status == "running" and not (force or stale):
            return None
        cond = [Job.id == job_id, Job.status == job.status]
        cond.append(Job.lease.is_(None) if job.lease is None else Job.lease == job.lease)
        won = s.execute(
            update(Job)
            .where(*cond)
            .values(
                status="running",
                lease=lease,
                heartbeat_at=utcnow(),
                attempts=Job.attempts + 1,
                started_at=job.started_at or utcnow(),
            )
        ).rowcount
        return s.get(Job, job_id) if won else None


def _aware(ts: Any) -> Any:
    from datetime import UTC

    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


class _Hooks:
    """Checkpoint + metrics + progress in one transaction per tell, under the lease."""

    def __init__(self, db: Database, job_id: str, lease: str, seq: int) -> None:
        self.db, self.job_id, self.lease, self.seq = db, job_id, lease, seq
        self.metrics = runner.MetricRows()
        self._cancel: bool | None = None  # as of the last transaction that read it

    def after_tell(self, trainer: Trainer, event: Event | None) -> None:
        state = trainer.state_bytes()
        with self.db.session() as s:
            job = s.get(Job, self.job_id, with_for_update=not self.db.is_sqlite)
            if job is None or job.lease != self.lease:
                raise LeaseLost(self.job_id)
            self._cancel = job.cancel_requested
            ckpt = s.get(Checkpoint, self.job_id)
            if ckpt is None:
                s.add(Checkpoint(job_id=self.job_id, iteration=trainer.iteration, state=state))
            else:
                ckpt.state, ckpt.iteration, ckpt.updated_at = state, trainer.iteration, utcnow()
            job.iteration, job.iterations = trainer.iteration, trainer.config.iterations
            job.heartbeat_at = utcnow()
            if event is not None:
                row = self.metrics.row(
                    event, queries=job.queries, requests=job.requests, cost_usd=job.cost_usd
                )
                s.add(MetricRow(job_id=self.job_id, seq=self.seq, row=row))
                self.seq += 1
                job.metrics = row

    def cancelled(self) -> bool:
        # after_tell reads the flag in its transaction, just before the next ask; only the
        # first ask of an execution has to ask the database.
        if self._cancel is None:
            with self.db.session() as s:
                self._cancel = bool(
                    s.scalar(select(Job.cancel_requested).where(Job.id == self.job_id))
                )
        return self._cancel


def execute_job(
    db: Database, settings: Settings, job_id: str, *, force: bool = False
) -> str | None:
    """Run (or resume) a job to a final status; returns it, or None if another worker
    holds the job."""
    lease = secrets.token_hex(16)
    job = claim(db, job_id, lease, force=force)
    if job is None:
        return None
    log.info("job %s: running (attempt %d)", job_id, job.attempts)
    start = time.monotonic()
    prepared: runner.PreparedJob | None = None
    error: BaseException | None = None
    try:
        spec = JobSpec.model_validate(job.resolved_spec or job.spec)
        with db.session() as s:
            ds_row = s.get(Dataset, job.dataset_id)
            cred = s.get(Credential, job.credential_id) if job.credential_id else None
            assert ds_row is not None
            ckpt = s.get(Checkpoint, job_id)
            state = ckpt.state if ckpt is not None else None
            seq = s.query(MetricRow).filter(MetricRow.job_id == job_id).count()
        dataset = load_stored(ds_row, settings.data_dir)
        size = runner.input_size_of(spec)
        ledger = DbLedger(
            db,
            job_id,
            job.tenant_id,
            spec.oracle.kind,
            job.credential_id,
            settings.price(spec.oracle.kind),
            lease=lease,
        )
        with open_oracle(
            spec.oracle,
            input_size=size,
            settings=settings,
            ledger=ledger,
            secret=resolver(SecretBox(settings), cred),
        ) as (oracle, dispatcher):
            if state is None:
                runner.discover_labels(oracle, dispatcher, size)
                prepared = runner.prepare(
                    spec, dataset, oracle, query_cap=job.query_cap, spent=_spent(db, job_id)
                )
                _save_plan(db, job_id, lease, prepared)
            else:
                prepared = runner.prepare(spec, dataset, oracle, query_cap=None)
                prepared.trainer.load_state(state)
                prepared.notes = job.choices or []
                _refit_budget(db, job_id, prepared)
            runner.run(prepared.trainer, dispatcher, _Hooks(db, job_id, lease, seq))
    except LeaseLost:
        log.warning("job %s: lease lost to another worker; stopping", job_id)
        return None
    except (runner.Cancelled, BudgetExceeded, OracleError) as err:
        error = err
    except (ConfigurationError, DataError, runner.PlanError, ValueError) as err:
        error = err
    except Exception as err:  # a bug: record it on the job instead of losing the job
        log.exception("job %s crashed", job_id)
        error = err
    return _finish(db, settings, job_id, lease, prepared, error, time.monotonic() - start)


def _spent(db: Database, job_id: str) -> int:
    with db.session() as s:
        return int(s.scalar(select(Job.queries).where(Job.id == job_id)) or 0)


def _save_plan(db: Database, job_id: str, lease: str, job: runner.PreparedJob) -> None:
    with db.session() as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id, Job.lease == lease)
            .values(
                resolved_spec=job.spec.model_dump(mode="json"),
                choices=job.notes,
                iterations=job.trainer.config.iterations,
            )
        )


def _refit_budget(db: Database, job_id: str, job: runner.PreparedJob) -> None:
    """Queries paid for by a crashed attempt are gone: shorten training if the rest of the
    plan no longer fits what is left of the budget."""
    with db.session() as s:
        row = s.get(Job, job_id)
        assert row is not None
        cap, spent = row.query_cap, row.queries
    if cap is None:
        return
    fitted = job.trainer.fit_remaining(cap - spent)
    if fitted < job.trainer.config.iterations:
        job.trainer.set_iterations(fitted)
        job.budget_limited = True


def _finish(
    db: Database,
    settings: Settings,
    job_id: str,
    lease: str,
    job: runner.PreparedJob | None,
    error: BaseException | None,
    seconds: float,
) -> str:
    status = (
        runner.final_status(job, error)
        if job is not None
        else ("cancelled" if isinstance(error, runner.Cancelled) else "failed")
    )
    message = None if error is None or status == "cancelled" else f"{type(error).__name__}: {error}"
    values: dict[str, Any] = {"status": status, "error": message, "finished_at": utcnow()}
    if job is not None:
        result = runner.summarize(job, totals_by_purpose(db, job_id), status, seconds)
        values["result"] = result
        if job.trainer.best_program()[1] is not None:
            arrays = program_arrays(
                job.trainer,
                json.dumps(job.spec.model_dump(mode="json")),
                job.classes,
                job.source_labels,
            )
            blob = npz_bytes(arrays)
            rel = Path("artifacts") / job_id / "program.npz"
            path = settings.data_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.with_suffix(".part").write_bytes(blob)
            path.with_suffix(".part").replace(path)
            values |= {"program_path": str(rel), "program_sha256": hashlib.sha256(blob).hexdigest()}
    with db.session() as s:
        s.execute(update(Job).where(Job.id == job_id, Job.lease == lease).values(**values))
    log.info("job %s: %s", job_id, status)
    return status
