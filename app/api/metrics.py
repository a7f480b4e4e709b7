"""Operator metrics in Prometheus's text format: ``GET /metrics`` on the API's port, or on a
port of its own (``REPROGRAM_METRICS_PORT``); ``REPROGRAM_METRICS=off`` turns them off. Not
behind a tenant token: bind it where only the scraper reaches it.

Where each number comes from, so that every process's work is counted wherever it ran:

* **From the database, at scrape time** (one statement each): jobs by status; per provider,
  requests by outcome (``ok``, ``partial`` or the error's kind), images sent and answered,
  dollars, retries, rate-limiter waits and the seconds waited (``provider_counters``, which
  the ledger adds to in the same transaction as each request's row, in whichever worker or
  job process sent it); the age of each running job's heartbeat and, on PostgreSQL, of each
  queue worker's.
* **In the API processes**: request latency by route and status (a histogram), open event
  streams. With several API processes (``reprogram serve --workers N``) these go through
  prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, which ``serve`` sets
  up), so any process's ``/metrics`` answers for all of them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import func, select, text
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.lean import ROUTE_KEY  # set by routes answered outside the router
from app.jobs.ledger import COUNTERS
from app.jobs.lifecycle import Status
from app.storage.db import Database
from app.storage.models import Job, ProviderCounter, utcnow

MULTIPROC = "PROMETHEUS_MULTIPROC_DIR"
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# Not registered anywhere at import: ``registry`` adds them (one process) or reads every
# process's files (multiprocess mode).
REQUEST_SECONDS = Histogram(
    "reprogram_http_request_duration_seconds",
    "API request latency, from the request's arrival to the end of its answer",
    ["method", "route", "status"],
    buckets=BUCKETS,
    registry=None,
)
EVENT_STREAMS = Gauge(
    "reprogram_event_streams",
    "open GET /v1/jobs/{id}/events streams",
    multiprocess_mode="livesum",
    registry=None,
)


class DatabaseCollector:
    """The database-derived metrics, computed at each scrape."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[Metric]:
        with self.db.engine.connect() as c:
            jobs = GaugeMetricFamily("reprogram_jobs", "jobs by status", labels=["status"])
            counts = dict(
                c.execute(
                    select(Job.status, func.count())
                    .where(Job.deleted_at.is_(None))
                    .group_by(Job.status)
                ).all()
            )
            for status in Status:
                jobs.add_metric([status.value], counts.get(status.value, 0))
            yield jobs

            families = {
                name: CounterMetricFamily(
                    f"reprogram_provider_{name}",
                    doc,
                    labels=["provider", "outcome"] if name == "requests" else ["provider"],
                )
                for name, doc in COUNTERS.items()
            }
            rows = c.execute(
                select(
                    ProviderCounter.provider,
                    ProviderCounter.name,
                    ProviderCounter.label,
                    ProviderCounter.value,
                ).order_by(ProviderCounter.provider, ProviderCounter.name, ProviderCounter.label)
            )
            for provider, name, label, value in rows:
                family = families.get(name)
                if family is not None:
                    labels = [provider, label] if name == "requests" else [provider]
                    family.add_metric(labels, value)
            yield from families.values()

            now = utcnow()
            beats = GaugeMetricFamily(
                "reprogram_job_heartbeat_age_seconds",
                "seconds since each running job's process last proved alive (a lease goes "
                "stale, and the job is requeued, after 10)",
                labels=["job"],
            )
            for job_id, at in c.execute(
                select(Job.id, Job.heartbeat_at).where(Job.status == Status.RUNNING)
            ):
                if at is not None:
                    beats.add_metric([job_id], _age(now, at))
            yield beats

            if self.db.is_sqlite:
                return
            workers = GaugeMetricFamily(
                "reprogram_worker_heartbeat_age_seconds",
                "seconds since each queue worker (reprogram worker) last sent its heartbeat",
                labels=["worker"],
            )
            try:
                for worker_id, at in c.execute(
                    text("SELECT id, last_heartbeat FROM procrastinate_workers")
                ):
                    workers.add_metric([str(worker_id)], _age(now, at))
            except Exception:  # the queue's tables are not there (an old schema): none
                c.rollback()
            yield workers


def _age(now: Any, at: Any) -> float:
    if at.tzinfo is None:  # SQLite keeps naive UTC
        at = at.replace(tzinfo=now.tzinfo)
    return max(0.0, (now - at).total_seconds())


def registry(db: Database) -> CollectorRegistry:
    """What this process's scrape answers: the database's metrics, and the API processes'
    own (this process's, or every process's files in multiprocess mode)."""
    reg = CollectorRegistry(auto_describe=True)
    if os.environ.get(MULTIPROC):
        multiprocess.MultiProcessCollector(reg)
    else:
        reg.register(REQUEST_SECONDS)
        reg.register(EVENT_STREAMS)
        ProcessCollector(registry=reg)
    reg.register(DatabaseCollector(db))
    return reg


class RequestMetrics:
    """ASGI middleware: each request's latency by method, route template and status (event
    streams are counted as open streams instead: they last as long as their job)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._children: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or scope.get(ROUTE_KEY) or "other"
            if not path.endswith("/events"):
                key = (scope["method"], path, status)
                child = self._children.get(key)
                if child is None:
                    child = self._children[key] = REQUEST_SECONDS.labels(
                        scope["method"], path, str(status)
                    )
                child.observe(time.perf_counter() - start)


router = APIRouter(include_in_schema=False)


@router.get("/metrics")
def metrics(request: Request) -> Response:
    """Prometheus text format (not in the OpenAPI document: it is for operators)."""
    reg = request.app.state.metrics
    return Response(generate_latest(reg), media_type=CONTENT_TYPE_LATEST)


def serve_port(reg: CollectorRegistry, host: str, port: int) -> Callable[[], None]:
    """``/metrics`` on a port of its own, from a thread; returns how to stop it."""
    from prometheus_client import start_http_server

    server, thread = start_http_server(port, addr=host, registry=reg)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop
