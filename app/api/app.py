"""The FastAPI app factory: settings in, app out; nothing happens at import time."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api import credentials, datasets, errors, jobs, spend
from app.api.deps import Services
from app.api.limits import BodyLimits
from app.config.settings import Settings
from app.storage.crypto import SecretBox
from app.storage.db import Database
from app.storage.migrate import upgrade
from app.web import console

log = logging.getLogger("reprogram.api")


def create_app(settings: Settings | None = None, *, run_jobs: bool = True) -> FastAPI:
    """``run_jobs``: in SQLite mode, run queued jobs in this process (``reprogram serve``)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        upgrade(settings.db_url)
        db = Database(settings.db_url)
        svc = Services(settings=settings, db=db, box=SecretBox(settings))
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
    errors.install(app)
    for router in (datasets.router, credentials.router, jobs.router, spend.router):
        app.include_router(router)
    console.install(app)  # the web console at / (pages + /static), over the same /v1 API
    return app
