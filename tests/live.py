"""A real ``reprogram serve`` process for tests that talk HTTP to it (client, browser)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

# Jobs that finish in seconds on a 2-core machine (as the e2e tests run them).
SMALL_RUN = {
    "program": {"input_size": 64, "target_size": 24},
    "optimizer": {"iterations": 6, "q": 2, "batch_size": 4, "eval_every": 3},
    "budget": {"max_queries": 3000},
    "seed": 0,
}


@dataclass
class LiveServer:
    url: str
    data_dir: Path
    db_url: str
    log: Path
    proc: subprocess.Popen  # a test about the process may kill it

    def token(self, tenant: str) -> str:
        """A new token for ``tenant`` (created on first use)."""
        from app.services.auth import create_token
        from app.storage.db import Database

        db = Database(self.db_url)
        try:
            with db.session() as s:
                return create_token(s, tenant_name=tenant)
        finally:
            db.dispose()

    def headers(self, tenant: str) -> dict[str, str]:
        """Authorization headers with a new token of ``tenant``."""
        return {"Authorization": f"Bearer {self.token(tenant)}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(tmp: Path, *, workers: int = 2, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a service with its data under ``tmp`` (SQLite there, unless ``env``
    names another database), ``workers`` embedded job processes, and ``env`` on top."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("REPROGRAM_")}
    return environ | {
        "REPROGRAM_DATA_DIR": str(tmp / "data"),
        "REPROGRAM_SECRET_KEY": "live-server-test-key",
        "REPROGRAM_EMBEDDED_WORKERS": str(workers),
        **(env or {}),
    }


def post_dataset(
    url: str, headers: dict[str, str], content: bytes, name: str = "d.npz"
) -> dict[str, Any]:
    """Upload ``content`` to the server at ``url``; the data set's JSON."""
    r = httpx.post(
        f"{url}/v1/datasets", headers=headers, files={"file": (name, content)}, timeout=60
    )
    assert r.status_code == 201, r.text
    return r.json()


def cli(args: list[str], env: dict[str, str]) -> str:
    """``reprogram ARGS`` in a process of its own; its standard output."""
    out = subprocess.run(
        [sys.executable, "-m", "app.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@contextmanager
def live_server(
    tmp: Path,
    *,
    workers: int = 2,
    timeout: float = 60,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> Iterator[LiveServer]:
    """``reprogram serve ARGS`` on a free port, data under ``tmp``; ``env``: more
    ``REPROGRAM_*`` settings. A second server on the same ``tmp`` finds the first's data (a
    restart, or several servers on one database)."""
    from app.storage.migrate import upgrade

    environ = server_env(tmp, workers=workers, env=env)
    data_dir = Path(environ["REPROGRAM_DATA_DIR"])
    data_dir.mkdir(parents=True, exist_ok=True)
    db_url = environ.get("REPROGRAM_DATABASE_URL") or f"sqlite:///{data_dir / 'reprogram.db'}"
    upgrade(db_url)
    port = free_port()
    log = tmp / f"serve-{port}.log"
    with open(log, "a") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli.main", "serve", "--port", str(port), *args],
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"reprogram serve exited:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"reprogram serve did not start:\n{log.read_text()}")
            time.sleep(0.2)
        yield LiveServer(url, data_dir, db_url, log, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
