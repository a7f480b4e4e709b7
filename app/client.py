"""A small typed client for the ``/v1`` API, for scripts and terminals.

    from app.client import Client

    with Client("http://127.0.0.1:8000", token) as rp:      # or REPROGRAM_SERVER / _TOKEN
        ds = rp.upload("digits.zip")
        job = rp.submit({"oracle": {"kind": "torch"}, "budget": {"max_queries": 5000}}, ds.id)
        job = rp.wait(job.id, on_update=lambda j: print(j.status, j.queries))
        rp.download(job.id, "program.npz")
        print(rp.predict(job.id, ["seven.png"]))

Every refused request raises :class:`ApiError` with the API's own message; a 401 raises
:class:`AuthError`. It needs httpx only (no torch, no database).
"""

from __future__ import annotations

import io
import json
import os
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import httpx

DEFAULT_SERVER = "http://127.0.0.1:8000"
FINAL = ("succeeded", "failed", "cancelled", "budget_exhausted")

FileLike = str | os.PathLike[str] | bytes | BinaryIO


class ApiError(Exception):
    """The server refused a request; ``str(err)`` is its message (``field: reason`` for 422)."""

    def __init__(self, status: int, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail


class AuthError(ApiError):
    """401: the token is missing, wrong, expired or revoked."""


def _detail(response: httpx.Response) -> Any:
    try:
        return response.json().get("detail")
    except (ValueError, AttributeError):
        return None


def error_message(response: httpx.Response) -> str:
    """The API's error text: ``detail`` as a string, or each refused field as
    ``field: message``; the status line when the body is not the API's JSON."""
    detail = _detail(response)
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list) and detail:
        parts = []
        for item in detail:
            if isinstance(item, dict) and "message" in item:
                parts.append(f"{item.get('field', 'body')}: {item['message']}")
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return f"HTTP {response.status_code} {response.reason_phrase}".strip()


@dataclass(frozen=True)
class Dataset:
    id: str
    n_samples: int
    classes: list[str]
    image_shape: list[int] | None
    filename: str = ""
    has_split: bool = False

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Dataset:
        return cls(
            id=d["id"],
            n_samples=d["n_samples"],
            classes=list(d["classes"]),
            image_shape=d.get("image_shape"),
            filename=d.get("filename", ""),
            has_split=bool(d.get("has_split", False)),
        )


@dataclass(frozen=True)
class Job:
    """``GET /v1/jobs/{id}``; ``data`` keeps the whole answer."""

    id: str
    status: str
    iteration: int = 0
    iterations: int | None = None
    queries: int = 0
    requests: int = 0
    cost_usd: float = 0.0
    max_queries: int | None = None
    max_cost_usd: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    waiting: dict[str, Any] | None = None  # {until, reason} while it waits for a quota
    choices: list[str] = field(default_factory=list)
    result: dict[str, Any] | None = None
    data: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def final(self) -> bool:
        return self.status in FINAL

    @property
    def test_accuracy(self) -> float | None:
        return (self.result or {}).get("test_accuracy")

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Job:
        progress = d.get("progress") or {}
        spend = d.get("spend") or {}
        return cls(
            id=d["id"],
            status=d["status"],
            iteration=progress.get("iteration") or 0,
            iterations=progress.get("iterations"),
            queries=spend.get("queries") or 0,
            requests=spend.get("requests") or 0,
            cost_usd=spend.get("cost_usd") or 0.0,
            max_queries=spend.get("max_queries"),
            max_cost_usd=spend.get("max_cost_usd"),
            metrics=dict(d.get("metrics") or {}),
            error=d.get("error"),
            waiting=d.get("waiting"),
            choices=list(d.get("choices") or []),
            result=d.get("result"),
            data=dict(d),
        )


@dataclass(frozen=True)
class Page:
    """One page of a list, and how many there are in all (``X-Total-Count``)."""

    items: list[Any]
    total: int
    offset: int


def _file(data: FileLike, filename: str | None) -> tuple[str, bytes]:
    """(name, bytes) of a path, bytes or binary file; a folder is zipped as it is laid out."""
    if isinstance(data, bytes):
        return filename or "upload", data
    if isinstance(data, str | os.PathLike):
        path = Path(data)
        if path.is_dir():
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
                for f in sorted(p for p in path.rglob("*") if p.is_file()):
                    zf.write(f, f.relative_to(path).as_posix())
            return filename or f"{path.name}.zip", buf.getvalue()
        return filename or path.name, path.read_bytes()
    return filename or Path(getattr(data, "name", "upload")).name, data.read()


class Client:
    """The ``/v1`` API over HTTP. ``server`` and ``token`` default to ``REPROGRAM_SERVER``
    (else http://127.0.0.1:8000) and ``REPROGRAM_TOKEN``."""

    def __init__(
        self,
        server: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.server = (server or os.environ.get("REPROGRAM_SERVER") or DEFAULT_SERVER).rstrip("/")
        token = token or os.environ.get("REPROGRAM_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.server, headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        r = self._http.request(method, path, **kw)
        if r.is_error:
            kind = AuthError if r.status_code == 401 else ApiError
            raise kind(r.status_code, error_message(r), _detail(r))
        return r

    # Data sets

    def upload(self, data: FileLike, filename: str | None = None) -> Dataset:
        """Upload a data set: a ``.zip`` or ``.npz`` (path, bytes or file), or a folder
        (zipped on the way)."""
        name, content = _file(data, filename)
        r = self._request("POST", "/v1/datasets", files={"file": (name, content)})
        return Dataset.from_json(r.json())

    def datasets(self, limit: int = 50, offset: int = 0) -> Page:
        return self._page("/v1/datasets", Dataset.from_json, limit, offset)

    # Jobs

    def submit(self, spec: Mapping[str, Any], dataset_id: str | None = None) -> Job:
        """Queue a job: the spec as ``reprogram train`` takes it; ``dataset_id`` fills the
        spec's when given."""
        body = dict(spec)
        if dataset_id is not None:
            body["dataset_id"] = dataset_id
        r = self._request("POST", "/v1/jobs", json=body)
        return self.job(r.json()["id"])

    def job(self, job_id: str) -> Job:
        return Job.from_json(self._request("GET", f"/v1/jobs/{job_id}").json())

    def jobs(self, limit: int = 50, offset: int = 0) -> Page:
        """One page of the tenant's jobs, newest first."""
        return self._page("/v1/jobs", Job.from_json, limit, offset)

    def cancel(self, job_id: str) -> Job:
        self._request("POST", f"/v1/jobs/{job_id}/cancel")
        return self.job(job_id)

    def metrics(self, job_id: str) -> list[dict[str, Any]]:
        """The job's metrics rows (one per iteration / validation)."""
        return self._request("GET", f"/v1/jobs/{job_id}/metrics").json()

    def wait(
        self,
        job_id: str,
        on_update: Callable[[Job], None] | None = None,
        *,
        interval: float = 1.0,
        timeout: float | None = None,
    ) -> Job:
        """Follow the job until it ends, calling ``on_update`` with each new state; return the
        final one. ``TimeoutError`` after ``timeout`` seconds.

        The server pushes each change over the job's event stream (``events``), so waiting
        costs no requests while the job works; if the stream breaks, the job is read once and
        the stream opened again after ``interval`` s, and a server without the stream is
        polled every ``interval`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last: dict[str, Any] | None = None
        streams = True

        def seen(job: Job) -> bool:
            nonlocal last
            if on_update is not None and job.data != last:
                on_update(job)
            last = job.data
            return job.final

        def left() -> float | None:
            if deadline is None:
                return None
            if (rest := deadline - time.monotonic()) <= 0:
                raise TimeoutError(f"job {job_id} still unfinished after {timeout} s")
            return rest

        while True:
            if streams:
                try:
                    for job in self.events(job_id, timeout=left()):
                        if seen(job):
                            return job
                except ApiError as err:
                    if err.status not in (404, 405, 501):
                        raise
                    streams = False  # no stream here (or no such job: the read says so)
                except (httpx.TransportError, httpx.RemoteProtocolError, ValueError):
                    pass  # the stream broke: read the job once, then open it again
            job = self.job(job_id)
            if seen(job):
                return job
            rest = left()
            time.sleep(interval if rest is None else min(interval, rest))

    def events(self, job_id: str, *, timeout: float | None = None) -> Iterator[Job]:
        """The job's states as the server pushes them (``GET /v1/jobs/{id}/events``,
        server-sent events): the current one at once, then each change; it ends after a
        final status. ``TimeoutError`` once ``timeout`` seconds have passed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        # The server sends a comment line every 15 s: a longer silence is a dead stream.
        read = httpx.Timeout(self._http.timeout.connect, read=45.0)
        with self._http.stream(
            "GET",
            f"/v1/jobs/{job_id}/events",
            headers={"Accept": "text/event-stream"},
            timeout=read,
        ) as r:
            if r.is_error:
                r.read()
                kind = AuthError if r.status_code == 401 else ApiError
                raise kind(r.status_code, error_message(r), _detail(r))
            name, data = "message", []
            for line in r.iter_lines():
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"job {job_id} still unfinished after {timeout} s")
                if line.startswith(":"):
                    continue  # a keep-alive comment
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))
                elif not line and data:
                    if name == "job":
                        yield Job.from_json(json.loads("\n".join(data)))
                    name, data = "message", []

    def download(
        self, job_id: str, dest: str | os.PathLike[str] | None = None, *, format: str = "npz"
    ) -> Path:
        """Write the job's program (``npz``, docs/contract.md's format, or ``png``) to ``dest``
        (default ``program.npz`` / ``program.png``); returns the path."""
        r = self._request("GET", f"/v1/jobs/{job_id}/program", params={"format": format})
        path = Path(dest) if dest is not None else Path(f"program.{format}")
        path.write_bytes(r.content)
        return path

    def predict(self, job_id: str, images: Iterable[FileLike]) -> list[dict[str, Any]]:
        """Classify images with the job's program (each one query): ``[{file, class}]``."""
        files = []
        for i, image in enumerate(images):
            name, content = _file(image, None if not isinstance(image, bytes) else f"{i}.png")
            files.append(("files", (name, content)))
        return self._request("POST", f"/v1/jobs/{job_id}/predict", files=files).json()[
            "predictions"
        ]

    # Credentials and spend

    def add_credential(self, provider: str, secret: str, name: str | None = None) -> str:
        """Store a provider key (encrypted; never returned); returns its id."""
        body = {"provider": provider, "secret": secret}
        if name is not None:
            body["name"] = name
        return self._request("POST", "/v1/credentials", json=body).json()["id"]

    def credentials(self, limit: int = 50, offset: int = 0) -> Page:
        return self._page("/v1/credentials", dict, limit, offset)

    def delete_credential(self, credential_id: str) -> None:
        self._request("DELETE", f"/v1/credentials/{credential_id}")

    def spend(self) -> dict[str, Any]:
        return self._request("GET", "/v1/spend").json()

    def _page(self, path: str, make: Callable[[Any], Any], limit: int, offset: int) -> Page:
        r = self._request("GET", path, params={"limit": limit, "offset": offset})
        items = r.json()
        total = int(r.headers.get("X-Total-Count", len(items)))
        return Page([make(x) for x in items], total, offset)


def load_spec(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A job spec file as a dict (the server validates it)."""
    value = json.loads(Path(path).read_text())
    if not isinstance(value, dict):
        raise ValueError("a job spec is a JSON object")
    return value
