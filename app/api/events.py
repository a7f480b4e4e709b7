"""``GET /v1/jobs/{id}/events``: a job's progress pushed as server-sent events.

Each event is ``event: job`` with ``data:`` the same JSON as ``GET /v1/jobs/{id}``: one at
once on connect, then one whenever that JSON changes (an iteration, a status, the spend);
the stream ends after a final status. A comment line every ``KEEPALIVE`` seconds keeps idle
connections open through proxies.

Watching costs no query per watcher: each API process has one ``JobWatch`` that, while
anyone watches, reads every watched job in one statement per ``events_poll_seconds`` (and
which of the watchers' tokens are still live, in a second), and hands each changed job's
JSON to its watchers. A watcher between two changes costs nothing but its open socket; a
revoked token's streams end at the next poll.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from fastapi.security.utils import get_authorization_scheme_param

from app.api.deps import OwnedJob, ServicesDep
from app.api.lean import FINAL, JobReader, encode
from app.api.metrics import EVENT_STREAMS
from app.services.auth import digest
from app.services.jobs import view

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
log = logging.getLogger("reprogram.api")
KEEPALIVE = 15.0  # seconds between comment lines on an idle stream


class Watcher:
    """One open stream: the latest JSON not yet sent (older ones are skipped: a slow client
    gets the current state, not a backlog)."""

    __slots__ = ("closed", "digest", "job_id", "pending", "sent", "wake")

    def __init__(self, job_id: str, token_digest: str, sent: bytes) -> None:
        self.job_id, self.digest, self.sent = job_id, token_digest, sent
        self.pending: bytes | None = None
        self.closed = False
        self.wake = asyncio.Event()

    def push(self, body: bytes) -> None:
        if body != self.sent:
            self.pending = body
            self.wake.set()

    def close(self) -> None:
        self.closed = True
        self.wake.set()

    async def next(self, timeout: float) -> bytes | None:
        """The next JSON to send; None on timeout or when closed with nothing pending."""
        if self.pending is None and not self.closed:
            try:
                await asyncio.wait_for(self.wake.wait(), timeout)
            except TimeoutError:
                return None
        self.wake.clear()
        body, self.pending = self.pending, None
        if body is not None:
            self.sent = body
        return body


class JobWatch:
    """The process's poller and fan-out (see the module's docstring)."""

    def __init__(self, reader: JobReader, interval: float) -> None:
        self.reader, self.interval = reader, interval
        self.watchers: dict[str, set[Watcher]] = {}
        self.polls = 0
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, job_id: str, token_digest: str, sent: bytes) -> Watcher:
        watcher = Watcher(job_id, token_digest, sent)
        self.watchers.setdefault(job_id, set()).add(watcher)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return watcher

    def unsubscribe(self, watcher: Watcher) -> None:
        group = self.watchers.get(watcher.job_id)
        if group is not None:
            group.discard(watcher)
            if not group:
                del self.watchers[watcher.job_id]

    def close(self) -> None:
        """End every stream (the server is stopping)."""
        for group in list(self.watchers.values()):
            for watcher in group:
                watcher.close()

    def _read(self, ids: list[str], digests: set[str]) -> tuple[list[Any], set[str]]:
        return self.reader.by_ids(ids), self.reader.live_digests(digests)

    async def _run(self) -> None:
        while self.watchers:
            await asyncio.sleep(self.interval)
            if not self.watchers:
                break
            ids = list(self.watchers)
            digests = {w.digest for group in self.watchers.values() for w in group}
            try:
                rows, live = await asyncio.to_thread(self._read, ids, digests)
            except Exception:  # the database is away: the next poll tries again
                log.warning("watching jobs: the poll failed", exc_info=True)
                continue
            self.polls += 1
            seen = set()
            for row in rows:
                seen.add(row.id)
                body = encode(view(row))
                final = row.status in FINAL
                for watcher in self.watchers.get(row.id, ()):
                    watcher.push(body)
                    if final:
                        watcher.close()
            for job_id in ids:
                for watcher in self.watchers.get(job_id, ()):
                    if job_id not in seen or watcher.digest not in live:
                        watcher.close()  # deleted, or the token was revoked


def sse(body: bytes) -> bytes:
    return b"event: job\ndata: " + body + b"\n\n"


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "`event: job` + `data: <the job, as GET /v1/jobs/{id}>`, at once "
            "and on every change; ends after a final status",
        },
        401: {"description": "missing or invalid bearer token"},
        404: {"description": "no such job (or another tenant's)"},
    },
)
async def events(job: OwnedJob, svc: ServicesDep, request: Request) -> StreamingResponse:
    """The job's progress as server-sent events, pushed when it changes (no polling)."""
    first = encode(view(job))
    _, token = get_authorization_scheme_param(request.headers.get("authorization"))
    token_digest = digest(token)  # OwnedJob has checked it
    final = job.status in FINAL
    watch: JobWatch = svc.watch

    async def stream() -> AsyncIterator[bytes]:
        yield sse(first)
        if final:
            return
        watcher = watch.subscribe(job.id, token_digest, first)
        EVENT_STREAMS.inc()
        try:
            while True:
                body = await watcher.next(KEEPALIVE)
                if body is not None:
                    yield sse(body)
                elif watcher.closed:
                    return
                else:
                    yield b": keepalive\n\n"
                if watcher.closed and watcher.pending is None:
                    return
        finally:
            EVENT_STREAMS.dec()
            watch.unsubscribe(watcher)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
