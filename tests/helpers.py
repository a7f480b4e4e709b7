"""What several test modules need: data (digits, images), PostgreSQL databases, the service
in-process with tenants, jobs and programs, worker processes and polling, a hostile HTTP
listener.

Test modules import these from here, never from one another. The application is imported
inside the helpers that use it, so that ``conftest.py`` (which imports this module for every
test) stays light for the unit tests.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import psycopg

if TYPE_CHECKING:
    from click.testing import Result
    from fastapi.testclient import TestClient

    from app.config.settings import Settings
    from app.storage.db import Database
    from tests.fakes.clarifai import FakeClarifai
    from tests.fakes.customvision import FakeCustomVision

FINAL = ("succeeded", "failed", "cancelled", "budget_exhausted")
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


# --- data --------------------------------------------------------------------------------------


def digits_npz(n_per_class: int = 12, classes: int = 3, size: int = 16, seed: int = 0) -> bytes:
    """Real handwritten digits (scikit-learn's 8×8 set, upscaled) as docs/contract.md's .npz."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for c in range(classes):
        idx = rng.permutation(np.flatnonzero(d.target == c))[:n_per_class]
        for i in idx:
            img = (d.images[i] / 16.0 * 255).astype(np.uint8)
            xs.append(np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR)))
            ys.append(c)
    buf = io.BytesIO()
    np.savez(
        buf,
        x=np.stack(xs)[..., None],
        y=np.array(ys),
        classes=np.array([f"digit{c}" for c in range(classes)]),
    )
    return buf.getvalue()


def split_digits_npz(train_per_class: list[int], test_per_class: int = 8, size: int = 16) -> bytes:
    """Handwritten digits 0, 1, … (scikit-learn's, upscaled) as an .npz with train and test
    splits and no val: what a user uploads as train/ and test/ folders, with
    ``train_per_class[c]`` training images of digit c."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(0)
    xs, ys, split = [], [], []
    for c, n_train in enumerate(train_per_class):
        idx = rng.permutation(np.flatnonzero(d.target == c))[: n_train + test_per_class]
        for k, i in enumerate(idx):
            img = (d.images[i] / 16.0 * 255).astype(np.uint8)
            xs.append(np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR)))
            ys.append(c)
            split.append("train" if k < n_train else "test")
    buf = io.BytesIO()
    np.savez(buf, x=np.stack(xs)[..., None], y=np.array(ys), split=np.array(split))
    return buf.getvalue()


def png(size: int = 8, seed: int = 0, fmt: str = "PNG") -> bytes:
    """A ``size``×``size`` RGB image of noise, encoded as ``fmt`` (PNG unless told)."""
    from PIL import Image

    img = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt)
    return buf.getvalue()


# --- runs on the fakes --------------------------------------------------------------------------


#: a cloud job of seconds: 10 iterations on a 64×64 frame, about 30 requests of 6–48 images
CLOUD_RUN: dict[str, Any] = {
    "program": {"input_size": 64, "target_size": 24},
    "optimizer": {"iterations": 10, "q": 2, "batch_size": 6, "eval_every": 5},
    "budget": {"max_queries": 3000},
    "seed": 1,
}


def clarifai_oracle(fake: FakeClarifai, **fields: Any) -> dict[str, Any]:
    """The oracle of a run or job spec: the moderation model on the Clarifai ``fake``; ``fields``
    add how to find the key (``api_key_env`` or ``credential_id``) and anything else."""
    return {
        "kind": "clarifai",
        "model_id": "moderation-recognition",
        "endpoint": fake.endpoint,
        **fields,
    }


def customvision_oracle(fake: FakeCustomVision, **fields: Any) -> dict[str, Any]:
    """The oracle of a run or job spec: the moderation project on the Custom Vision ``fake``."""
    from tests.fakes.customvision import MODERATION_PROJECT, PUBLISHED

    return {
        "kind": "customvision",
        "project_id": MODERATION_PROJECT,
        "published_name": PUBLISHED,
        "endpoint": fake.endpoint,
        **fields,
    }


def write_spec(tmp_path: Path, spec: dict) -> Path:
    """``spec`` as ``tmp_path/spec.json``, for ``reprogram train --config``."""
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def cli_train(config: object, data: object, out: object) -> Result:
    """`reprogram train --config CONFIG --data DATA --out OUT`, in process."""
    from typer.testing import CliRunner

    from app.cli.main import app

    return CliRunner().invoke(
        app, ["train", "--config", str(config), "--data", str(data), "--out", str(out)]
    )


# --- an endpoint that is not a provider ---------------------------------------------------------


class Listener:
    """An HTTP server on loopback that answers every request alike (``status``, ``body``,
    ``headers``, a reason phrase) and records what it received: ``requests`` holds (method,
    path, headers by lower-case name). Stands in for an internal service a tenant might aim
    an oracle at."""

    def __init__(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        reason: str | None = None,
    ) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers_in = {k.lower(): v for k, v in self.headers.items()}
                owner.requests.append((self.command, self.path, headers_in))
                self.send_response(status, reason)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Listener:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- databases ---------------------------------------------------------------------------------


def create_database() -> str:
    """A fresh, empty PostgreSQL database; its URL."""
    name = f"rp_test_{secrets.token_hex(6)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql://postgres@127.0.0.1:5432/{name}"


def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- the service in-process --------------------------------------------------------------------


def service_settings(tmp: Path, url: str | None = None, **fields: Any) -> Settings:
    """Settings of a service under the folder ``tmp``: its database ``url`` (default: an SQLite
    file there), a server key, limits in memory; ``fields`` override any of them."""
    from app.config.settings import Settings

    defaults: dict[str, Any] = {
        "data_dir": tmp / "data",
        "database_url": url or f"sqlite:///{tmp / 'svc.db'}",
        "secret_key": "test-server-key",
        "rate_limit_backend": "memory",
    }
    return Settings(**(defaults | fields))


@contextmanager
def api(
    settings: Settings, *, run_jobs: bool = True, raise_server_exceptions: bool = True
) -> Iterator[tuple[TestClient, Database]]:
    """The API in-process, and the database behind it (for tokens and what workers do)."""
    from fastapi.testclient import TestClient

    from app.api.app import create_app
    from app.storage.db import Database

    app = create_app(settings, run_jobs=run_jobs)
    with TestClient(app, raise_server_exceptions=raise_server_exceptions) as client:
        db = Database(settings.db_url)
        try:
            yield client, db
        finally:
            db.dispose()


@dataclass
class World:
    """A service in-process that a whole test module shares: its client, database and
    settings, a tenant's auth headers, and the ids of what the module stored up front."""

    client: TestClient
    db: Database
    settings: Settings
    headers: dict[str, str]
    ids: dict[str, str] = field(default_factory=dict)


@contextmanager
def service(
    settings: Settings, *, run_jobs: bool = True, tenant: str = "acme"
) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """The API in-process, and auth headers of a fresh tenant."""
    with api(settings, run_jobs=run_jobs) as (client, db):
        yield client, bearer(db, tenant)


def bearer(db: Database, tenant: str) -> dict[str, str]:
    """Auth headers with a new token of ``tenant`` (created if it does not exist)."""
    from app.services.auth import create_token

    with db.session() as s:
        return {"Authorization": f"Bearer {create_token(s, tenant_name=tenant)}"}


def upload(
    client: TestClient, headers: dict[str, str], content: bytes, name: str = "data.npz"
) -> dict:
    r = client.post("/v1/datasets", headers=headers, files={"file": (name, content)})
    assert r.status_code == 201, r.text
    return r.json()


def add_credential(
    client: TestClient, headers: dict[str, str], secret: str, provider: str = "clarifai"
) -> str:
    """Store a credential; its id."""
    r = client.post(
        "/v1/credentials", headers=headers, json={"provider": provider, "secret": secret}
    )
    assert r.status_code == 201, r.text
    return r.json()["id"]


def small_torch_job(dataset_id: str, max_queries: int, **oracle: Any) -> dict[str, Any]:
    """A job spec on the bundled model seeing a 64×64 frame (24×24 target): seconds on a CPU."""
    return {
        "dataset_id": dataset_id,
        "oracle": {"kind": "torch", **oracle},
        "program": {"input_size": 64, "target_size": 24},
        "budget": {"max_queries": max_queries},
    }


def post_job(client: TestClient, headers: dict[str, str], spec: dict[str, Any]) -> str:
    """Submit a job; its id."""
    r = client.post("/v1/jobs", headers=headers, json=spec)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def give_program(
    db: Database, data_dir: Path, job_id: str, classes: list[str], **arrays: np.ndarray
) -> None:
    """Make a queued job look finished, with a program file, as a worker would leave it:
    a blank 32×32 program with a frequency mapping, or with ``arrays`` added or replaced."""
    from sqlalchemy import update

    from app.jobs.artifacts import npz_bytes
    from app.storage.models import Job

    arrays = {
        "P": np.zeros((32, 32, 3), np.float32),
        "mask": np.ones((32, 32, 3), np.float32),
        "mapping": np.zeros((len(classes), 1), np.int64),
        "source_labels": np.array(["a"]),
        "target_classes": np.array(classes),
        "target_size": np.array(16),
        "input_size": np.array(32),
        "spec": np.array("{}"),
    } | arrays
    rel = Path("artifacts") / job_id / "program.npz"
    (data_dir / rel).parent.mkdir(parents=True)
    (data_dir / rel).write_bytes(npz_bytes(arrays))
    with db.session() as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(status="succeeded", program_path=str(rel), iterations=0)
        )


# --- workers and polling -----------------------------------------------------------------------


def start_workers(
    settings: Settings, n: int, log_dir: Path, prefix: str = "worker"
) -> list[subprocess.Popen]:
    """``reprogram worker`` processes on the settings' database, logging to files."""
    env = {
        **os.environ,
        "REPROGRAM_DATABASE_URL": settings.db_url,
        "REPROGRAM_DATA_DIR": str(settings.data_dir),
        "REPROGRAM_SECRET_KEY": settings.secret_key.get_secret_value(),
        "REPROGRAM_ORACLE_ALLOWED_ENDPOINTS": ",".join(settings.oracle_allowed_endpoints),
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


def seed_job(db: Database, tenant: str, **job: Any) -> tuple[str, str]:
    """A job of ``tenant`` (which must exist) on a placeholder data set, with ``job``'s
    fields (an empty spec unless given), written straight to the database; (job id, tenant
    id)."""
    from app.storage.models import Dataset, Job, Tenant

    with db.session() as s:
        tn = s.query(Tenant).filter_by(name=tenant).one()
        ds = Dataset(
            tenant_id=tn.id,
            filename="d",
            path="x",
            sha256="0",
            size_bytes=1,
            n_samples=1,
            classes=[],
        )
        s.add(ds)
        s.flush()
        row = Job(tenant_id=tn.id, dataset_id=ds.id, **({"spec": {}} | job))
        s.add(row)
        s.flush()
        return row.id, tn.id
