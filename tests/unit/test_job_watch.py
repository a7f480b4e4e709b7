"""The event streams' poller: one read per interval for all watchers of all jobs, pushes only
on change, ends streams on a final status, a deleted job or a revoked token."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from app.api.events import JobWatch
from app.api.lean import encode
from app.services.jobs import view


def job(job_id: str, **fields: Any) -> SimpleNamespace:
    base = {
        "id": job_id,
        "status": "running",
        "iteration": 1,
        "iterations": 10,
        "queries": 0,
        "requests": 0,
        "cost_usd": 0.0,
        "max_queries": None,
        "max_cost_usd": None,
        "metrics": {},
        "error": None,
        "dataset_id": "ds_1",
        "provider": "torch",
        "choices": [],
        "result": None,
        "created_at": None,
        "finished_at": None,
        "not_before": None,
        "waiting": None,
    }
    return SimpleNamespace(**(base | fields))


class FakeReader:
    def __init__(self, jobs: dict[str, SimpleNamespace]) -> None:
        self.jobs = jobs
        self.live = {"d1", "d2"}
        self.reads: list[list[str]] = []

    def by_ids(self, ids: list[str]) -> list[SimpleNamespace]:
        self.reads.append(sorted(ids))
        return [self.jobs[i] for i in ids if i in self.jobs]

    def live_digests(self, digests: set[str]) -> set[str]:
        return digests & self.live


def test_one_read_per_poll_for_every_watcher_and_pushes_only_on_change() -> None:
    jobs = {f"job_{i}": job(f"job_{i}") for i in range(3)}
    reader = FakeReader(jobs)

    async def scenario() -> None:
        watch = JobWatch(reader, interval=0.01)  # type: ignore[arg-type]
        watchers = [
            watch.subscribe(
                f"job_{i % 3}", "d1" if i % 2 else "d2", encode(view(jobs[f"job_{i % 3}"]))
            )
            for i in range(300)
        ]
        await asyncio.sleep(0.1)
        polls = len(reader.reads)
        assert polls >= 3
        assert all(ids == ["job_0", "job_1", "job_2"] for ids in reader.reads)
        assert all(w.pending is None for w in watchers)  # nothing changed: nothing pushed
        jobs["job_1"].iteration = 2
        await asyncio.sleep(0.05)
        moved = [w for w in watchers if w.job_id == "job_1"]
        assert all(w.pending is not None for w in moved)
        assert all(w.pending is None for w in watchers if w.job_id != "job_1")
        body = await moved[0].next(1.0)
        assert body is not None and b'"iteration":2' in body
        # A final status is pushed, then the stream ends; a revoked token's streams end;
        # a job that is gone ends its streams.
        jobs["job_1"].status = "succeeded"
        reader.live.discard("d2")
        del jobs["job_2"]
        await asyncio.sleep(0.05)
        for w in watchers:
            if w.job_id == "job_1":
                assert w.closed and w.pending is not None and b"succeeded" in w.pending
            elif w.job_id == "job_2" or w.digest == "d2":
                assert w.closed
            else:
                assert not w.closed
        for w in watchers:
            watch.unsubscribe(w)
        await asyncio.sleep(0.05)
        assert not watch.watchers
        done = len(reader.reads)
        await asyncio.sleep(0.05)
        assert len(reader.reads) == done  # nobody watches: no more reads

    asyncio.run(scenario())
