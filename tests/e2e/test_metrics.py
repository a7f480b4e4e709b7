"""``/metrics``: every operator metric is there (jobs by status; per provider requests by
outcome, images, dollars, retries, rate-limit waits; request latency; heartbeats), it counts
what the ledger recorded, and it can be turned off or moved to a port of its own."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from adapters.dispatch import RequestRecord
from app.api.app import create_app
from app.jobs.ledger import DbLedger
from app.storage.db import Database
from app.storage.models import utcnow
from tests.helpers import bearer, seed_job, service_settings
from tests.live import free_port

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
FAMILIES = {
    "reprogram_jobs": "gauge",
    "reprogram_provider_requests": "counter",
    "reprogram_provider_images_sent": "counter",
    "reprogram_provider_images": "counter",
    "reprogram_provider_cost_usd": "counter",
    "reprogram_provider_retries": "counter",
    "reprogram_provider_ratelimit_waits": "counter",
    "reprogram_provider_ratelimit_wait_seconds": "counter",
    "reprogram_http_request_duration_seconds": "histogram",
    "reprogram_event_streams": "gauge",
    "reprogram_job_heartbeat_age_seconds": "gauge",
}


def running_job(db: Database, tenant: str) -> tuple[str, str]:
    return seed_job(db, tenant, provider="clarifai", status="running", heartbeat_at=utcnow())


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_metric_is_there_and_counts_the_ledger(backend, tmp_path: Path, request) -> None:
    url = request.getfixturevalue("pg_url") if backend == "postgres" else None
    settings = service_settings(tmp_path, url)
    with TestClient(create_app(settings, run_jobs=False)) as client:
        db = Database(settings.db_url)
        headers = bearer(db, "acme")
        job_id, tenant_id = running_job(db, "acme")
        ledger = DbLedger(db, job_id, tenant_id, "clarifai", None, price=0.5)
        # A throttled first attempt held back 0.25 s by the limiter, then its retry answered;
        # an unavailable provider; a request never sent (no row, nothing counted).
        for record in (
            RequestRecord("train", 4, 0, "Throttled", None, 0.1, attempt=1, waited=0.25),
            RequestRecord("train", 4, 4, "ok", "r1", 0.1, attempt=2),
            RequestRecord("train", 2, 0, "TransientUpstreamError", None, 0.1),
            RequestRecord("train", 2, 0, "not_sent", None, 0.0),
        ):
            ledger.reserve("train", record.images).settle(record)
        lean = (("method", "GET"), ("route", "/v1/jobs/{job_id}"), ("status", "200"))
        routed = (("method", "GET"), ("route", "/v1/jobs"), ("status", "200"))
        count = "reprogram_http_request_duration_seconds_count"
        before = samples(client.get("/metrics").text)  # the histogram lives as long as the process
        assert client.get(f"/v1/jobs/{job_id}", headers=headers).status_code == 200
        assert client.get("/v1/jobs", headers=headers).status_code == 200

        r = client.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        kinds = {f.name: f.type for f in text_string_to_metric_families(r.text)}
        for name, kind in FAMILIES.items():
            assert kinds.get(name) == kind, f"{name} missing from /metrics"
        if backend == "postgres":
            assert kinds.get("reprogram_worker_heartbeat_age_seconds") == "gauge"
        got = samples(r.text)
        clarifai = (("provider", "clarifai"),)

        def counter(name: str, labels: tuple = clarifai) -> float:
            return got[(f"reprogram_provider_{name}_total", labels)]

        assert counter("requests", (("outcome", "Throttled"), *clarifai)) == 1
        assert counter("requests", (("outcome", "ok"), *clarifai)) == 1
        assert counter("requests", (("outcome", "TransientUpstreamError"), *clarifai)) == 1
        assert counter("images_sent") == 10 and counter("images") == 4
        assert counter("cost_usd") == pytest.approx(2.0)
        assert counter("retries") == 1
        assert counter("ratelimit_waits") == 1
        assert counter("ratelimit_wait_seconds") == pytest.approx(0.25)
        assert got[("reprogram_jobs", (("status", "running"),))] == 1
        assert got[("reprogram_jobs", (("status", "succeeded"),))] == 0
        assert got[("reprogram_job_heartbeat_age_seconds", (("job", job_id),))] < 60
        for labels in (lean, routed):
            assert got[(count, labels)] - before.get((count, labels), 0) == 1
        db.dispose()


def test_metrics_can_be_off_or_on_a_port_of_their_own(tmp_path: Path) -> None:
    off = service_settings(tmp_path / "off", metrics=False)
    with TestClient(create_app(off, run_jobs=False)) as client:
        assert client.get("/metrics").status_code == 404
    port = free_port()
    apart = service_settings(tmp_path / "apart", metrics_port=port)
    with TestClient(create_app(apart, run_jobs=False)) as client:
        assert client.get("/metrics").status_code == 404  # not on the API's port
        r = httpx.get(f"http://127.0.0.1:{port}/metrics")
        assert r.status_code == 200 and "reprogram_jobs" in r.text
    with pytest.raises(httpx.TransportError):  # closed with the app
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
