"""What watching jobs over ``GET /v1/jobs/{id}/events`` costs the server.

Starts ``reprogram serve`` on a fresh database with realistic job rows (bench.api_cpu's),
then measures the server's CPU time (all its processes, from /proc) over ``--seconds`` in
each phase:

* idle: no watcher (the baseline: the process's own housekeeping);
* one watcher of a job that changes once a second (a training job's pace);
* ``--watchers`` (default 1,000) watchers of jobs that do not change;
* the same watchers, their jobs changing once a second (fan-out).

Each phase reports CPU ms per second above the idle baseline, events received, the server's
resident memory, and, on PostgreSQL, its database backends' CPU.

    python -m bench.sse_cost --backend sqlite
    python -m bench.sse_cost --backend postgres --watchers 1000 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import threading
from pathlib import Path

from bench.api_cpu import backends, proc_cpu, seed, tree
from bench.server import create_token, database_url, server_env, start, stop, wait_healthy
from tests.live import free_port


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


class Watchers:
    """``n`` open event streams over raw sockets, counting the events they receive."""

    def __init__(self, url: str, token: str, ids: list[str], n: int) -> None:
        self.host, self.port = url.removeprefix("http://").split(":")
        self.token, self.ids, self.n = token, ids, n
        self.events = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: list[asyncio.Task] = []

    async def open(self) -> None:
        for i in range(self.n):
            reader, writer = await asyncio.open_connection(self.host, int(self.port))
            writer.write(
                f"GET /v1/jobs/{self.ids[i % len(self.ids)]}/events HTTP/1.1\r\n"
                f"Host: {self.host}\r\nAuthorization: Bearer {self.token}\r\n\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            self.writers.append(writer)
            self.tasks.append(asyncio.create_task(self._read(reader)))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while True:
            line = await reader.readline()
            if not line:
                return
            if line.startswith(b"event: job"):
                self.events += 1

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        for w in self.writers:
            w.close()
        await asyncio.sleep(0.5)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--watchers", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=20)
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp())
    env, pg = server_env(tmp, a.backend)
    db_url = database_url(tmp, pg)
    token = create_token(env)
    ids = seed(db_url, "bench", 8)
    moving, still = ids[:4], ids[4:]
    port = free_port()
    server = start(["serve", "--port", str(port)], env)
    url = f"http://127.0.0.1:{port}"
    stopping = threading.Event()

    def progress() -> None:
        """The moving jobs advance one iteration a second (as training jobs do)."""
        from sqlalchemy import update

        from app.storage.db import Database
        from app.storage.models import Job

        db = Database(db_url)
        while not stopping.wait(1.0):
            with db.session() as s:
                s.execute(update(Job).where(Job.id.in_(moving)).values(iteration=Job.iteration + 1))
        db.dispose()

    rows = []
    try:
        wait_healthy(url, server)
        threading.Thread(target=progress, daemon=True).start()

        async def phase(name: str, n: int, jobs: list[str]) -> None:
            watchers = Watchers(url, token, jobs, n)
            await watchers.open()
            await asyncio.sleep(2.0)  # settle: connections open, the poller running
            pids = tree(server.pid)
            pg_pids = backends(pg) if pg else []
            events0, cpu0 = watchers.events, sum(map(proc_cpu, pids))
            pg0 = sum(map(proc_cpu, pg_pids))
            await asyncio.sleep(a.seconds)
            cpu = sum(map(proc_cpu, pids)) - cpu0
            pgcpu = sum(map(proc_cpu, pg_pids)) - pg0
            rows.append(
                (
                    name,
                    n,
                    watchers.events - events0,
                    cpu / a.seconds,
                    pgcpu / a.seconds,
                    rss_mb(pids),
                )
            )
            await watchers.close()

        async def run() -> None:
            await phase("idle (no watcher)", 0, still)
            await phase("1 watcher, job changing 1/s", 1, moving[:1])
            await phase(f"{a.watchers} watchers, idle jobs", a.watchers, still)
            await phase(f"{a.watchers} watchers, jobs changing 1/s", a.watchers, moving)

        asyncio.run(run())
    finally:
        stopping.set()
        stop([server], pg)
    base = rows[0][3]
    print(f"\n{a.backend}: {a.seconds:.0f} s per phase, load average {os.getloadavg()[0]:.1f}\n")
    print("| phase | watchers | events/s | server CPU ms/s | above idle | DB CPU ms/s | RSS MB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, n, events, cpu, pgcpu, rss in rows:
        print(
            f"| {name} | {n} | {events / a.seconds:.1f} | {1e3 * cpu:.1f} | "
            f"{1e3 * (cpu - base):+.1f} | {1e3 * pgcpu:.1f} | {rss:.0f} |"
        )


if __name__ == "__main__":
    main()
