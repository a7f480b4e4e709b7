"""The API under yappi's CPU clock, every thread (event loop and thread pool), for
``bench.api_cpu --yappi``: SIGUSR1 starts a clean profile, SIGUSR2 stops it and writes the
inclusive CPU time of the functions on a status read's path, per request.

    python -m bench.profile_server --port 8000 --out /tmp/prof.txt [--loop asyncio --http h11]
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

import uvicorn
import yappi

from app.api.app import create_app

# (label, yappi function name, module path fragment): inclusive CPU time of each, per request.
WATCH = [
    ("uvicorn: HTTP parsing (data_received)", "data_received", "uvicorn/protocols"),
    ("uvicorn: writing the answer (send)", "send", "uvicorn/protocols"),
    ("uvicorn: access log line", "info", "logging/__init__"),
    ("the ASGI app (everything below)", "__call__", "starlette/applications"),
    ("  middleware stack / routing", "__call__", "starlette/routing"),
    ("  FastAPI request handler", "app", "fastapi/routing"),
    ("    solve_dependencies", "solve_dependencies", "fastapi/dependencies"),
    ("    thread pool hop (run_in_threadpool)", "run_in_threadpool", "starlette/concurrency"),
    ("    anyio worker thread (run_sync)", "run_sync", "anyio/to_thread"),
    ("    auth: current_tenant", "current_tenant", "app/api/deps"),
    ("      TokenCache.tenant", "tenant", "app/services/auth"),
    ("    session dependency", "session", "app/api/deps"),
    ("      Session.commit", "commit", "sqlalchemy/orm/session"),
    ("      Session.close", "close", "sqlalchemy/orm/session"),
    ("      pool checkout (+ pre-ping)", "_checkout", "sqlalchemy/pool/base"),
    ("      pre-ping", "do_ping", "sqlalchemy/engine/default"),
    ("    owned_job / find_owned", "find_owned", "app/api/deps"),
    ("      Session.get (ORM load)", "get", "sqlalchemy/orm/session"),
    ("      cursor execute (driver)", "execute", "psycopg/cursor"),
    ("    view()", "view", "app/services/jobs"),
    ("    serialize_response", "serialize_response", "fastapi/routing"),
    ("      jsonable_encoder", "jsonable_encoder", "fastapi/encoders"),
    ("    JSONResponse.render", "render", "starlette/responses"),
    ("  lean read (app/api/fast.py)", "read_job", "app/api/fast"),
]


def report(out: Path, requests: int) -> None:
    stats = yappi.get_func_stats()
    total = sum(t.ttot for t in yappi.get_thread_stats()) if requests else 0.0
    lines = [f"CPU (yappi, all threads): {1e3 * total / max(requests, 1):.3f} ms/request"]
    for label, name, module in WATCH:
        found = [s for s in stats if s.name == name and module in s.module]
        if not found:
            continue
        ttot = sum(s.ttot for s in found)
        calls = sum(s.ncall for s in found)
        lines.append(
            f"{label:45s} {1e3 * ttot / max(requests, 1):7.3f} ms/request  "
            f"({calls / max(requests, 1):.1f} calls/request)"
        )
    lines.append("top functions by own time (ms/request):")
    for s in sorted(stats, key=lambda s: -s.tsub)[:40]:
        module = "/".join(Path(s.module).parts[-2:])
        lines.append(f"  {1e3 * s.tsub / max(requests, 1):7.3f}  {s.name} ({module}:{s.lineno})")
    out.write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--loop", default="auto")
    p.add_argument("--http", default="auto")
    p.add_argument("--requests-file", type=Path, help="holds the request count at SIGUSR2")
    a = p.parse_args()
    yappi.set_clock_type("cpu")

    def start(*_: object) -> None:
        yappi.clear_stats()
        yappi.start(builtins=False, profile_threads=True)

    def stop(*_: object) -> None:
        yappi.stop()
        n = int(a.requests_file.read_text()) if a.requests_file else 1
        report(a.out, n)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    uvicorn.run(create_app(), port=a.port, loop=a.loop, http=a.http, log_level="info")


if __name__ == "__main__":
    main()
