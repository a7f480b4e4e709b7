"""A job whose oracle's hourly quota runs out waits for it in the queue instead of failing
(adapters.errors.QuotaExhausted, app.jobs.lifecycle.wait_for_quota): the embedded runner
through a Clarifai fake whose quota the test renews, and production's ``wake_waiting``
task on PostgreSQL + procrastinate; a Custom Vision quota that renews in days fails a job at
once. The CLI's in-process wait is in test_cloud_training."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import timedelta

import pytest
from sqlalchemy import select, text

from app.jobs import lifecycle
from app.jobs.queue import make_queue_app
from app.storage.db import Database
from app.storage.migrate import upgrade
from app.storage.models import Job, PaidAnswers, Tenant, utcnow
from tests.fakes.clarifai import FakeClarifai
from tests.fakes.customvision import FakeCustomVision
from tests.helpers import (
    CLOUD_RUN,
    FINAL,
    add_credential,
    clarifai_oracle,
    customvision_oracle,
    png,
    post_job,
    seed_job,
    service,
    service_settings,
    start_workers,
    upload,
    wait_final,
)

KEY = "quota-waits-key-77e1"
RUN = CLOUD_RUN


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_a_service_job_out_of_quota_waits_queued_then_resumes(
    backend, request, tmp_path, small_npz, monkeypatch
):
    """Embedded (SQLite: the runner skips the job until it is due) and production
    (PostgreSQL: a ``reprogram worker`` process, the job woken by ``wake_waiting``)."""
    url = request.getfixturevalue("pg_url") if backend == "postgres" else None
    monkeypatch.setenv("REPROGRAM_QUOTA_WAIT_SECONDS", "1")  # the worker process reads it
    # 10 requests this hour; the job sends about 30
    with (
        FakeClarifai(keys=[KEY], rate_limit=None, hourly_limit=10) as fake,
        contextlib.ExitStack() as stack,
    ):
        settings = service_settings(
            tmp_path, url, oracle_allowed_endpoints=[fake.endpoint], quota_wait_seconds=1.0
        )
        if backend == "postgres":
            for worker in start_workers(settings, 1, tmp_path):
                stack.callback(worker.wait, 20)
                stack.callback(worker.terminate)
        with service(settings) as (client, headers):
            ds = upload(client, headers, small_npz)
            cred = add_credential(client, headers, KEY)
            spec = {"dataset_id": ds["id"], "oracle": clarifai_oracle(fake, credential_id=cred)}
            job_id = post_job(client, headers, spec | RUN)
            seen_waiting: list[dict] = []
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
                if job["waiting"] is not None:
                    seen_waiting.append(job)
                    fake.hourly_limit = None  # the next hour
                if job["status"] in FINAL:
                    break
                time.sleep(0.05)
            counts = fake.counts(KEY)
            fake.hourly_limit = 0  # used up again: a prediction is refused, saying when
            pred = client.post(
                f"/v1/jobs/{job_id}/predict",
                headers=headers,
                files=[("files", ("x.png", png(20)))],
            )
    assert pred.status_code == 503 and pred.headers["retry-after"] == "1"
    assert "CONN_EXCEED_HOURLY_LIMIT" in pred.json()["detail"] and KEY not in pred.text
    assert job["status"] == "succeeded", job["error"]
    assert counts.throttled >= 1 and seen_waiting
    waiting = seen_waiting[0]
    assert waiting["status"] == "queued" and waiting["error"] is None
    assert "CONN_EXCEED_HOURLY_LIMIT" in waiting["waiting"]["reason"]
    assert waiting["waiting"]["until"].endswith("+00:00") and KEY not in str(seen_waiting)
    assert job["spend"]["queries"] == counts.billable  # what the provider billed, exactly
    db = Database(settings.db_url)
    try:
        with db.session() as s:
            row = s.get(Job, job_id)
            assert row.attempts >= 2 and row.not_before is None and row.quota_waits == 0
            kept = s.scalars(select(PaidAnswers).where(PaidAnswers.job_id == job_id)).all()
            assert kept == []  # the job is over: nothing kept
    finally:
        db.dispose()


@pytest.mark.postgres
def test_production_wakes_a_due_job_onto_the_queue_once(pg_url, tmp_path):
    upgrade(pg_url)
    db = Database(pg_url)
    try:
        with db.session() as s:
            s.add(Tenant(id="tn_q", name="q"))
        due, _ = seed_job(db, "q", provider="clarifai", not_before=utcnow() - timedelta(seconds=1))
        later, _ = seed_job(db, "q", provider="clarifai", not_before=utcnow() + timedelta(hours=1))
        app = make_queue_app(service_settings(tmp_path, pg_url), db)
        wake = app.tasks["wake_waiting"]

        async def tick() -> None:
            async with app.open_async():
                await wake(timestamp=0)

        asyncio.run(tick())
        asyncio.run(tick())  # the next tick finds nothing due: not deferred twice
        with db.session() as s:
            queued = s.execute(
                text("SELECT task_name, args FROM procrastinate_jobs ORDER BY id")
            ).all()
            waits = dict(s.execute(select(Job.id, Job.not_before)).all())
        assert [(name, args) for name, args in queued] == [("run_job", {"job_id": due})]
        assert waits[due] is None and waits[later] is not None
        assert lifecycle.next_queued(db, set()) == due
    finally:
        db.dispose()


def _customvision_job(client, headers, fake: FakeCustomVision, small_npz) -> dict:
    """The spec of a small job on the Custom Vision ``fake``, its data and key stored."""
    ds = upload(client, headers, small_npz)
    cred = add_credential(client, headers, KEY, "customvision")
    oracle = customvision_oracle(fake, credential_id=cred, rate_limit=1000)
    return {"dataset_id": ds["id"], "oracle": oracle} | RUN


def test_a_quota_that_renews_in_days_fails_a_service_job_at_once_and_predict_says_when(
    tmp_path, small_npz
):
    """Custom Vision's call-volume 403 says when the month's quota renews: a job does not
    sit queued for days, and a prediction's 503 carries the real Retry-After."""
    with FakeCustomVision(keys=[KEY], rate_limit=None, model="cheap") as fake:
        settings = service_settings(tmp_path, None, oracle_allowed_endpoints=[fake.endpoint])
        with service(settings) as (client, headers):
            spec = _customvision_job(client, headers, fake, small_npz)
            done = wait_final(client, headers, post_job(client, headers, spec))
            assert done["status"] == "succeeded", done["error"]
            fake.quota = 0  # the month's predictions are used up from now on
            pred = client.post(
                f"/v1/jobs/{done['id']}/predict",
                headers=headers,
                files=[("files", ("x.png", png(20)))],
            )
            start = time.monotonic()
            failed = wait_final(client, headers, post_job(client, headers, spec))
            took = time.monotonic() - start
    assert pred.status_code == 503 and KEY not in pred.text
    assert int(pred.headers["retry-after"]) == 30 * 86400  # not the service's 600 s guess
    assert "the prediction quota is used up (renews in 30 d)" in pred.json()["detail"]
    assert failed["status"] == "failed" and failed["waiting"] is None and took < 60
    assert failed["error"].startswith("QuotaExhausted: Custom Vision answered HTTP 403")
    assert "later than a job waits for its oracle's quota (2 h" in failed["error"]


def test_a_service_job_pays_once_for_the_answers_it_had_when_its_quota_ran_out(tmp_path, small_npz):
    """Custom Vision answers one image per request, so the quota cuts a step short with
    some of its answers paid for: the job carries them over its wait in the queue
    (``paid_answers``), and costs what the same job with no quota costs, to the query."""
    now = [0.0]  # the fake's clock: the test moves it on to renew the quota
    fake = FakeCustomVision(
        keys=[KEY], rate_limit=None, model="cheap", quota_period_seconds=2.0, clock=lambda: now[0]
    )
    with fake:
        settings = service_settings(
            tmp_path, None, oracle_allowed_endpoints=[fake.endpoint], quota_wait_seconds=1.0
        )
        with service(settings) as (client, headers):
            spec = _customvision_job(client, headers, fake, small_npz)
            free = wait_final(client, headers, post_job(client, headers, spec))
            fake.reset()
            fake.quota = free["spend"]["queries"] // 3 + 5  # three periods' worth, mid-step
            job_id = post_job(client, headers, spec)
            waits: set[str] = set()
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
                if job["waiting"] is not None and job["waiting"]["until"] not in waits:
                    waits.add(job["waiting"]["until"])
                    now[0] += 2.0  # the period ends: the quota renews
                if job["status"] in FINAL:
                    break
                time.sleep(0.05)
            counts = fake.counts(KEY)
    assert free["status"] == job["status"] == "succeeded", job["error"]
    assert len(waits) == 2 and counts["failed"] >= 2  # the 403s
    assert job["spend"]["queries"] == free["spend"]["queries"] == counts["answered"]
    assert job["result"]["test_accuracy"] == free["result"]["test_accuracy"]
