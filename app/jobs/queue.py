"""How jobs reach workers.

* Production (PostgreSQL): procrastinate. ``POST /v1/jobs`` defers ``run_job``; any number of
  ``reprogram worker`` processes on any number of machines take jobs from the queue. A worker
  killed mid-job stops sending heartbeats; the periodic ``requeue_stalled`` task (run by every
  worker) hands its jobs back to the queue, and the next worker resumes from the checkpoint.
* Embedded (SQLite): ``EmbeddedRunner`` threads inside ``reprogram serve`` claim queued jobs
  from the jobs table, so the server alone is a complete service. Every few seconds it also
  requeues jobs whose lease went silent (their process died, maybe with a previous server).
* A job waiting for its oracle's quota is queued with a ``not_before``: the embedded runner
  skips it until then; in production the periodic ``wake_waiting`` task defers it then.

State changes go through ``app.jobs.lifecycle``; this module only orchestrates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess

from app.config.settings import Settings
from app.jobs import lifecycle
from app.jobs.execute import execute_job
from app.storage.db import Database, libpq_url

log = logging.getLogger("reprogram.queue")
HEARTBEAT_SECONDS = 2.0
STALLED_AFTER_SECONDS = 10.0
JOB_NICENESS = 19  # jobs are batch work: on a shared machine the API answers first


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

    # croniter's sixth field is the second: "* * * * * */5" is every 5 s. ("*/5 * * * * *",
    # as this once read, is every second of every fifth minute: a dead worker's job then
    # waited up to 5 minutes.)
    @app.periodic(cron="* * * * * */5", periodic_id="requeue_stalled")
    @app.task(name="requeue_stalled", queue="maintenance", queueing_lock="requeue_stalled")
    async def requeue_stalled(timestamp: int) -> None:
        stalled = await app.job_manager.get_stalled_jobs(
            seconds_since_heartbeat=STALLED_AFTER_SECONDS
        )
        for job in stalled:
            log.warning("requeueing stalled job %s (%s)", job.id, job.task_name)
            await app.job_manager.retry_job(job)

    # A job waiting for its oracle's quota (lifecycle.wait_for_quota) is a queued row with
    # no queue entry; this hands it to the queue once it is due. Deferring before clearing
    # the wait means a worker dying in between defers it twice, never zero times (claim
    # lets only one of the two run it).
    @app.periodic(cron="* * * * * */5", periodic_id="wake_waiting")
    @app.task(name="wake_waiting", queue="maintenance", queueing_lock="wake_waiting")
    async def wake_waiting(timestamp: int) -> None:
        for job_id, when in await asyncio.to_thread(lifecycle.due_waiting, db):
            await run_job.defer_async(job_id=job_id)
            await asyncio.to_thread(lifecycle.woken, db, job_id, when)
            log.info("job %s: its quota wait is over; queued", job_id)

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


def _exit_with_parent(parent: int) -> None:
    """A job's process dies with the server that started it: an orphan would run on
    unsupervised, outside the next server's concurrency limit. Its lease then goes silent
    and the next server requeues the job."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        log.warning("the server (pid %d) is gone; stopping", parent)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _execute_child(settings: Settings, job_id: str, parent: int) -> None:
    """A child process's whole life: one job, at batch priority, on its own connections."""
    _exit_with_parent(parent)
    with contextlib.suppress(OSError):
        os.nice(JOB_NICENESS)
    db = Database(settings.db_url)
    try:
        execute_job(db, settings, job_id)
    finally:
        db.dispose()


class ChildExecutor:
    """Runs one job in a child process and waits for it. A process of its own, not a thread:
    a job's Python code would otherwise share the interpreter lock with the API's event loop
    (measured: p99 115 ms instead of ~20 ms with 4 jobs, BENCHMARKS.md). Spawned, not forked:
    the parent already runs threads (uvicorn, torch).

    A child that dies mid-job (killed, out of memory) leaves its job failed with the exit
    code, never stuck as running. ``stop`` ends the children of a server shutting down and
    puts their jobs back in the queue: the next start resumes them from their checkpoints."""

    def __init__(self) -> None:
        self._children: set[BaseProcess] = set()
        self._lock = threading.Lock()
        self._stopping = False

    def __call__(self, db: Database, settings: Settings, job_id: str) -> int:
        child = mp.get_context("spawn").Process(
            target=_execute_child,
            args=(settings, job_id, os.getpid()),
            name=f"job-{job_id}",
            daemon=True,
        )
        with self._lock:
            if self._stopping:
                return 0
            child.start()
            self._children.add(child)
        child.join()
        with self._lock:
            self._children.discard(child)
            stopping = self._stopping
        if child.exitcode != 0:
            log.warning("job %s: its process exited with code %s", job_id, child.exitcode)
            lifecycle.process_exited(db, job_id, child.exitcode, requeue=stopping)
        return child.exitcode or 0

    def stop(self, timeout: float) -> None:
        with self._lock:
            self._stopping = True
            children = list(self._children)
        for child in children:
            child.terminate()
        for child in children:
            child.join(timeout)


class EmbeddedRunner:
    """Runs queued jobs beside the API (SQLite mode): ``threads`` at a time, each job in a
    child process of its own (``ChildExecutor``)."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        threads: int,
        execute: Callable[[Database, Settings, str], object] | None = None,
    ) -> None:
        self.settings, self.db, self.n = settings, db, threads
        self._children = ChildExecutor() if execute is None else None
        self.execute = execute or self._children
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._taken: set[str] = set()
        self._taken_lock = threading.Lock()

    def start(self) -> None:
        reaper = threading.Thread(target=self._reap, name="job-reaper", daemon=True)
        reaper.start()
        self._threads.append(reaper)
        for i in range(self.n):
            t = threading.Thread(target=self._loop, name=f"job-runner-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._children is not None:
            self._children.stop(timeout)
        for t in self._threads:
            t.join(timeout)

    def _reap(self) -> None:
        """Requeue jobs whose process died (lease silent), now and every few seconds."""
        while True:
            try:
                lifecycle.requeue_stale(self.db)
            except Exception:  # a database hiccup: try again next round
                log.exception("requeueing stale jobs")
            if self._stop.wait(lifecycle.HEARTBEAT.total_seconds()):
                return

    def _next(self) -> str | None:
        """The oldest queued job that no other thread of this runner has taken (a job stays
        queued until its process claims it; a second process for it would be wasted)."""
        with self._taken_lock:
            job_id = lifecycle.next_queued(self.db, self._taken)
            if job_id is not None:
                self._taken.add(job_id)
            return job_id

    def _loop(self) -> None:
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
            finally:
                with self._taken_lock:
                    self._taken.discard(job_id)
