"""A real ``reprogram serve`` process on a free loopback port, for tests about the server
as a process (kills, restarts, sockets)."""

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(args: list[str], env: dict[str, str]) -> str:
    """Run ``reprogram ARGS``; its standard output."""
    out = subprocess.run(
        [sys.executable, "-m", "app.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    env: dict[str, str]
    log: Path

    def token(self, tenant: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {cli(['token', 'create', '--tenant', tenant], self.env)}"}


def server_env(data_dir: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "REPROGRAM_DATA_DIR": str(data_dir), **extra}


@contextmanager
def real_server(
    env: dict[str, str], log: Path, port: int | None = None, args: tuple[str, ...] = ()
) -> Iterator[Server]:
    """``reprogram serve [ARGS]`` until the block ends (or the test kills it)."""
    port = port or free_port()
    with open(log, "a") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli.main", "serve", "--port", str(port), *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        yield Server(url, proc, env, log)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
