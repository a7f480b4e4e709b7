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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(
    tmp: Path, *, workers: int = 2, timeout: float = 60, env: dict[str, str] | None = None
) -> Iterator[LiveServer]:
    """``reprogram serve`` in embedded mode on a free port, data under ``tmp``; ``env``: more
    ``REPROGRAM_*`` settings."""
    from app.storage.migrate import upgrade

    data_dir = tmp / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    db_url = f"sqlite:///{data_dir / 'reprogram.db'}"
    upgrade(db_url)
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("REPROGRAM_")}
    environ |= {
        "REPROGRAM_DATA_DIR": str(data_dir),
        "REPROGRAM_SECRET_KEY": "live-server-test-key",
        "REPROGRAM_EMBEDDED_WORKERS": str(workers),
        **(env or {}),
    }
    log = tmp / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli.main", "serve", "--port", str(port)],
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
        yield LiveServer(url, data_dir, db_url, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
