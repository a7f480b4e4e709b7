"""Execute one job from the database: the service's counterpart of ``app.jobs.local``.

A job is leased to one execution at a time (``app.jobs.lifecycle``). Every ``tell`` writes
the complete engine state, the metrics row and the progress in one transaction, conditional
on the lease; so a job whose worker dies resumes from its last iteration on any other
worker, and a worker that lost its lease (another took over) stops instead of writing.
Cancel takes effect before the next ask.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

from adapters.dispatch import AnswerCache
from adapters.errors import QuotaExhausted
from app.config.settings import Settings
from app.config.spec import JobSpec
from app.data.loading import DataError
from app.data.store import load_stored
from app.jobs import lifecycle, runner
from app.jobs.artifacts import npz_bytes
from app.jobs.ledger import DbLedger, totals_by_purpose
from app.jobs.lifecycle import LeaseLost, Status
from app.jobs.oracles import open_oracle
from app.services.credentials import resolver
from app.storage.crypto import SecretBox
from app.storage.db import Database
from app.storage.files import write_atomic
from app.storage.models import Checkpoint, Credential, Dataset, Job, MetricRow
from engine.trainer import Event, Trainer

log = logging.getLogger("reprogram.worker")


class _Hooks:
    """Checkpoint + metrics + progress in one transaction per tell, under the lease, which
    drops the answers saved since the last one (``paid_answers``: the checkpoint holds what
    they taught); after each, the answer cache hands none of them on any more."""

    def __init__(
        self, db: Database, job_id: str, lease: str, seq: int, answers: AnswerCache | None
    ) -> None:
        self.db, self.job_id, self.lease, self.seq = db, job_id, lease, seq
        self.answers = answers
        self.metrics = runner.MetricRows()
        self._cancel: bool | None = None  # as of the last transaction that read it

    def after_tell(self, trainer: Trainer, event: Event | None) -> None:
        def row(job: Job) -> dict[str, Any]:
            assert event is not None
            return self.metrics.row(
                event, queries=job.queries, requests=job.requests, cost_usd=job.cost_usd
            )

        self._cancel = lifecycle.record_progress(
            self.db,
            self.job_id,
            self.lease,
            iteration=trainer.progress_iteration,
            iterations=trainer.config.iterations,
            state=trainer.state_bytes(),
            metrics_row=row if event is not None else None,
            seq=self.seq,
        )
        if self.answers is not None:
            self.answers.mark()
        if event is not None:
            self.seq += 1

    def cancelled(self) -> bool:
        # after_tell reads the flag in its transaction, just before the next ask; only the
        # first ask of an execution has to ask the database.
        if self._cancel is None:
            self._cancel = lifecycle.cancel_requested(self.db, self.job_id)
        return self._cancel


def execute_job(
    db: Database, settings: Settings, job_id: str, *, force: bool = False
) -> str | None:
    """Run (or resume) a job to a final status; returns it, or None if another worker
    holds the job."""
    lease = lifecycle.new_lease()
    job = lifecycle.claim(db, job_id, lease, force=force)
    if job is None:
        return None
    log.info("job %s: running (attempt %d)", job_id, job.attempts)
    start = time.monotonic()
    prepared: runner.PreparedJob | None = None
    error: BaseException | None = None
    answers: AnswerCache | None = None  # the execution's answer cache, once it has one
    try:
        with lifecycle.Heartbeat(db, job_id, lease):
            spec = JobSpec.model_validate(job.resolved_spec or job.spec)
            dataset, cred, state = _load(db, settings, job)
            ledger = DbLedger(
                db,
                job_id,
                job.tenant_id,
                spec.oracle.kind,
                job.credential_id,
                settings.price(spec.oracle.kind),
                lease=lease,
            )
            size = runner.input_size_of(spec)
            secret = resolver(SecretBox(settings), cred)
            with open_oracle(
                spec.oracle,
                input_size=size,
                settings=settings,
                ledger=ledger,
                secret=secret,
                egress=settings.egress,  # checked again at every connection
            ) as (oracle, dispatcher):
                learned = not oracle.labels_known
                # before the saved answers: an answer from the cache teaches no labels
                runner.discover_labels(oracle, dispatcher, size)
                answers = dispatcher.cache
                if answers is not None:
                    _keep_paid_answers(db, job_id, lease, answers)
                if state is None:
                    prepared = runner.prepare(
                        spec, dataset, oracle, query_cap=job.query_cap, spent=job.queries
                    )
                    resolved = runner.with_labels(prepared.spec, oracle) if learned else None
                    lifecycle.save_plan(
                        db,
                        job_id,
                        lease,
                        resolved_spec=(resolved or prepared.spec).model_dump(mode="json"),
                        choices=prepared.notes,
                        iterations=prepared.trainer.config.iterations,
                    )
                else:
                    prepared = runner.prepare(spec, dataset, oracle, query_cap=None)
                    prepared.trainer.load_state(state)
                    prepared.notes = job.choices or []
                    prepared.query_cap = job.query_cap
                    _fit_budget(prepared, job)
                hooks = _Hooks(db, job_id, lease, _metric_count(db, job), answers)
                error = runner.run_to_end(prepared.trainer, dispatcher, hooks)
                prepared.cache_hits = dict(dispatcher.cache_hits)  # this execution's
    except LeaseLost:
        log.warning("job %s: lease lost to another worker; stopping", job_id)
        return None
    except (*runner.CONFIGURATION_ERRORS, *runner.RUN_ERRORS) as err:
        # e.g. the oracle refused the label discovery: a failed job, not a crash (no
        # traceback in the log, where an upstream error's text would ride along)
        error = err
    except Exception as err:  # a bug: record it on the job instead of losing the job
        log.exception("job %s crashed", job_id)
        error = err
    if isinstance(error, QuotaExhausted):
        wait = runner.quota_wait(error, settings)
        if isinstance(wait, QuotaExhausted):
            error = wait
        elif _wait_for_quota(db, settings, job_id, lease, error, wait):
            return Status.QUEUED
        else:
            error = runner.quota_gave_up(error, settings.max_quota_waits, wait)
    return _finish(db, settings, job_id, lease, prepared, error, time.monotonic() - start)


def _wait_for_quota(
    db: Database,
    settings: Settings,
    job_id: str,
    lease: str,
    error: QuotaExhausted,
    wait: float,
) -> bool:
    """Back to the queue for ``wait`` seconds, until the quota may have renewed (the answers
    paid for since the last checkpoint stay saved for the next execution); False when the
    job has waited ``max_quota_waits`` times in a row already."""
    until = lifecycle.wait_for_quota(
        db,
        job_id,
        lease,
        seconds=wait,
        max_waits=settings.max_quota_waits,
        reason=f"the oracle's quota is used up ({error}); the job resumes from its last checkpoint",
    )
    if until is not None:
        log.warning("job %s: %s; waiting until %s", job_id, error, until.isoformat())
    return until is not None


def _keep_paid_answers(db: Database, job_id: str, lease: str, answers: AnswerCache) -> None:
    """Start with the answers earlier executions paid for since the checkpoint (one that
    died mid-step, or went back to the queue for the quota), then save each request's as it
    is settled. After the label discovery: an answer from the cache teaches no labels."""
    n = sum(answers.restore(pack) for pack in lifecycle.paid_answers(db, job_id))
    if n:
        log.info("job %s: %d answers paid for since its checkpoint, not paid again", job_id, n)
    # A lost lease saves nothing (the new holder resumed from the checkpoint without them)
    # and this execution stops at its next tell, which raises LeaseLost.
    answers.journal = lambda pack: lifecycle.save_answers(db, job_id, lease, pack)


def _load(db: Database, settings: Settings, job: Job) -> tuple[Any, Credential | None, Any]:
    """The job's data set, credential row and last checkpoint (None on a first attempt)."""
    with db.session() as s:
        ds_row = s.get(Dataset, job.dataset_id)
        cred = s.get(Credential, job.credential_id) if job.credential_id else None
        ckpt = s.get(Checkpoint, job.id)
        state = ckpt.state if ckpt is not None else None
    if ds_row is None or ds_row.deleted_at is not None:
        raise DataError(f"job {job.id}: its data set was deleted")
    return load_stored(ds_row, settings.data_dir), cred, state


def _fit_budget(prepared: runner.PreparedJob, job: Job) -> None:
    """Queries paid for by a crashed attempt are gone: shorten training if the rest of the
    plan no longer fits what is left of the budget."""
    if job.query_cap is None:
        return
    fitted = prepared.trainer.fit_remaining(job.query_cap - job.queries)
    if fitted < prepared.trainer.config.iterations:
        prepared.trainer.set_iterations(fitted)
        prepared.budget_limited = True


def _metric_count(db: Database, job: Job) -> int:
    with db.session() as s:
        return s.query(MetricRow).filter(MetricRow.job_id == job.id).count()


def _finish(
    db: Database,
    settings: Settings,
    job_id: str,
    lease: str,
    job: runner.PreparedJob | None,
    error: BaseException | None,
    seconds: float,
) -> str:
    if job is None:
        status = Status.CANCELLED if isinstance(error, runner.Cancelled) else Status.FAILED
    else:
        status = Status(runner.final_status(job, error))
    message = None if status == Status.CANCELLED else runner.error_message(error)
    values: dict[str, Any] = {"error": message}
    if job is not None:
        values["result"] = runner.summarize(job, totals_by_purpose(db, job_id), status, seconds)
        values["choices"] = values["result"]["choices"]  # with how the job ended
        arrays = runner.program_of(job)
        if arrays is not None:
            blob = npz_bytes(arrays)
            rel = Path("artifacts") / job_id / "program.npz"
            write_atomic(settings.data_dir / rel, blob)
            values |= {"program_path": str(rel), "program_sha256": hashlib.sha256(blob).hexdigest()}
    lifecycle.finish(db, job_id, lease, status, **values)
    log.info("job %s: %s", job_id, status)
    return status
