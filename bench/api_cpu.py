"""CPU time per `GET /v1/jobs/{id}`: what one status read costs the server (and PostgreSQL).

Latency under load says whether the machine keeps up; CPU time per request says why, and it
barely moves when other work shares the machine (the latency benchmark's numbers do). This
starts a real server (`reprogram serve`, or any command given with ``--cmd``), seeds the
database with realistic jobs (the JSON of a real running job: metrics row, 14 choices), sends
``--requests`` keep-alive requests from ``--conns`` connections (closed loop) and divides the
CPU time the server's processes (and, on PostgreSQL, the server's database backends) used by
the number of requests. ``--profile FILE`` samples the server with py-spy meanwhile (all
threads, no idle frames) and prints where the samples fall.

    python -m bench.api_cpu --backend sqlite --requests 4000
    python -m bench.api_cpu --backend postgres --requests 4000 --profile /tmp/pg.txt
    python -m bench.api_cpu --cmd "{python} -m app.cli.main serve --port {port} --workers 2"
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from bench.server import create_token, database_url, server_env, stop, wait_healthy
from tests.live import free_port

CHOICES = [
    "mapping.method = 'learned': the oracle exposes 1000 labels for 10 classes; a linear "
    "read-out fitted on our side starts from the linear probe",
    "mapping.labels_per_class = 10: 1000 labels shared disjointly by 10 classes (at most 10 each)",
    "optimizer.estimator = 'spsa': fewest queries per accuracy point in BENCHMARKS.md",
    "optimizer.q = 10: directions per iteration",
    "optimizer.beta = 0.01: smoothing radius",
    "optimizer.lr = 0.01: Adam step",
    "optimizer.optimizer = 'adam': adaptive steps suit noisy estimates (ZO-AdaMM)",
    "optimizer.lr_decay = 1.0: no decay with Adam",
    "optimizer.batch_size = 10: minibatch per iteration",
    "program.basis = 'bilinear': a low-resolution program needs far fewer queries",
    "program.input_size = 128: the frame size the oracle sees",
    "program.target_size = 48: the target image covers 3/8 of the frame",
    "program.resolution = 8: an 8×8 program per channel, upsampled: on MNIST/ImageNet it "
    "gained 5 points over the probe at 20k queries where 16×16 gained none and 4×4 gained 2.6",
    "optimizer.eval_every = 50: validate every 50 iterations (5 times over a shorter run) and "
    "at the end, keeping the best program",
]
METRICS = {
    "kind": "iteration",
    "iteration": 2,
    "queries": 700,
    "requests": 4,
    "cost_usd": 0.0,
    "loss": 2.944166,
    "train_acc": 0.155,
    "val_acc": 0.81,
}
# Where the server's samples go: the first category whose marker occurs in a sample's stack
# (outermost frame first) takes the sample.
CATEGORIES = [
    ("json encoding", ("jsonable_encoder", "serialize_response", "render (starlette", "dumps")),
    ("auth (token cache / token query)", ("current_tenant", "authenticate", "TokenCache")),
    ("ORM load / query", ("find_owned", "get_owned", "owned_job", "read_job", "lean_job")),
    ("session / connection / commit", ("session (", "_connection_for_bind", "commit", "close")),
    ("thread pool hop", ("run_sync", "to_thread", "run_in_threadpool", "worker (anyio")),
    ("HTTP parsing / protocol", ("h11", "httptools", "data_received", "send (uvicorn")),
    ("access log", ("access_log", "logging")),
]


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (uvicorn workers; not the embedded runner's job children,
    which run nothing here)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += parents.get(p, [])
    return out


def backends(db_url: str) -> list[int]:
    """PostgreSQL backend pids connected to the benchmark's database (the server's pool)."""
    import psycopg

    name = db_url.rsplit("/", 1)[1]
    with psycopg.connect(db_url) as c:
        rows = c.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchall()
    return [r[0] for r in rows]


def seed(db_url: str, tenant: str, jobs: int) -> list[str]:
    """Jobs that look like a real running one (their view is ~1.6 kB of JSON)."""
    from app.storage.db import Database
    from tests.helpers import seed_job

    db = Database(db_url)
    ids = [
        seed_job(
            db,
            tenant,
            provider="torch",
            spec={"oracle": {"kind": "torch"}, "seed": i},
            status="running",
            iteration=2,
            iterations=100_000,
            queries=700,
            requests=4,
            metrics=METRICS,
            choices=CHOICES,
            lease="bench",
            heartbeat_at=datetime(2100, 1, 1, tzinfo=UTC),  # never stale
        )[0]
        for i in range(jobs)
    ]
    db.dispose()
    return ids


async def closed_loop(url: str, token: str, ids: list[str], n: int, conns: int) -> float:
    """``n`` requests over ``conns`` keep-alive connections; returns the wall seconds."""
    host, port = url.removeprefix("http://").split(":")
    left = iter(range(n))

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        for i in left:
            writer.write(
                f"GET /v1/jobs/{ids[i % len(ids)]} HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: Bearer {token}\r\n\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            await reader.readexactly(length)
        writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(conns)))
    return time.perf_counter() - t0


def summarize(raw: Path, top: int = 25) -> str:
    """py-spy's raw output (``stack;frames count``) by category and by leaf function."""
    cats: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        leaves[frames[-1]] += n
        for name, markers in CATEGORIES:
            if any(m in f for f in frames for m in markers):
                cats[name] += n
                break
        else:
            cats["other (routing, dependencies, event loop)"] += n
    out = [f"{total} samples"]
    out += [f"  {100 * c / total:5.1f} %  {name}" for name, c in cats.most_common()]
    out.append("leaf functions:")
    out += [f"  {100 * c / total:5.1f} %  {name}" for name, c in leaves.most_common(top)]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--requests", type=int, default=4000)
    p.add_argument("--conns", type=int, default=8)
    p.add_argument("--jobs", type=int, default=4, help="job rows read in turn")
    p.add_argument(
        "--cmd",
        default="{python} -m app.cli.main serve --port {port}",
        help="the server command ({python}, {port} are filled in)",
    )
    p.add_argument("--profile", type=Path, help="py-spy raw samples to this file")
    p.add_argument(
        "--yappi",
        type=Path,
        help="run the server under bench.profile_server (yappi, CPU clock) and write its "
        "report here; --cmd is then ignored but for --yappi-args",
    )
    p.add_argument("--yappi-args", default="", help="e.g. '--loop asyncio --http h11'")
    p.add_argument("--env", action="append", default=[], help="extra NAME=VALUE for the server")
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp())
    env, pg = server_env(tmp, a.backend, **dict(e.split("=", 1) for e in a.env))
    token = create_token(env)
    ids = seed(database_url(tmp, pg), "bench", a.jobs)
    port = free_port()
    count = tmp / "requests"
    if a.yappi:
        a.cmd = (
            f"{{python}} -m bench.profile_server --port {{port}} --out {a.yappi} "
            f"--requests-file {count} {a.yappi_args}"
        )
    cmd = shlex.split(a.cmd.format(python=sys.executable, port=port))
    with open(tmp / "server.log", "w") as log:  # the child keeps its own copy
        server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    spy = None
    try:
        wait_healthy(url, server, tmp / "server.log")
        asyncio.run(closed_loop(url, token, ids, 500, a.conns))  # warm up every connection
        pids = tree(server.pid)
        pg_pids = backends(pg) if pg else []
        if a.profile:
            spy = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "py-spy"),
                    "record",
                    "--pid",
                    str(server.pid),
                    "--subprocesses",
                    "--nonblocking",
                    "--rate",
                    "400",
                    "--format",
                    "raw",
                    "--output",
                    str(a.profile),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)
        if a.yappi:
            a.yappi.unlink(missing_ok=True)
            server.send_signal(signal.SIGUSR1)
            time.sleep(0.5)
        cpu0 = sum(map(proc_cpu, pids))
        pg0 = sum(map(proc_cpu, pg_pids))
        me0 = time.process_time()
        wall = asyncio.run(closed_loop(url, token, ids, a.requests, a.conns))
        me = time.process_time() - me0
        cpu = sum(map(proc_cpu, pids)) - cpu0
        pgcpu = sum(map(proc_cpu, pg_pids)) - pg0
        if a.yappi:
            count.write_text(str(a.requests))
            server.send_signal(signal.SIGUSR2)
            for _ in range(600):
                if a.yappi.exists():
                    break
                time.sleep(0.1)
    finally:
        if spy is not None:
            spy.send_signal(2)  # SIGINT: py-spy writes its file and exits
            spy.wait(30)
        stop([server], pg)
    n = a.requests
    load = os.getloadavg()[0]
    print(
        f"{a.backend}: {n} requests in {wall:.2f} s ({n / wall:.0f}/s closed loop, "
        f"{a.conns} connections), load average {load:.1f}\n"
        f"  server CPU {1e3 * cpu / n:.3f} ms/request ({len(pids)} processes)"
        + (f", PostgreSQL backends {1e3 * pgcpu / n:.3f} ms/request" if pg else "")
        + f", load generator {1e3 * me / n:.3f} ms/request"
    )
    if a.profile and a.profile.exists():
        print(summarize(a.profile))
    if a.yappi and a.yappi.exists():
        print(a.yappi.read_text())
    elif a.yappi:
        print((tmp / "server.log").read_text()[-3000:])


if __name__ == "__main__":
    main()
