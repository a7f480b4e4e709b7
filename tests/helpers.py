"""Helpers for tests that drive the service: worker processes and polling."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi.testclient import TestClient

from app.config.settings import Settings

FINAL = ("succeeded", "failed", "cancelled", "budget_exhausted")


def start_workers(
    settings: Settings, n: int, log_dir: Path, prefix: str = "worker"
) -> list[subprocess.Popen]:
    """``reprogram worker`` processes on the settings' database, logging to files."""
    env = {
        **os.environ,
        "REPROGRAM_DATABASE_URL": settings.db_url,
        "REPROGRAM_DATA_DIR": str(settings.data_dir),
        "REPROGRAM_SECRET_KEY": settings.secret_key.get_secret_value(),
    }  # type: ignore[union-attr]
    procs = []
    for i in range(n):
        with open(log_dir / f"{prefix}{i}.log", "w") as log:  # the child keeps its own copy
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "app.cli.main", "worker", "--concurrency", "2"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    return procs


def wait_final(client: TestClient, headers: dict, job_id: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if job["status"] in FINAL:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish: {job}")


@contextmanager
def service(
    settings: Settings, *, run_jobs: bool = True, tenant: str = "acme"
) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """The API in-process, and auth headers of a fresh tenant."""
    from app.api.app import create_app
    from app.services.auth import create_token
    from app.storage.db import Database

    with TestClient(create_app(settings, run_jobs=run_jobs)) as client:
        db = Database(settings.db_url)
        with db.session() as s:
            token = create_token(s, tenant_name=tenant)
        db.dispose()
        yield client, {"Authorization": f"Bearer {token}"}


def upload(
    client: TestClient, headers: dict[str, str], content: bytes, name: str = "data.npz"
) -> dict:
    r = client.post("/v1/datasets", headers=headers, files={"file": (name, content)})
    assert r.status_code == 201, r.text
    return r.json()
