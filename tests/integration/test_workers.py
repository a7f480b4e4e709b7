"""Workers on the real task queue (PostgreSQL + procrastinate): budgets under concurrency,
a worker killed mid-job, cancel; and the embedded runner's cancel on SQLite."""

from __future__ import annotations

import multiprocessing as mp
import signal
import time

import numpy as np
import pytest

from adapters.dispatch import RequestRecord
from adapters.errors import BudgetExceeded
from app.jobs.artifacts import ProgramFile
from app.jobs.ledger import DbLedger
from app.storage.db import Database
from app.storage.migrate import upgrade
from app.storage.models import Job, Tenant
from tests.fakes.clarifai import FakeClarifai
from tests.helpers import (
    add_credential,
    post_job,
    seed_job,
    service,
    service_settings,
    start_workers,
    upload,
    wait_final,
)

KEY = "shared-credential-e2e"


def spec(dataset_id: str, **over) -> dict:
    base = {
        "dataset_id": dataset_id,
        "oracle": {"kind": "torch"},
        "program": {"input_size": 64, "target_size": 24},
        "optimizer": {"iterations": 30, "q": 2, "batch_size": 4, "eval_every": 10},
        "seed": 3,
    }
    return base | over


def wait_iteration(client, headers: dict, job_id: str, n: int, timeout: float = 120) -> None:
    """Until the job has finished ``n`` iterations (it is running by then)."""
    deadline = time.monotonic() + timeout
    while client.get(f"/v1/jobs/{job_id}", headers=headers).json()["progress"]["iteration"] < n:
        assert time.monotonic() < deadline, f"job {job_id} never reached iteration {n}"
        time.sleep(0.1)


def start_endless_job(client, headers: dict, npz: bytes) -> tuple[str, str]:
    """Upload ``npz`` and submit a job that runs until it is stopped; once it has finished
    2 iterations, (data set id, job id)."""
    ds = upload(client, headers, npz)["id"]
    body = spec(ds, optimizer={"iterations": 100_000, "q": 2, "batch_size": 4})
    job_id = post_job(client, headers, body)
    wait_iteration(client, headers, job_id, 2)
    return ds, job_id


def _hammer(url: str, job_id: str, tenant_id: str, n: int, out: mp.Queue) -> None:
    ledger = DbLedger(Database(url), job_id, tenant_id, "clarifai", None, 0.001)
    granted = 0
    for _ in range(n):
        try:
            res = ledger.reserve("training", 7)
        except BudgetExceeded:
            continue
        res.settle(RequestRecord("training", 7, 7, "ok", None, 0.0))
        granted += 7
    out.put(granted)


@pytest.mark.postgres
def test_reservations_from_two_processes_never_exceed_a_budget(pg_url):
    upgrade(pg_url)
    db = Database(pg_url)
    with db.session() as s:
        s.add(Tenant(id="tn_x", name="x"))
    seed_job(db, "x", id="job_x", provider="clarifai", query_cap=500)
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(pg_url, "job_x", "tn_x", 60, out)) for _ in range(2)]
    for p in procs:
        p.start()
    granted = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    with db.session() as s:
        job = s.get(Job, "job_x")
        assert job.queries == sum(granted) == 497  # 71 × 7: the last 7 would pass 500
        assert job.reserved_queries == 0
    db.dispose()


@pytest.mark.postgres
@pytest.mark.slow
def test_two_workers_one_credential_never_exceed_budgets(pg_url, tmp_path, small_npz):
    with FakeClarifai(keys=[KEY], rate_limit=100) as fake:
        # The fake listens on loopback: the operator's allowlist lets tenants' jobs reach it.
        settings = service_settings(tmp_path, pg_url, oracle_allowed_endpoints=[fake.endpoint])
        with service(settings) as (client, h):
            ds = upload(client, h, small_npz)
            cred = add_credential(client, h, KEY)
            oracle = {
                "kind": "clarifai",
                "model_id": "moderation-recognition",
                "endpoint": f"http://127.0.0.1:{fake.port}",
                "credential_id": cred,
            }
            ids = [
                client.post(
                    "/v1/jobs",
                    headers=h,
                    json=spec(
                        ds["id"],
                        oracle=oracle,
                        seed=i,
                        optimizer={"iterations": 10_000, "q": 2, "batch_size": 4, "eval_every": 10},
                        budget={"max_queries": 900},
                    ),
                ).json()["id"]
                for i in range(2)
            ]
            workers = start_workers(settings, 2, tmp_path)
            try:
                jobs = [wait_final(client, h, i) for i in ids]
            finally:
                for w in workers:
                    w.terminate()
                    w.wait(20)
            for job in jobs:
                assert job["status"] == "budget_exhausted", job  # training stopped by the budget
                assert job["result"]["test_accuracy"] is not None  # evaluation fitted in
                assert 800 < job["spend"]["queries"] <= 900
            spend = client.get("/v1/spend", headers=h).json()
            assert spend["by_oracle"]["clarifai"]["queries"] == fake.counts(KEY).billable


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize("validation", ["holdout", "cross_fit"])
def test_killed_worker_job_resumes_elsewhere_to_the_same_program(
    validation, pg_url, tmp_path, small_npz
):
    settings = service_settings(tmp_path, pg_url)
    with service(settings) as (client, h):
        ds = upload(client, h, small_npz)
        first = start_workers(settings, 1, tmp_path, prefix="doomed")[0]
        # 16 iterations, evaluated every 5: killed after the first evaluation, so the survivor
        # resumes a selection in progress (30 iterations made this the suite's slowest test).
        optimizer = {"iterations": 16, "q": 2, "batch_size": 4, "eval_every": 5}
        body = spec(ds["id"], data={"validation": validation}, optimizer=optimizer)
        killed = client.post("/v1/jobs", headers=h, json=body).json()["id"]
        wait_iteration(client, h, killed, 6)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        at_kill = client.get(f"/v1/jobs/{killed}", headers=h).json()
        assert at_kill["status"] == "running" and at_kill["progress"]["iteration"] < 16
        survivor = start_workers(settings, 1, tmp_path, prefix="survivor")[0]
        try:
            resumed = wait_final(client, h, killed, timeout=300)
            reference = client.post("/v1/jobs", headers=h, json=body).json()["id"]
            straight = wait_final(client, h, reference, timeout=300)
        finally:
            survivor.terminate()
            survivor.wait(20)
        assert resumed["status"] == straight["status"] == "succeeded"
        assert resumed["result"]["validation"]["method"] == validation
        a = ProgramFile.load(client.get(f"/v1/jobs/{killed}/program", headers=h).content)
        b = ProgramFile.load(client.get(f"/v1/jobs/{reference}/program", headers=h).content)
        np.testing.assert_array_equal(a.arrays["P"], b.arrays["P"])
        assert resumed["result"]["test_accuracy"] == straight["result"]["test_accuracy"]
        # The lost iteration was paid for once more: the ledger never undercounts.
        assert resumed["spend"]["queries"] >= straight["spend"]["queries"]


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_cancel_stops_a_running_job_within_an_iteration(backend, request, tmp_path, small_npz):
    url = request.getfixturevalue("pg_url") if backend == "postgres" else None
    settings = service_settings(tmp_path, url)
    with service(settings) as (client, h):
        ds = upload(client, h, small_npz)
        workers = start_workers(settings, 1, tmp_path) if backend == "postgres" else []
        try:
            job_id = client.post(
                "/v1/jobs",
                headers=h,
                json=spec(
                    ds["id"],
                    optimizer={"iterations": 100_000, "q": 2, "batch_size": 4, "eval_every": 1000},
                ),
            ).json()["id"]
            wait_iteration(client, h, job_id, 3)
            assert client.post(f"/v1/jobs/{job_id}/cancel", headers=h).status_code == 202
            at_cancel = client.get(f"/v1/jobs/{job_id}", headers=h).json()["progress"]["iteration"]
            job = wait_final(client, h, job_id, timeout=60)
        finally:
            for w in workers:
                w.terminate()
                w.wait(20)
        assert job["status"] == "cancelled"
        assert job["progress"]["iteration"] <= at_cancel + 1
        assert client.get(f"/v1/jobs/{job_id}/program", headers=h).status_code == 200


def test_embedded_job_whose_process_dies_fails_and_the_runner_goes_on(tmp_path, small_npz):
    """SQLite mode runs each job in a child process: killing it mid-job marks that job failed
    (not stuck as running) and the next queued job still runs."""
    with service(service_settings(tmp_path)) as (client, h):
        ds, doomed = start_endless_job(client, h, small_npz)
        children = [p for p in mp.active_children() if p.name == f"job-{doomed}"]
        assert len(children) == 1, mp.active_children()
        children[0].kill()
        job = wait_final(client, h, doomed, timeout=60)
        assert job["status"] == "failed"
        assert "exited with code -9" in job["error"]
        after = post_job(client, h, spec(ds, seed=4))
        assert wait_final(client, h, after)["status"] == "succeeded"


def test_embedded_shutdown_requeues_running_jobs_and_the_next_start_resumes(tmp_path, small_npz):
    settings = service_settings(tmp_path)
    with service(settings) as (client, h):
        _, job_id = start_endless_job(client, h, small_npz)
    db = Database(settings.db_url)
    with db.session() as s:
        stopped = s.get(Job, job_id)
        assert stopped.status == "queued" and stopped.iteration >= 2
        at_stop = stopped.iteration
    db.dispose()
    with service(settings) as (client, h):
        seen = []
        deadline = time.monotonic() + 120
        while not seen or seen[-1] < at_stop + 3:
            assert time.monotonic() < deadline
            job = client.get(f"/v1/jobs/{job_id}", headers=h).json()
            if job["status"] == "running":
                seen.append(job["progress"]["iteration"])
            time.sleep(0.05)
        client.post(f"/v1/jobs/{job_id}/cancel", headers=h)
        assert wait_final(client, h, job_id)["status"] == "cancelled"
    assert min(seen) >= at_stop  # continued from the checkpoint, not from iteration 0
