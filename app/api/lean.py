"""``GET /v1/jobs/{id}`` on a lean path: the status read that watchers and scripts repeat.

Through the framework one status read cost ~1.8 ms of CPU on SQLite and ~3.5 ms on
PostgreSQL (server + database, BENCHMARKS.md §9): six thread-pool hops (the session, the
token, the job and the endpoint are sync dependencies), dependency solving, an ORM load of
the whole row (spec, resolved spec and result included), pydantic validation of the answer,
a pool checkout with a pre-ping round trip, the access log line. Here the same answer costs
one statement on a connection this thread keeps: the caller's token (not revoked) and the
job (theirs, not deleted) are checked and read together, by primary key and unique index.

This is a pure ASGI middleware that answers only a successful read (200, or 304 when the
client's ``If-None-Match`` holds the current ETag); anything else (no or a bad token, another
tenant's or an unknown job, a database error) goes on to the FastAPI route, which answers as
it always did. The body is ``app.services.jobs.view`` of the same columns, so it is the
route's answer (tests/e2e/test_lean_reads.py compares them).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import threading
from collections import namedtuple
from collections.abc import Iterable
from typing import Any

import psycopg
from fastapi.security.utils import get_authorization_scheme_param
from sqlalchemy import Engine, Row, bindparam, select
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.deps import plausible_id
from app.services.auth import digest
from app.services.jobs import view
from app.storage.db import libpq_url
from app.storage.models import Job, Token

JOBS = "/v1/jobs/"
ROUTE = "/v1/jobs/{job_id}"
ROUTE_KEY = "reprogram.route"  # app.api.metrics reads it
# What ``view`` reads, and nothing else (no spec, resolved spec, lease or checkpoint).
VIEW_COLUMNS = (
    Job.id,
    Job.status,
    Job.iteration,
    Job.iterations,
    Job.queries,
    Job.requests,
    Job.cost_usd,
    Job.max_queries,
    Job.max_cost_usd,
    Job.metrics,
    Job.error,
    Job.dataset_id,
    Job.provider,
    Job.choices,
    Job.result,
    Job.created_at,
    Job.finished_at,
    Job.not_before,
    Job.waiting,
)
ASYNC_CONNECTIONS = 8  # per API process, PostgreSQL
FINAL = frozenset({"succeeded", "failed", "cancelled", "budget_exhausted"})


def encode(job_view: dict[str, Any]) -> bytes:
    """The JSON of a job view, as the API's JSON responses write it."""
    return json.dumps(job_view, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def etag(body: bytes) -> str:
    return '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


def not_modified(if_none_match: str | None, tag: str) -> bool:
    """RFC 9110 §13.1.2: weak comparison; ``*`` matches any current representation."""
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == tag:
            return True
    return False


class ReadFailed(Exception):
    """The database did not answer (the caller falls back to the framework's path)."""


class JobReader:
    """Job views straight from the jobs table, on one connection per thread, kept open
    (autocommit: every statement sees the latest commit; no pool checkout, pre-ping or
    transaction per read). The hot statement runs on the driver's own cursor, with the
    column types' result processors applied as SQLAlchemy would (SQLite stores JSON and
    datetimes as text), so it yields the values an ORM load yields."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._local = threading.local()
        self._open: list[Any] = []
        self._lock = threading.Lock()
        owned = (
            select(*VIEW_COLUMNS)
            .join(Token, Token.tenant_id == Job.tenant_id)
            .where(
                Job.id == bindparam("id"),
                Job.deleted_at.is_(None),
                Token.token_hash == bindparam("digest"),
                Token.revoked_at.is_(None),
            )
        )
        dialect = engine.dialect
        compiled = owned.compile(dialect=dialect)
        self._sql = str(compiled)
        self._positional = compiled.positiontup  # qmark (SQLite) or None (psycopg)
        self._prepare = {"prepare": True} if dialect.name == "postgresql" else {}
        # psycopg already returns what SQLAlchemy would (floats, dicts, aware datetimes).
        self._processors = [
            c.type.dialect_impl(dialect).result_processor(dialect, None)
            if dialect.name == "sqlite"
            else None
            for c in VIEW_COLUMNS
        ]
        self._row = namedtuple("JobRow", [c.key for c in VIEW_COLUMNS])  # type: ignore[misc]
        self._by_ids = select(*VIEW_COLUMNS).where(Job.id.in_(bindparam("ids", expanding=True)))
        self._live = select(Token.token_hash).where(
            Token.token_hash.in_(bindparam("digests", expanding=True)),
            Token.revoked_at.is_(None),
        )
        # PostgreSQL: the event loop reads on a few async connections of its own.
        self.is_async = dialect.name == "postgresql"
        self._free: asyncio.Queue[Any] | None = None
        self._made = 0

    async def owned_async(self, job_id: str, token: str) -> Any | None:
        """``owned`` for the event loop (PostgreSQL): on one of ``ASYNC_CONNECTIONS`` async
        connections, so the loop serves other requests while the database answers. Read
        inline, each request held the loop through two context switches (to the database's
        process and back), which on a busy machine cost more than the read itself."""
        conn = await self._acquire()
        try:
            cursor = await conn.execute(
                self._sql, {"id": job_id, "digest": digest(token)}, prepare=True
            )
            row = await cursor.fetchone()
        except Exception as err:  # a dead connection: the next read opens another
            self._made -= 1
            with contextlib.suppress(Exception):
                await conn.close()
            raise ReadFailed(type(err).__name__) from err
        assert self._free is not None
        self._free.put_nowait(conn)
        return None if row is None else self._row(*row)

    async def _acquire(self) -> Any:
        if self._free is None:
            self._free = asyncio.Queue()
        if self._free.empty() and self._made < ASYNC_CONNECTIONS:
            self._made += 1
            try:
                url = self.engine.url.render_as_string(hide_password=False)
                return await psycopg.AsyncConnection.connect(libpq_url(url), autocommit=True)
            except Exception as err:
                self._made -= 1
                raise ReadFailed(type(err).__name__) from err
        return await self._free.get()

    async def aclose(self) -> None:
        """Close the async connections (the server is stopping)."""
        while self._free is not None and not self._free.empty():
            with contextlib.suppress(Exception):
                await self._free.get_nowait().close()

    def _cursor(self) -> Any:
        cursor = getattr(self._local, "cursor", None)
        if cursor is None:
            raw = self.engine.raw_connection()  # held by this thread until close()
            if self.engine.dialect.name == "postgresql":
                raw.driver_connection.autocommit = True
            cursor = raw.driver_connection.cursor()
            self._local.cursor, self._local.raw = cursor, raw
            with self._lock:
                self._open.append(raw)
        return cursor

    def owned(self, job_id: str, token: str) -> Any | None:
        """The job's view columns if ``token`` is live and its tenant owns the job."""
        params: Any = {"id": job_id, "digest": digest(token)}
        if self._positional is not None:
            params = tuple(params[name] for name in self._positional)
        try:
            cursor = self._cursor()
            cursor.execute(self._sql, params, **self._prepare)
            row = cursor.fetchone()
        except Exception as err:  # a dead connection (database restarted): open a new one
            self._drop()
            raise ReadFailed(type(err).__name__) from err
        if row is None:
            return None
        return self._row(*(p(v) if p else v for p, v in zip(self._processors, row, strict=True)))

    def _drop(self) -> None:
        raw = getattr(self._local, "raw", None)
        self._local.cursor = self._local.raw = None
        if raw is not None:
            with self._lock:
                if raw in self._open:
                    self._open.remove(raw)
            with contextlib.suppress(Exception):  # already gone
                raw.invalidate()

    def by_ids(self, ids: Iterable[str]) -> list[Row[Any]]:
        """View columns of these jobs (no ownership check: the watch hub checked it once)."""
        with self.engine.connect() as conn:
            return list(conn.execute(self._by_ids, {"ids": list(ids)}))

    def live_digests(self, digests: Iterable[str]) -> set[str]:
        """Which of these token digests are not revoked."""
        with self.engine.connect() as conn:
            return {r[0] for r in conn.execute(self._live, {"digests": list(digests)})}

    def close(self) -> None:
        with self._lock:
            conns, self._open = self._open, []
        for raw in conns:
            with contextlib.suppress(Exception):  # at shutdown: nothing to do about it
                raw.close()


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


class LeanJobReads:
    """The ASGI middleware: answers ``GET /v1/jobs/{id}`` when it can, else passes on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "GET"
            and scope["path"].startswith(JOBS)
            and await self._answer(scope, send)
        ):
            return
        await self.app(scope, receive, send)

    async def _answer(self, scope: Scope, send: Send) -> bool:
        job_id = scope["path"][len(JOBS) :]
        if "/" in job_id or not plausible_id(job_id):
            return False
        scheme, token = get_authorization_scheme_param(header(scope, b"authorization"))
        if not token or scheme.lower() != "bearer":
            return False
        services = getattr(scope["app"].state, "services", None)
        reader: JobReader | None = getattr(services, "reads", None)
        if reader is None:
            return False
        try:
            if reader.is_async:
                row = await reader.owned_async(job_id, token)
            else:  # SQLite: a read in this process, faster than any hand-over
                row = reader.owned(job_id, token)
            body = encode(view(row)) if row is not None else None
        except (ReadFailed, ValueError):  # the route answers (and logs) as it would have
            return False
        if body is None:
            return False
        scope[ROUTE_KEY] = ROUTE  # for the request metrics
        tag = etag(body)
        if not_modified(header(scope, b"if-none-match"), tag):
            await send(
                {"type": "http.response.start", "status": 304, "headers": [(b"etag", tag.encode())]}
            )
            await send({"type": "http.response.body", "body": b""})
            return True
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-length", str(len(body)).encode()),
                    (b"content-type", b"application/json"),
                    (b"etag", tag.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return True
