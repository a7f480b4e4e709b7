"""How jobs reach workers.

* Production (PostgreSQL): procrastinate. ``POST /v1/jobs`` defers ``run_job``; any number of
  ``reprogram worker`` processes on any number of machines take jobs from the queue. A worker
  killed mid-job stops sending heartbeats; the periodic ``requeue_stalled`` task (run by every
  worker) hands its jobs back to the queue, and the next worker resumes from the checkpoint.
* Embedded (SQLite): ``EmbeddedRunner`` threads inside ``reprogram serve`` claim queued jobs
  from the jobs table, so the server alone is a complete service.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable

from sqlalchemy import select, update

from app.db import Database, libpq_url
from app.models import Job
from app.settings import Settings
from app.worker import LEASE_TIMEOUT, execute_job

log = logging.getLogger("reprogram.queue")
HEARTBEAT_SECONDS = 2.0
STALLED_AFTER_SECONDS = 10.0
JOB_NICENESS = 19
GIL_SWITCH_SECONDS = 0.001


def make_queue_app(settings: Settings, db: Database):  # type: ignore[no-untyped-def]
    """The procrastinate app with the service's tasks registered."""
    import procrastinate

    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=libpq_url(settings.db_url))
    )

    @app.task(name="run_job", queue="jobs", pass_context=True)
    def run_job(context: procrastinate.JobContext, job_id: str) -> None:
        # A retried procrastinate job means its previous worker was declared dead: take the
        # job's lease over at once instead of waiting for it to go stale.
        attempt = context.job.attempts if context.job else 0
        execute_job(db, settings, job_id, force=attempt > 0)

    @app.periodic(cron="*/5 * * * * *", periodic_id="requeue_stalled")
    @app.task(name="requeue_stalled", queue="maintenance", queueing_lock="requeue_stalled")
    async def requeue_stalled(timestamp: int) -> None:
        stalled = await app.job_manager.get_stalled_jobs(
            seconds_since_heartbeat=STALLED_AFTER_SECONDS
        )
        for job in stalled:
            log.warning("requeueing stalled job %s (%s)", job.id, job.task_name)
            await app.job_manager.retry_job(job)

    return app


def run_worker(settings: Settings, db: Database, concurrency: int) -> None:
    app = make_queue_app(settings, db)
    with app.open():
        app.run_worker(
            queues=["jobs", "maintenance"],
            concurrency=concurrency,
            update_heartbeat_interval=HEARTBEAT_SECONDS,
            stalled_worker_timeout=STALLED_AFTER_SECONDS,
            install_signal_handlers=True,
        )


class EmbeddedRunner:
    """Threads that run queued jobs in this process (SQLite mode)."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        threads: int,
        execute: Callable[[Database, Settings, str], object] = execute_job,
    ) -> None:
        self.settings, self.db, self.n = settings, db, threads
        self.execute = execute
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._requeue_orphans()
        # Job threads share the GIL with the API's event loop; a shorter switch interval
        # (default 5 ms) bounds how long a request waits behind a job's Python code.
        sys.setswitchinterval(GIL_SWITCH_SECONDS)
        for i in range(self.n):
            t = threading.Thread(target=self._loop, name=f"job-runner-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout)

    def _requeue_orphans(self) -> None:
        """Jobs left running by a previous process that died go back to the queue."""
        from app.models import utcnow

        with self.db.session() as s:
            s.execute(
                update(Job)
                .where(Job.status == "running", Job.heartbeat_at < utcnow() - LEASE_TIMEOUT)
                .values(status="queued", lease=None)
            )

    def _next(self) -> str | None:
        with self.db.session() as s:
            return s.scalar(
                select(Job.id)
                .where(Job.status == "queued", Job.cancel_requested.is_(False))
                .order_by(Job.created_at)
                .limit(1)
            )

    def _loop(self) -> None:
        # Jobs are batch work beside the API in this process: lower this thread's (and the
        # torch threads it starts') CPU priority so answering requests comes first.
        if hasattr(os, "setpriority"):
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), JOB_NICENESS)
        while not self._stop.is_set():
            job_id = self._next()
            if job_id is None:
                self._stop.wait(self.settings.job_poll_seconds)
                continue
            try:
                self.execute(self.db, self.settings, job_id)
            except Exception:  # never let one job kill the runner thread
                log.exception("job %s", job_id)
                time.sleep(0.5)
