"""``GET /v1/jobs/{id}/events``: the job's JSON at once and on every change, ending after a
final status; the same auth as the rest; a revoked token's stream ends."""

from __future__ import annotations

import itertools
import json
import threading
import time
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import update

from app.api.app import create_app
from app.services.auth import revoke
from app.storage.db import Database
from app.storage.models import Job
from tests.helpers import bearer, seed_job, service_settings


def seed(db: Database, tenant: str) -> str:
    return seed_job(db, tenant, provider="torch", status="running", iteration=1, iterations=10)[0]


def events(client: TestClient, path: str, headers: dict[str, str]) -> list[dict]:
    """The stream's events until it ends (each ``event: job`` + ``data: <JSON>``)."""
    out, name = [], None
    with client.stream("GET", path, headers=headers) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                assert name == "job"
                out.append(json.loads(line.removeprefix("data: ")))
    return out


def later(db: Database, job_id: str, *changes: dict) -> threading.Thread:
    def run() -> None:
        for values in changes:
            time.sleep(0.3)
            with db.session() as s:
                s.execute(update(Job).where(Job.id == job_id).values(**values))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_events_push_each_change_and_end_after_a_final_status(tmp_path: Path) -> None:
    settings = service_settings(tmp_path, events_poll_seconds=0.05)
    with TestClient(create_app(settings, run_jobs=False)) as client:
        db = Database(settings.db_url)
        acme, other = bearer(db, "acme"), bearer(db, "other")
        job_id = seed(db, "acme")
        path = f"/v1/jobs/{job_id}/events"
        assert client.get(path).status_code == 401
        assert client.get(path, headers=other).status_code == 404  # another tenant's
        assert client.get("/v1/jobs/job_nope/events", headers=acme).status_code == 404

        changes = ({"iteration": 2}, {"queries": 30, "cost_usd": 0.5}, {"status": "succeeded"})
        thread = later(db, job_id, *changes)
        seen = events(client, path, acme)
        thread.join()
        # One event per change (0.3 s apart, polled every 0.05 s; a client too slow to read
        # them all would get the latest state instead of a backlog).
        assert len(seen) >= 2 and all(a != b for a, b in itertools.pairwise(seen))
        assert seen[0]["progress"]["iteration"] == 1 and seen[0]["status"] == "running"
        assert [e["progress"]["iteration"] for e in seen] == sorted(
            e["progress"]["iteration"] for e in seen
        )
        assert seen[-1]["status"] == "succeeded" and seen[-1]["spend"]["queries"] == 30
        # Each event is the job as GET /v1/jobs/{id} answers it.
        assert seen[-1] == client.get(f"/v1/jobs/{job_id}", headers=acme).json()
        # A finished job's stream is its one event.
        assert events(client, path, acme) == [seen[-1]]
        db.dispose()


def test_a_revoked_tokens_stream_ends(tmp_path: Path) -> None:
    settings = service_settings(tmp_path, events_poll_seconds=0.05)
    with TestClient(create_app(settings, run_jobs=False)) as client:
        db = Database(settings.db_url)
        acme = bearer(db, "acme")
        job_id = seed(db, "acme")
        data = []
        with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=acme) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                data.append(json.loads(line.removeprefix("data: ")))
                with db.session() as s:  # revoked once the stream is open
                    revoke(s, token=acme["Authorization"].split()[1])
                started = time.monotonic()
        # The stream ended by itself at the next poll, after its one event.
        assert len(data) == 1 and data[0]["status"] == "running"
        assert time.monotonic() - started < 5
        db.dispose()
