"""The FastAPI app factory: settings in, app out; nothing happens at import time."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from fastapi import FastAPI

from app.api import credentials, datasets, errors, events, jobs, metrics, spend
from app.api.deps import Services
from app.api.lean import JobReader, LeanJobReads
from app.api.limits import BodyLimits
from app.config.settings import Settings
from app.storage.crypto import SecretBox
from app.storage.db import Database
from app.storage.migrate import upgrade
from app.web import console

log = logging.getLogger("reprogram.api")


def create_app(
    settings: Settings | None = None,
    *,
    run_jobs: bool = True,
    lean_reads: bool = True,
    metrics_port: bool = True,
) -> FastAPI:
    """``run_jobs``: in SQLite mode, run queued jobs in this process (``reprogram serve``).
    ``lean_reads``: answer ``GET /v1/jobs/{id}`` on the lean path (``app.api.lean``).
    ``metrics_port``: serve ``REPROGRAM_METRICS_PORT`` from this process, if it is set (not
    in the workers of ``serve --workers N``: their supervisor does)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        upgrade(settings.db_url)
        db = Database(settings.db_url)
        svc = Services(settings=settings, db=db, box=SecretBox(settings))
        svc.reads = JobReader(db.engine)
        svc.watch = events.JobWatch(svc.reads, settings.events_poll_seconds)
        app.state.metrics = metrics.registry(db)
        stop_metrics = None
        if settings.metrics and settings.metrics_port and metrics_port:
            stop_metrics = metrics.serve_port(
                app.state.metrics, settings.metrics_host, settings.metrics_port
            )
        runner = None
        if db.is_sqlite:
            if run_jobs:
                from app.jobs.queue import EmbeddedRunner

                runner = EmbeddedRunner(settings, db, settings.embedded_workers)
                runner.start()
        else:
            from app.jobs.queue import make_queue_app

            svc.queue = make_queue_app(settings, db)
            svc.queue.open()
        app.state.services = svc
        try:
            yield
        finally:
            if runner is not None:
                runner.stop()
            if svc.queue is not None:
                svc.queue.close()
            svc.watch.close()
            if stop_metrics is not None:
                stop_metrics()
            await svc.reads.aclose()
            svc.reads.close()
            db.dispose()

    app = FastAPI(
        title="reprogram",
        version="0.1.0",
        summary="Reprogram black-box image classifiers for new tasks with scarce data.",
        description="Black-box adversarial reprogramming (Tsai et al., ICML 2020) as a "
        "service: every query to the oracle is counted, priced, rate-limited, retried and "
        "budgeted. Authenticate with `Authorization: Bearer <token>` "
        "(`reprogram token create --tenant NAME`).",
        lifespan=lifespan,
    )

    # Bodies are limited as they stream in, and /v1 ones authenticated before they are read.
    app.add_middleware(BodyLimits, settings=settings)
    if lean_reads:
        app.add_middleware(LeanJobReads)  # a status read skips all the rest
    if settings.metrics:
        app.add_middleware(metrics.RequestMetrics)  # outermost: it times everything
        if settings.metrics_port is None:
            app.include_router(metrics.router)
    errors.install(app)
    for router in (datasets.router, credentials.router, jobs.router, events.router, spend.router):
        app.include_router(router)
    console.install(app)  # the web console at / (pages + /static), over the same /v1 API
    return app


def worker_app() -> FastAPI:
    """The app of one of several API processes (``reprogram serve --workers N``, uvicorn's
    factory): it answers requests; the supervising process runs the embedded jobs and the
    metrics port."""
    return create_app(Settings(), run_jobs=False, metrics_port=False)


@contextmanager
def prepare_workers(settings: Settings) -> Iterator[None]:
    """What the process supervising several API processes does for them while they run:
    a directory where they all keep their metrics (unless ``PROMETHEUS_MULTIPROC_DIR`` names
    one), the metrics port if one is set, and, in the embedded mode, the jobs (one runner
    for the whole server, so its concurrency limit holds)."""
    made = None
    if not os.environ.get(metrics.MULTIPROC):
        made = tempfile.mkdtemp(prefix="reprogram-metrics-")
        os.environ[metrics.MULTIPROC] = made  # inherited by the workers it spawns
    runner = stop_metrics = None
    db = Database(settings.db_url)
    try:
        if db.is_sqlite:
            from app.jobs.queue import EmbeddedRunner

            runner = EmbeddedRunner(settings, db, settings.embedded_workers)
            runner.start()
        if settings.metrics and settings.metrics_port:
            stop_metrics = metrics.serve_port(
                metrics.registry(db), settings.metrics_host, settings.metrics_port
            )
        yield
    finally:
        if stop_metrics is not None:
            stop_metrics()
        if runner is not None:
            runner.stop()
        db.dispose()
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
            os.environ.pop(metrics.MULTIPROC, None)
