"""Two OS processes sharing one Clarifai credential through the shared limiter (SQLite, and
PostgreSQL as in production) stay under the fake's per-key limit together, and still get
close to it."""

from __future__ import annotations

import multiprocessing
import queue
import random
import time
import traceback
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from adapters.clarifai import ClarifaiOracle
from adapters.dispatch import Dispatcher
from adapters.ratelimit import (
    build_limiter,
    drop_postgres_state,
    pause_table_exists,
    shared_limiter,
)
from adapters.retry import RetryPolicy
from tests.fakes.clarifai import FakeClarifai

KEY = "sk-shared-limit-0123456789"
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
RATE = 20.0  # requests/s: the fake's limit and the limiter's
BURST = 5  # the fake forgives this little bunching; uncoordinated senders exceed it at once
REQUESTS_EACH = 30
PROCESSES = 2


def _job(endpoint: str, backend: str, key: str, ready: Any, results: Any) -> None:
    """One worker process: its own oracle and dispatcher, the credential's shared limiter;
    sends REQUESTS_EACH requests once every worker is ready and reports when it ran."""
    try:
        limiter = shared_limiter(key, RATE, backend)
        images = np.random.default_rng(0).random((2 * REQUESTS_EACH, 8, 8, 3), dtype=np.float32)
        oracle = ClarifaiOracle(
            api_key=KEY, endpoint=endpoint, max_images_per_request=2, max_concurrency=4
        )
        retry = RetryPolicy(base_delay=0.05, max_attempts=10, rng=random.Random())
        dispatcher = Dispatcher(oracle, limiter=limiter, limit_unit="request", retry=retry)
        ready.wait(timeout=60)
        start = time.time()
        dispatcher.query(images, "train")
        results.put({"start": start, "end": time.time()})
        dispatcher.close()
        oracle.close()
        limiter.close()
    except BaseException:
        results.put({"error": traceback.format_exc()})


def run_workers(endpoint: str, backend: str, key: str) -> list[dict[str, float]]:
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters, as separate workers are
    ready, results = ctx.Barrier(PROCESSES), ctx.Queue()
    workers = [
        ctx.Process(target=_job, args=(endpoint, backend, key, ready, results))
        for _ in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    reports: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    try:
        while len(reports) < len(workers) and time.monotonic() < deadline:
            try:
                reports.append(results.get(timeout=0.2))
            except queue.Empty:
                # a worker that died without a word (e.g. at import) must not cost a minute
                dead = sum(not w.is_alive() and w.exitcode != 0 for w in workers)
                assert not dead, f"{dead} worker(s) died without reporting"
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
    assert len(reports) == len(workers), "workers did not finish in time"
    errors = [r["error"] for r in reports if "error" in r]
    assert not errors, "\n".join(errors)
    return reports


#: a test on each shared backend, named by its fixture
ON_EVERY_BACKEND = pytest.mark.parametrize(
    "backend_fixture",
    ["sqlite_backend", pytest.param("postgres_backend", marks=pytest.mark.postgres)],
)


@pytest.fixture
def key() -> str:
    return f"clarifai_{uuid.uuid4().hex[:16]}"  # a fresh bucket: no state from earlier runs


@pytest.fixture
def sqlite_backend(tmp_path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'ratelimit.db'}"


@pytest.fixture
def postgres_backend(key) -> Iterator[str]:
    """The production backend. Afterwards the bucket of ``key`` and its pause row go, and the
    shared pause table too if this test created it (otherwise other limiters may use it)."""
    existed = pause_table_exists(POSTGRES)
    yield POSTGRES
    drop_postgres_state(POSTGRES, [key], pause_table_existed=existed)


@ON_EVERY_BACKEND
def test_two_processes_stay_under_the_limit_together(request, backend_fixture, key):
    backend = request.getfixturevalue(backend_fixture)
    with FakeClarifai(keys={KEY}, rate_limit=RATE, burst=BURST, model="cheap") as fake:
        reports = run_workers(fake.endpoint, backend, key)
        counts = fake.counts(KEY)
    answered = counts.requests - counts.throttled
    assert answered == PROCESSES * REQUESTS_EACH and counts.billable == 2 * answered
    assert counts.throttled / counts.requests < 0.01
    span = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    achieved = (answered - 1) / span  # requests start one pacing interval apart
    assert achieved >= 0.85 * RATE, f"{achieved:.1f} requests/s of {RATE}"


@ON_EVERY_BACKEND
def test_a_pause_reaches_every_limiter_of_the_credential(request, backend_fixture, key):
    backend = request.getfixturevalue(backend_fixture)
    # What two worker processes hold: limiters built apart, sharing only the database.
    mine, theirs = build_limiter(key, RATE, backend), build_limiter(key, RATE, backend)
    try:
        theirs.acquire()
        mine.pause(0.6)  # a Retry-After met here...
        start = time.monotonic()
        theirs.acquire()  # ...holds the other worker back as long
        assert time.monotonic() - start >= 0.5
        assert theirs.paused_for() == 0.0
    finally:
        mine.close()
        theirs.close()
