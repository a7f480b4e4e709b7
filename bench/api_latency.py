"""`GET /v1/jobs/{id}` latency while jobs (4 by default) train on the local model.

Starts the real server (`reprogram serve`, uvicorn) and, for PostgreSQL, `reprogram worker`
processes; submits 4 long jobs; once they run, an open-loop load generator on loopback sends
GET /v1/jobs/{id} at a fixed rate (requests are fired on schedule whether or not earlier ones
returned, so slow answers cannot hide by slowing the generator) and records each latency.

    python -m bench.api_latency --rate 200 --seconds 30 --backend sqlite
    python -m bench.api_latency --rates 500 1000 1500 --seconds 20 --backend postgres \
        --api-workers 2

It also reports the CPU time the API's processes spent per answered request (the jobs'
processes, at nice 19, are left out).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bench.server import create_token, server_env, start, stop, wait_healthy
from bench.worker_overhead import dataset_npz
from tests.live import free_port, post_dataset


async def load(
    url: str, headers: dict, ids: list[str], rate: float, seconds: float
) -> tuple[list[float], int]:
    """Open-loop load on raw keep-alive HTTP/1.1 connections (asyncio streams: a few µs of
    client CPU per request, where an HTTP library's pool costs milliseconds and falls behind).
    Request i is due at t0 + i/rate; its latency runs from that due time to the end of its
    answer, so a slow server cannot hide behind a slowed generator (no coordinated omission).
    """
    host, port = url.removeprefix("http://").split(":")
    auth = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    n, conns = int(rate * seconds), 32
    queue: asyncio.Queue[tuple[int, float]] = asyncio.Queue()
    latencies: list[float] = []
    errors = 0

    async def connection() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port))
        while True:
            i, due = await queue.get()
            if i < 0:
                break
            path = f"/v1/jobs/{ids[i % len(ids)]}"
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            await reader.readexactly(length)
            if status >= 500:
                errors += 1
            else:
                latencies.append(time.perf_counter() - due)
        writer.close()

    workers = [asyncio.create_task(connection()) for _ in range(conns)]
    t0 = time.perf_counter()
    for i in range(n):
        due = t0 + i / rate
        if (delay := due - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((i, due))
    for _ in workers:
        queue.put_nowait((-1, 0.0))
    await asyncio.gather(*workers)
    return latencies, errors


def run(coro):  # type: ignore[no-untyped-def]
    """uvloop's loop when installed: the generator's own CPU per request halves."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def niceness(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
    except (OSError, IndexError, ValueError):
        return None


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rate", type=float, default=200)
    p.add_argument(
        "--rates", type=float, nargs="+", help="several rates in turn, on the same server"
    )
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--jobs", type=int, default=4, help="jobs training during the load")
    p.add_argument("--api-workers", type=int, default=1, help="reprogram serve --workers N")
    p.add_argument(
        "--serve-args", default="", help="more `reprogram serve` options (e.g. --access-log)"
    )
    a = p.parse_args()
    rates = a.rates or [a.rate]
    results: list[tuple[float, np.ndarray, int, float, float]] = []
    tmp = Path(tempfile.mkdtemp())
    env, pg = server_env(tmp, a.backend, embedded_workers=max(a.jobs, 1))
    token = create_token(env)
    port = free_port()
    workers = ["--workers", str(a.api_workers)] if a.api_workers > 1 else []
    procs = [start(["serve", "--port", str(port), *workers, *a.serve_args.split()], env)]
    if pg:
        procs += [start(["worker", "--concurrency", "2"], env) for _ in range(2)]
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {token}"}
    try:
        wait_healthy(url, procs[0])
        ds = post_dataset(url, headers, dataset_npz(), "mnist.npz")["id"]
        ids = [
            httpx.post(
                f"{url}/v1/jobs",
                headers=headers,
                json={
                    "dataset_id": ds,
                    "oracle": {"kind": "torch"},
                    "seed": i,
                    "optimizer": {"iterations": 100_000},
                },
            ).json()["id"]
            for i in range(max(a.jobs, 1))  # with --jobs 0: one, cancelled before it runs
        ]
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            jobs = [httpx.get(f"{url}/v1/jobs/{i}", headers=headers).json() for i in ids]
            if a.jobs == 0 or all(
                j["status"] == "running" and j["progress"]["iteration"] > 0 for j in jobs
            ):
                break
            time.sleep(1)
        if a.jobs == 0:  # a job row to read, cancelled before it runs
            for i in ids:
                httpx.post(f"{url}/v1/jobs/{i}/cancel", headers=headers)
        from bench.api_cpu import proc_cpu, tree

        # The API's processes: `serve` and its children but the jobs' (those run at nice 19).
        api = [pid for pid in tree(procs[0].pid) if niceness(pid) == 0]
        for rate in rates:
            time.sleep(3)  # the previous rate's backlog drains
            load_avg = os.getloadavg()[0]
            cpu0 = sum(map(proc_cpu, api))
            lat, errors = run(load(url, headers, ids, rate, a.seconds))
            cpu = sum(map(proc_cpu, api)) - cpu0
            results.append((rate, np.array(lat) * 1000, errors, cpu, load_avg))
        its = [
            httpx.get(f"{url}/v1/jobs/{i}", headers=headers).json()["progress"]["iteration"]
            for i in ids
        ]
        for i in ids:
            httpx.post(f"{url}/v1/jobs/{i}/cancel", headers=headers)
    finally:
        stop(procs, pg)
    print(
        f"\n{a.backend}: {a.seconds:.0f} s per rate while {a.jobs} jobs trained (iterations "
        f"reached: {its}); {a.api_workers} API process(es)\n"
    )
    print(
        "| backend | API processes | rate | p50 | p90 | p99 | max | errors | "
        "API CPU/request | load average before |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for rate, ms, errors, cpu, load_avg in results:
        print(
            f"| {a.backend} | {a.api_workers} | {rate:.0f}/s | {np.percentile(ms, 50):.1f} ms | "
            f"{np.percentile(ms, 90):.1f} ms | {np.percentile(ms, 99):.1f} ms | "
            f"{ms.max():.1f} ms | {errors} | {1e3 * cpu / max(len(ms), 1):.2f} ms | "
            f"{load_avg:.1f} |"
        )


if __name__ == "__main__":
    main()
