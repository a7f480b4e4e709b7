"""A real ``reprogram serve`` for the API benchmarks (api_cpu, api_latency, sse_cost,
upload_memory): its environment and database, a token, the process, waiting until it
answers, and stopping it (and dropping its PostgreSQL database) afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

#: ``reprogram`` as a command line of this interpreter
EXE = [sys.executable, "-m", "app.cli.main"]


def server_env(
    tmp: Path, backend: str = "sqlite", embedded_workers: int | None = 0, **extra: str
) -> tuple[dict[str, str], str | None]:
    """The environment of a server with its data under ``tmp`` and ``embedded_workers`` job
    processes (None: the server's default), ``extra`` on top; and, on ``backend``
    "postgres", the URL of a fresh database it uses (None on SQLite: a file under ``tmp``).
    ``stop`` drops that database."""
    env = {**os.environ, "REPROGRAM_DATA_DIR": str(tmp), "REPROGRAM_SECRET_KEY": "bench"}
    if embedded_workers is not None:
        env["REPROGRAM_EMBEDDED_WORKERS"] = str(embedded_workers)
    env |= extra
    pg = None
    if backend == "postgres":
        from tests.helpers import create_database

        pg = env["REPROGRAM_DATABASE_URL"] = create_database()
    return env, pg


def database_url(tmp: Path, pg: str | None) -> str:
    """The database of a server from ``server_env(tmp, ...)``."""
    return pg or f"sqlite:///{tmp / 'reprogram.db'}"


def create_token(env: dict[str, str], tenant: str = "bench") -> str:
    """A new token of ``tenant`` (created on first use) from ``reprogram token create``."""
    out = subprocess.run(
        [*EXE, "token", "create", "--tenant", tenant],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip().splitlines()[-1]


def start(args: list[str], env: dict[str, str], log: Path | None = None) -> subprocess.Popen:
    """``reprogram ARGS``, its output to ``log`` (or discarded)."""
    if log is None:
        return subprocess.Popen(
            [*EXE, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    with open(log, "w") as out:  # the child keeps its own copy
        return subprocess.Popen([*EXE, *args], env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_healthy(
    url: str, server: subprocess.Popen, log: Path | None = None, timeout: float = 60
) -> None:
    """Until ``url/healthz`` answers 200; exits the benchmark, with the end of ``log``, if
    the server exits or does not answer within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if server.poll() is not None:
            sys.exit(f"the server exited:\n{_tail(log)}")
        if time.monotonic() > deadline:
            sys.exit(f"the server did not answer within {timeout:.0f} s:\n{_tail(log)}")
        time.sleep(0.25)


def _tail(log: Path | None) -> str:
    return log.read_text()[-3000:] if log is not None else ""


def stop(procs: list[subprocess.Popen], pg: str | None = None) -> None:
    """Terminate ``procs`` (killing any still running after 30 s) and drop ``pg``."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:  # a worker finishing its job's last iteration
            proc.kill()
            proc.wait()
    if pg:
        from tests.helpers import drop_database

        drop_database(pg)
