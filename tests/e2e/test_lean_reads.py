"""``GET /v1/jobs/{id}`` on the lean path (app/api/lean.py) answers exactly what the route
answers, adds an ETag and 304s, and leaves every refusal to the route."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from app.api.app import create_app
from app.services.auth import revoke
from app.storage.db import Database
from app.storage.models import Job
from tests.helpers import bearer, seed_job, service_settings

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
CHOICES = ["mapping.method = 'learned': a read-out … ünïcode ×", "optimizer.q = 10: directions"]


def seed(db: Database, tenant: str, **job: object) -> str:
    """A job of ``tenant`` (who must exist) as a worker leaves it mid-run or finished."""
    return seed_job(db, tenant, provider="torch", **job)[0]


RUNNING = {
    "status": "running",
    "iteration": 7,
    "iterations": 100,
    "queries": 700,
    "requests": 4,
    "cost_usd": 0.0123456789,
    "max_queries": 5000,
    "metrics": {"kind": "iteration", "iteration": 7, "loss": 2.944166, "val_acc": 0.81},
    "choices": CHOICES,
    "started_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
}
FINISHED = {
    "status": "succeeded",
    "iteration": 100,
    "iterations": 100,
    "queries": 5000,
    "max_cost_usd": 1.5,
    "result": {"test_accuracy": 0.8125, "baselines": {"linear_probe": {"accuracy": 0.77}}},
    "finished_at": datetime(2026, 1, 2, 4, 0, 0, tzinfo=UTC),
}


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_lean_read_is_the_routes_answer(backend, tmp_path: Path, request) -> None:
    url = request.getfixturevalue("pg_url") if backend == "postgres" else None
    settings = service_settings(tmp_path, url)
    lean_app = create_app(settings, run_jobs=False)
    route_app = create_app(settings, run_jobs=False, lean_reads=False)
    with TestClient(lean_app) as lean, TestClient(route_app) as route:
        db = Database(settings.db_url)
        headers = bearer(db, "acme")
        for job in (RUNNING, FINISHED, {}):
            job_id = seed(db, "acme", **job)
            a = lean.get(f"/v1/jobs/{job_id}", headers=headers)
            b = route.get(f"/v1/jobs/{job_id}", headers=headers)
            assert a.status_code == b.status_code == 200, (a.text, b.text)
            assert a.json() == b.json()
            assert list(a.json()) == list(b.json())  # the same keys in the same order
            assert a.headers["content-type"] == b.headers["content-type"]
            assert "etag" in a.headers
        db.dispose()


def test_conditional_reads_answer_304_until_the_job_changes(tmp_path: Path) -> None:
    settings = service_settings(tmp_path)
    with TestClient(create_app(settings, run_jobs=False)) as client:
        db = Database(settings.db_url)
        headers = bearer(db, "acme")
        job_id = seed(db, "acme", **RUNNING)
        first = client.get(f"/v1/jobs/{job_id}", headers=headers)
        tag = first.headers["etag"]
        for value in (tag, f"W/{tag}", f'"other", {tag}', "*"):
            again = client.get(f"/v1/jobs/{job_id}", headers={**headers, "If-None-Match": value})
            assert again.status_code == 304 and again.content == b"", value
            assert again.headers["etag"] == tag
        assert (
            client.get(f"/v1/jobs/{job_id}", headers={**headers, "If-None-Match": '"stale"'}).json()
            == first.json()
        )
        with db.session() as s:
            s.execute(update(Job).where(Job.id == job_id).values(iteration=8))
        changed = client.get(f"/v1/jobs/{job_id}", headers={**headers, "If-None-Match": tag})
        assert changed.status_code == 200 and changed.json()["progress"]["iteration"] == 8
        assert changed.headers["etag"] != tag
        db.dispose()


def test_refusals_are_the_routes_own(tmp_path: Path) -> None:
    settings = service_settings(tmp_path)
    with TestClient(create_app(settings, run_jobs=False)) as client:
        db = Database(settings.db_url)
        acme, other = bearer(db, "acme"), bearer(db, "other")
        job_id = seed(db, "acme", **RUNNING)
        path = f"/v1/jobs/{job_id}"

        r = client.get(path)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json() == {"detail": "missing bearer token"}
        r = client.get(path, headers={"Authorization": "Bearer rp_nope"})
        assert r.status_code == 401 and r.json() == {"detail": "invalid token"}
        r = client.get(path, headers={"Authorization": "Basic abc"})
        assert r.status_code == 401
        # Another tenant's job does not exist for you: the same 404 as an unknown id.
        theirs = client.get(path, headers=other)
        unknown = client.get("/v1/jobs/job_0000000000000000", headers=other)
        assert theirs.status_code == unknown.status_code == 404
        assert theirs.json()["detail"] == f"job {job_id!r} not found"
        # A revoked token is refused by the very next request, on both paths.
        assert client.get(path, headers=acme).status_code == 200
        with db.session() as s:
            revoke(s, token=acme["Authorization"].split()[1])
        assert client.get(path, headers=acme).status_code == 401
        assert client.get("/v1/jobs", headers=acme).status_code == 401
        db.dispose()
