"""``Client.wait`` follows the job's event stream (no polling while the job works), and
falls back to polling when the server has no stream or the stream breaks."""

from __future__ import annotations

import json

import httpx
import pytest

from app.client import Client


def state(i: int, status: str = "running") -> dict:
    return {"id": "job_1", "status": status, "progress": {"iteration": i, "iterations": 3}}


def sse(*jobs: dict) -> bytes:
    return b"".join(b"event: job\ndata: " + json.dumps(j).encode() + b"\n\n" for j in jobs)


def client(handler) -> tuple[Client, list[str]]:  # type: ignore[no-untyped-def]
    calls: list[str] = []

    def record(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return handler(request)

    return Client("http://test", "rp_x", transport=httpx.MockTransport(record)), calls


def test_wait_follows_the_event_stream_without_polling() -> None:
    events = sse(state(0), state(1), state(2), state(3, "succeeded"))
    rp, calls = client(
        lambda r: httpx.Response(
            200, content=b": keepalive\n\n" + events, headers={"content-type": "text/event-stream"}
        )
    )
    seen = []
    job = rp.wait("job_1", lambda j: seen.append(j.iteration), interval=60)
    assert job.status == "succeeded" and seen == [0, 1, 2, 3]
    assert calls == ["/v1/jobs/job_1/events"]


def test_wait_polls_a_server_without_the_stream() -> None:
    polls = iter([state(1), state(2), state(3, "succeeded")])

    def handler(r: httpx.Request) -> httpx.Response:
        if r.url.path.endswith("/events"):
            return httpx.Response(404, json={"detail": "Not Found"})
        return httpx.Response(200, json=next(polls))

    rp, calls = client(handler)
    assert rp.wait("job_1", interval=0.01).status == "succeeded"
    assert calls == ["/v1/jobs/job_1/events"] + ["/v1/jobs/job_1"] * 3


def test_a_broken_stream_is_read_once_and_opened_again() -> None:
    streams = iter([sse(state(1)), sse(state(2), state(3, "succeeded"))])

    def handler(r: httpx.Request) -> httpx.Response:
        if r.url.path.endswith("/events"):
            return httpx.Response(200, content=next(streams))  # the first ends mid-job
        return httpx.Response(200, json=state(1))

    rp, calls = client(handler)
    seen = []
    assert rp.wait("job_1", lambda j: seen.append(j.iteration), interval=0.01).final
    assert seen == [1, 2, 3]
    assert calls == ["/v1/jobs/job_1/events", "/v1/jobs/job_1", "/v1/jobs/job_1/events"]


def test_wait_gives_up_after_its_timeout() -> None:
    rp, _ = client(
        lambda r: (
            httpx.Response(200, json=state(1))
            if not r.url.path.endswith("s")
            else httpx.Response(404)
        )
    )
    with pytest.raises(TimeoutError):
        rp.wait("job_1", interval=0.01, timeout=0.1)


def test_a_job_waiting_for_its_quota_says_so_while_it_is_watched():
    from app.cli.remote import _info
    from app.client import Job

    waiting = {"until": "2026-12-03T23:50:00+00:00", "reason": "the oracle's quota is used up"}
    job = Job.from_json(state(1, "queued") | {"waiting": waiting})
    assert job.waiting == waiting
    assert "waiting for the oracle's quota until 2026-12-03T23:50:00+00:00" in _info(job)
    assert "waiting" not in _info(Job.from_json(state(1)))
