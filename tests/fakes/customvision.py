"""A fake Microsoft Custom Vision prediction server on 127.0.0.1, for the real SDK.

It serves ``POST /customvision/v3.{0,1}/prediction/{projectId}/classify/iterations/
{publishedName}/image/nostore`` (multipart/form-data as the 3.1.1 SDK sends it, or a raw
``application/octet-stream`` body) and answers the real JSON, every tag, sorted by
probability, with the bundled ImageNet model (``tests.fakes.model``) as its opinion. It
checks ``Prediction-Key``, rate-limits each key (token bucket, images/s), optionally holds
it to a call-volume quota (``--quota``: the 403 "Quota Exceeded" of an F0 resource's monthly
predictions), refuses images over 4 MB or undecodable ones, and injects faults on demand.
Counts per key and faults are reachable in-process (``counts()``, ``set_faults()``) and
over admin paths on the same port, for tests in other processes:

    GET  /_fake/counts[?key=K]   GET /_fake/faults   POST /_fake/faults {field: value, ...}
    POST /_fake/rate_limit {"rate_limit": R, "burst": B}   POST /_fake/reset

Run alone: ``python -m tests.fakes.customvision --port 8090 --key demo-key --rate-limit 10``
(``--model cheap`` swaps the network for a microsecond-cheap opinion, for benchmarks).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import random
import re
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from PIL import Image, UnidentifiedImageError

from tests.fakes.admin import AdminApi, FakeServer, read_body, send_json
from tests.fakes.model import CheapModel, FakeModel, ModelKind, add_model_option, make_model

MAX_IMAGE_BYTES = 4 * 1024 * 1024
FORMATS = {"PNG", "JPEG", "BMP", "GIF"}
PUBLISHED = "production"
MODERATION_PROJECT = "5c0f7c3e-0d6a-4f57-9a43-000000000005"
NSFW_PROJECT = "5c0f7c3e-0d6a-4f57-9a43-000000000002"
IMAGENET_PROJECT = "5c0f7c3e-0d6a-4f57-9a43-000000001000"
#: project id -> published name -> FakeModel view (None: all 1,000 ImageNet classes)
DEFAULT_PROJECTS: dict[str, dict[str, str | None]] = {
    MODERATION_PROJECT: {PUBLISHED: "moderation"},
    NSFW_PROJECT: {PUBLISHED: "nsfw"},
    IMAGENET_PROJECT: {PUBLISHED: None},
}
_ROUTE = re.compile(
    r"^/customvision/v3\.[01]/prediction/(?P<project>[^/]+)/classify/iterations/"
    r"(?P<published>[^/]+)/image/nostore/?$"
)
_JITTER_S = 0.05  # arrival-time jitter forgiven by the rate limit


@dataclass
class Counts:
    requests: int = 0  # prediction requests received
    images: int = 0  # images received (a non-empty image part or body)
    answered: int = 0  # 200s: what the provider bills
    throttled: int = 0  # 429s
    failed: int = 0  # every other status, hangs included


@dataclass(frozen=True)
class Faults:
    error_rate: float = 0.0  # probability of a transient error
    error_statuses: tuple[int, ...] = (500, 503)
    latency_s: float = 0.0  # added to every prediction
    hang_rate: float = 0.0  # probability of hanging hang_s, then answering 504
    hang_s: float = 30.0
    drop_tags: tuple[str, ...] = ()  # tag names left out of answers (a broken provider)

    def __post_init__(self) -> None:
        if not (0 <= self.error_rate <= 1 and 0 <= self.hang_rate <= 1):
            raise ValueError("error_rate and hang_rate are probabilities in [0, 1]")
        if not self.error_statuses or min(self.error_statuses) < 500:
            raise ValueError("error_statuses must name at least one 5xx status")

    def updated(self, changes: Mapping[str, object]) -> Faults:
        """A copy with ``changes`` applied; unknown names raise ValueError."""
        known = {f.name for f in fields(self)}
        if unknown := set(changes) - known:
            raise ValueError(f"unknown fault fields {sorted(unknown)}; known: {sorted(known)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()}
        return replace(self, **values)  # type: ignore[arg-type]


class _TokenBucket:
    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate, self.capacity, self.tokens, self.stamp = rate, capacity, capacity, now

    def take(self, now: float) -> float:
        """0 if one image may pass now, else the seconds until it may."""
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


@dataclass
class Reply:
    """One HTTP answer: status, JSON body, extra headers, reason phrase."""

    status: int
    body: dict
    headers: dict[str, str] = field(default_factory=dict)
    reason: str | None = None


def _gateway_error(status: int, message: str, **headers: str) -> Reply:
    # Azure's API gateway (bad key, throttling) answers {"error": {...}}, not {code, message}.
    reason = "Access Denied" if status == 401 else None
    return Reply(status, {"error": {"code": str(status), "message": message}}, headers, reason)


def _service_error(status: int, code: str, message: str) -> Reply:
    return Reply(status, {"code": code, "message": message})


def _multipart_files(body: bytes, content_type: str) -> list[bytes]:
    """Contents of the parts of a multipart/form-data body (requests' layout)."""
    header = Message()
    header["content-type"] = content_type
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str):
        return []
    out = []
    for part in body.split(b"--" + boundary.encode())[1:]:
        if part.startswith(b"--"):  # the closing delimiter
            break
        _, _, content = part.partition(b"\r\n\r\n")
        out.append(content.removesuffix(b"\r\n"))
    return out


def _image_bytes(body: bytes, content_type: str) -> bytes:
    if content_type.lower().startswith("multipart/form-data"):
        return next((p for p in _multipart_files(body, content_type) if p), b"")
    return body


class FakeCustomVision(FakeServer):
    """The fake server; ``start()``/``stop()`` or use it as a context manager."""

    def __init__(
        self,
        port: int = 0,
        *,
        keys: Iterable[str] = ("demo-key",),
        rate_limit: float | None = 10.0,
        burst: float | None = None,
        projects: Mapping[str, Mapping[str, str | None]] | None = None,
        faults: Faults | None = None,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
        model: ModelKind = "network",
        quota: int | None = None,
        quota_period_seconds: float = 30 * 86400.0,
    ) -> None:
        """``rate_limit``: images/s per key (None: unlimited); ``burst``: bucket size,
        default one second's worth, so clients pacing at exactly R by token bucket or by
        sliding window never see a 429. ``model``: the opinion, the bundled network or, for
        benchmarks that measure the client, the microsecond-cheap ``CheapModel``.
        ``quota``: predictions per key in each period of ``quota_period_seconds`` (the F0
        tier's 10,000 a month), the period opened by the key's first prediction; the rest
        get the call-volume 403, saying when the period ends."""
        self.keys = frozenset(keys)
        self.projects = {p: dict(v) for p, v in (projects or DEFAULT_PROJECTS).items()}
        self.faults = faults or Faults()
        self._port, self._clock = port, clock
        self._rng = random.Random(seed)  # the one source of fault randomness
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.model: ModelKind = model
        self._models: dict[str | None, FakeModel | CheapModel] = {}
        self._admin = _admin_api(self)
        self._counts: dict[str, Counts] = {}
        self.quota, self.quota_period_seconds = quota, quota_period_seconds
        self._periods: dict[str, tuple[float, int]] = {}  # key → (opened, predictions)
        self._buckets: dict[str, _TokenBucket] = {}
        self._conns: set[socket.socket] = set()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.set_rate_limit(rate_limit, burst)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> FakeCustomVision:
        """Listen on 127.0.0.1 and serve from a background thread."""
        self._stopping.clear()
        httpd = self._httpd = ThreadingHTTPServer(("127.0.0.1", self._port), _Handler)
        httpd.fake = self  # type: ignore[attr-defined]
        # a short poll interval lets stop() return in tens of milliseconds, not half a second
        serve = {"poll_interval": 0.05}
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs=serve, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, end hangs and drop kept-alive connections."""
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):  # already closed by the client
                    conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "start() the fake first"
        return self._httpd.server_address[1]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def warm_up(self) -> None:
        """Load every configured model once, so the first request is not slow."""
        image = np.zeros((64, 64, 3), dtype=np.uint8)
        for view in {v for names in self.projects.values() for v in names.values()}:
            self._model(view).probs([image])

    # -- control --------------------------------------------------------------------------

    def counts(self, key: str | None = None) -> dict[str, int]:
        """Counts for one key, or summed over every key (including refused ones)."""
        with self._lock:
            chosen = [self._counts.get(key, Counts())] if key is not None else self._counts.values()
            return {f.name: sum(getattr(c, f.name) for c in chosen) for f in fields(Counts)}

    def set_faults(self, **changes: object) -> Faults:
        """Change some fault fields (see ``Faults``); returns the faults now in force."""
        with self._lock:
            self.faults = self.faults.updated(changes)
            return self.faults

    def set_rate_limit(self, rate_limit: float | None, burst: float | None = None) -> None:
        """Images/s per key (None or 0: unlimited); refills every bucket."""
        with self._lock:
            self.rate_limit = rate_limit or None
            self.burst = burst if burst is not None else max(1.0, rate_limit or 0.0)
            self._buckets.clear()

    def reset(self) -> None:
        """Zero the counts, refill the buckets and the quotas, clear the faults."""
        with self._lock:
            self._counts.clear()
            self._buckets.clear()
            self._periods.clear()
            self.faults = Faults()

    # -- the prediction endpoint ----------------------------------------------------------

    def predict(self, key: str, project: str, published: str, image: bytes) -> Reply:
        """Answer one prediction request exactly as the service would, and count it."""
        with self._lock:
            counts = self._counts.setdefault(key, Counts())
            counts.requests += 1
            counts.images += bool(image)
        reply = self._answer(key, project, published, image)
        with self._lock:
            if reply.status == 200:
                counts.answered += 1
            elif reply.status == 429:
                counts.throttled += 1
            else:
                counts.failed += 1
        return reply

    def _answer(self, key: str, project: str, published: str, image: bytes) -> Reply:
        if key not in self.keys:
            return _gateway_error(
                401,
                "Access denied due to invalid subscription key or wrong API endpoint. Make "
                "sure to provide a valid key for an active subscription and use a correct "
                "regional API endpoint for your resource.",
            )
        if wait := self._throttle_wait(key):
            seconds = max(1, math.ceil(wait))
            return _gateway_error(
                429,
                "Requests to the ClassifyImageNoStore Operation under Custom Vision Prediction "
                f"have exceeded the rate limit of your pricing tier. Retry after {seconds} s.",
                **{"Retry-After": str(seconds)},
            )
        if (renews_in := self._over_quota(key)) is not None:
            days, rest = divmod(math.ceil(renews_in), 86400)
            clock = f"{days}.{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
            return Reply(
                403,
                {
                    "error": {
                        "code": "403",
                        "message": "Out of call volume quota for CustomVision F0 pricing tier. "
                        f"Quota will be replenished in {clock}.",
                    }
                },
                reason="Quota Exceeded",
            )
        with self._lock:
            faults, hang, error = self.faults, self._rng.random(), self._rng.random()
        if faults.latency_s:
            self._stopping.wait(faults.latency_s)
        if hang < faults.hang_rate:
            self._stopping.wait(faults.hang_s)
            return _service_error(504, "GatewayTimeout", "The backend did not answer in time")
        if error < faults.error_rate:
            with self._lock:
                status = self._rng.choice(faults.error_statuses)
            return _service_error(status, "ServiceUnavailable", "Injected transient failure")
        if project not in self.projects:
            return _service_error(404, "NotFoundProject", f"Project {project} not found")
        if published not in self.projects[project]:
            return _service_error(404, "NotFoundIteration", f"Iteration {published} not found")
        if len(image) > MAX_IMAGE_BYTES:
            return _service_error(400, "BadRequestImageSizeBytes", "Image exceeds 4 MB")
        try:
            with Image.open(io.BytesIO(image)) as img:
                if img.format not in FORMATS:
                    raise UnidentifiedImageError(img.format)
                pixels = np.asarray(img.convert("RGB"))
        except (UnidentifiedImageError, OSError, ValueError):
            return _service_error(400, "BadRequestImageFormat", "Bad Request Image Format")
        view = self.projects[project][published]
        return Reply(200, self._prediction(project, published, view, pixels, faults.drop_tags))

    def _over_quota(self, key: str) -> float | None:
        """None when one more prediction of ``key`` fits its period's quota (and count it),
        else the seconds until the period ends."""
        if self.quota is None:
            return None
        with self._lock:
            now = self._clock()
            opened, used = self._periods.get(key, (now, 0))
            if now - opened >= self.quota_period_seconds:
                opened, used = now, 0
            if used >= self.quota:
                self._periods[key] = (opened, used)
                return opened + self.quota_period_seconds - now
            self._periods[key] = (opened, used + 1)
            return None

    def _throttle_wait(self, key: str) -> float:
        with self._lock:
            if self.rate_limit is None:
                return 0.0
            now = self._clock()
            bucket = self._buckets.get(key)
            if bucket is None:
                capacity = self.burst + self.rate_limit * _JITTER_S
                bucket = self._buckets[key] = _TokenBucket(self.rate_limit, capacity, now)
            return bucket.take(now)

    def _model(self, view: str | None) -> FakeModel | CheapModel:
        with self._lock:
            if view not in self._models:
                self._models[view] = make_model(view, self.model)
            return self._models[view]

    def _prediction(
        self, project: str, published: str, view: str | None, pixels: np.ndarray, drop: tuple
    ) -> dict:
        model = self._model(view)
        probs = model.probs([pixels])[0]
        tags = [
            {"probability": float(p), "tagId": _uuid(project, name), "tagName": name}
            for name, p in zip(model.labels, probs, strict=True)
            if name not in drop
        ]
        return {
            "id": str(uuid.uuid4()),
            "project": project,
            "iteration": _uuid(project, "iteration", published),
            "created": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "predictions": sorted(tags, key=lambda t: -t["probability"]),
        }


def _uuid(*parts: str) -> str:
    """Stable ids, like the service's: the same tag has the same id in every answer."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "/".join(parts)))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Azure serves it
    disable_nagle_algorithm = True  # else ~40 ms Nagle + delayed-ACK stall per answer
    timeout = 60  # idle kept-alive connections end eventually

    @property
    def fake(self) -> FakeCustomVision:
        return self.server.fake  # type: ignore[attr-defined]

    def setup(self) -> None:
        super().setup()
        with self.fake._lock:
            self.fake._conns.add(self.connection)

    def finish(self) -> None:
        with self.fake._lock:
            self.fake._conns.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request would drown test output

    def do_GET(self) -> None:
        reply = self.fake._admin.handle("GET", self.path)
        self._send(Reply(*reply) if reply else _gateway_error(404, "Resource not found"))

    def do_POST(self) -> None:
        body = self._read_body()
        path = urlsplit(self.path).path
        if route := _ROUTE.match(path):
            image = _image_bytes(body, self.headers.get("Content-Type", ""))
            key = self.headers.get("Prediction-Key", "")  # header lookup ignores case
            self._send(self.fake.predict(key, route["project"], route["published"], image))
        elif reply := self.fake._admin.handle("POST", self.path, body):
            self._send(Reply(*reply))
        elif path.startswith("/_fake/"):
            self._send(Reply(404, {"error": f"no admin path {path}"}))
        else:
            self._send(_gateway_error(404, "Resource not found"))

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks)
        return read_body(self)

    def _send(self, reply: Reply) -> None:
        headers = {"apim-request-id": str(uuid.uuid4()), **reply.headers}
        send_json(self, reply.status, reply.body, headers=headers, reason=reply.reason)


def _admin_api(fake: FakeCustomVision) -> AdminApi:
    """GET /_fake/counts[?key=K], GET /_fake/faults, POST /_fake/faults {field: value},
    POST /_fake/rate_limit {rate_limit, burst}, POST /_fake/reset."""

    def rate_limit(args: dict[str, Any]) -> object:
        fake.set_rate_limit(args.get("rate_limit"), args.get("burst"))
        return {"rate_limit": fake.rate_limit, "burst": fake.burst}

    def reset(args: dict[str, Any]) -> object:
        fake.reset()
        return {}

    return AdminApi(
        get={
            "/_fake/counts": lambda query: fake.counts(query.get("key")),
            "/_fake/faults": lambda _: asdict(fake.faults),
        },
        post={
            "/_fake/faults": lambda args: asdict(fake.set_faults(**args)),
            "/_fake/rate_limit": rate_limit,
            "/_fake/reset": reset,
        },
    )


def main(argv: list[str] | None = None) -> None:
    """Serve the fake until Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--key", action="append", help="accepted Prediction-Key (repeatable)")
    parser.add_argument("--rate-limit", type=float, default=10.0, help="images/s per key")
    parser.add_argument("--burst", type=float, default=None)
    parser.add_argument("--quota", type=int, default=None, help="predictions per key a period")
    parser.add_argument("--quota-period-seconds", type=float, default=30 * 86400.0)
    add_model_option(parser)
    args = parser.parse_args(argv)
    fake = FakeCustomVision(
        args.port,
        keys=args.key or ["demo-key"],
        rate_limit=args.rate_limit,
        burst=args.burst,
        model=args.model,
        quota=args.quota,
        quota_period_seconds=args.quota_period_seconds,
    )
    fake.warm_up()
    with fake:
        print(f"fake Custom Vision at {fake.endpoint}", flush=True)
        for project, names in fake.projects.items():
            for published, view in names.items():
                print(f"  project {project}  published {published}  view {view}", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())  # docker stop, kill
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()


if __name__ == "__main__":
    main()
