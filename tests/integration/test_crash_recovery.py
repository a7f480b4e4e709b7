"""A server killed with its jobs: nothing stays `running` with nothing running it, no budget
is lost, no job process outlives its server (issue: hostile-but-fair operations)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx

from app.storage.db import Database
from app.storage.models import Job
from tests.helpers import digits_npz
from tests.live import live_server


def children_of(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(entry.name))
    return kids


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def job_of(url: str, h: dict, job_id: str) -> dict:
    return httpx.get(f"{url}/v1/jobs/{job_id}", headers=h, timeout=10).json()


def wait_for(predicate, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, what
        time.sleep(0.1)
    return time.monotonic() - start


def test_killed_server_and_job_process_the_job_resumes_within_seconds(tmp_path):
    spec = {
        "oracle": {"kind": "torch"},
        "program": {"input_size": 64, "target_size": 24},
        "optimizer": {"iterations": 100_000, "q": 2, "batch_size": 4, "eval_every": 1000},
        "budget": {"max_queries": 100_000},
        "seed": 1,
    }
    with live_server(tmp_path) as srv:
        h = srv.headers("acme")
        ds = httpx.post(
            f"{srv.url}/v1/datasets",
            headers=h,
            files={"file": ("d.npz", digits_npz())},
            timeout=60,
        ).json()
        job_id = httpx.post(
            f"{srv.url}/v1/jobs", headers=h, json=spec | {"dataset_id": ds["id"]}, timeout=10
        ).json()["id"]
        wait_for(lambda: job_of(srv.url, h, job_id)["progress"]["iteration"] >= 3, 120, "start")
        kids = [k for k in children_of(srv.proc.pid) if alive(k)]
        assert kids, "the job runs in a child process"
        os.kill(srv.proc.pid, signal.SIGKILL)
        srv.proc.wait(10)
        # The job's process does not run on unsupervised.
        orphan_s = wait_for(lambda: not any(alive(k) for k in kids), 10, "child outlived server")
    db = Database(srv.db_url)
    with db.session() as s:
        row = s.get(Job, job_id)
        assert row.status == "running"  # what the dead server left
        left_at, spent = row.iteration, row.queries
    with live_server(tmp_path) as srv:
        # Requeued by the new server within seconds (lease silent), resumed from the
        # checkpoint, with the dead process's reservations released.
        picked_s = wait_for(
            lambda: job_of(srv.url, h, job_id)["progress"]["iteration"] > left_at,
            60,
            "the job was not picked up again",
        )
        with db.session() as s:
            row = s.get(Job, job_id)
            assert row.attempts == 2 and row.queries >= spent
            assert row.reserved_queries <= 2 * 4 * 3  # one request in flight at most
        r = httpx.post(f"{srv.url}/v1/jobs/{job_id}/cancel", headers=h, timeout=10)
        assert r.status_code == 202
        wait_for(lambda: job_of(srv.url, h, job_id)["status"] == "cancelled", 30, "cancel")
    with db.session() as s:
        assert s.get(Job, job_id).reserved_queries == 0
    db.dispose()
    print(f"child gone {orphan_s:.1f} s after the kill; job resumed {picked_s:.1f} s after restart")
