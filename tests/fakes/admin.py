"""The small JSON admin API of the fakes, so tests in other processes (and the benchmark)
can read a fake's counts and change its faults over HTTP; and ``FakeServer``, the
start/stop lifecycle both fakes share.

A fake describes its paths as an ``AdminApi``; the Custom Vision fake answers them on its own
HTTP port (under ``/_fake/``), the gRPC Clarifai fake on a separate port through
``serve_admin``. Both reply with ``send_json``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit


class FakeServer:
    """A fake that serves between ``start()`` and ``stop()``, or as a context manager:
    ``with Fake(...) as fake: ... fake.endpoint``."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


#: GET handlers take the query string's parameters, POST handlers the JSON object sent;
#: both return what is sent back as JSON.
Getter = Callable[[Mapping[str, str]], object]
Setter = Callable[[dict[str, Any]], object]


@dataclass(frozen=True)
class AdminApi:
    """Admin paths and what each one does."""

    get: Mapping[str, Getter] = field(default_factory=dict)
    post: Mapping[str, Setter] = field(default_factory=dict)

    def handle(self, method: str, target: str, body: bytes = b"") -> tuple[int, object] | None:
        """(status, JSON body) for ``method target``, or None when it is no admin path (the
        fake then answers in its own dialect). Bad JSON or fields give 400."""
        url = urlsplit(target)
        routes: Mapping[str, Callable[[Any], object]] = self.get if method == "GET" else self.post
        if url.path not in routes:
            return None
        try:
            if method == "GET":
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                return 200, routes[url.path](query)
            args = json.loads(body or b"{}")
            if not isinstance(args, dict):
                raise ValueError("the body must be a JSON object")
            return 200, routes[url.path](args)
        except (TypeError, ValueError, AttributeError) as err:  # bad JSON or unknown fields
            return 400, {"error": str(err)}


def send_json(
    handler: BaseHTTPRequestHandler,
    status: int,
    body: object,
    *,
    headers: Mapping[str, str] | None = None,
    reason: str | None = None,
) -> None:
    """Answer ``body`` as JSON; a client that hung up (timeouts) is not an error."""
    data = json.dumps(body).encode()
    try:
        handler.send_response(status, reason)
        handler.send_header("Content-Type", "application/json; charset=utf-8")
        handler.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)
    except (BrokenPipeError, ConnectionResetError):
        handler.close_connection = True


def read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """The request body as its Content-Length announces it."""
    return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))


def serve_admin(api: AdminApi, host: str, port: int, name: str) -> ThreadingHTTPServer:
    """Serve ``api`` alone on ``host:port`` (0: a free port) from a daemon thread; stop it
    with ``shutdown()`` and ``server_close()``."""

    class Handler(BaseHTTPRequestHandler):
        disable_nagle_algorithm = True  # or every answer waits ~40 ms

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep test output and the console quiet

        def do_GET(self) -> None:
            self._answer(api.handle("GET", self.path))

        def do_POST(self) -> None:
            self._answer(api.handle("POST", self.path, read_body(self)))

        def _answer(self, reply: tuple[int, object] | None) -> None:
            status, body = reply or (404, {"error": f"no such path {urlsplit(self.path).path}"})
            send_json(self, status, body)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    return server
