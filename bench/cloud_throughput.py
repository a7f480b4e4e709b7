"""How close the dispatch path gets to a provider's rate limit, and what it costs per request.

Against each fake (run as its own process, like a remote service) with a rate limit R
(Clarifai: 15 requests/s of 128 images; Custom Vision: 10 images/s), 1, 4 and 16 concurrent
jobs, each a worker process (or a thread, ``--jobs-as thread``) running its own Dispatcher
with the credential's shared limiter, query for ``--seconds``. Reported per row:

- throughput / R: requests the fake answered (not throttled) during the window, per second,
  over R, from the fake's own counts (admin API);
- throttled: the fake's throttled requests over all requests it received;
- overhead: the client's own time per request. Measured per answered request as the time
  from the limiter letting it through to the ledger settling it, minus the time spent inside
  the SDK's call (timed around it: the fake's service time plus the SDK's own), plus one
  limiter acquire with a free slot (calibrated beforehand). So it counts image encoding,
  answer parsing, ledger, retry wrapper and the limiter's database round trips, and leaves
  out the fake, the SDK and the waiting the rate limit imposes.

Run from the repository root (PostgreSQL as in production, or ``sqlite:///...``):
    python -m bench.cloud_throughput --backend postgresql://postgres@127.0.0.1:5432/test \
        --out bench/results/cloud_throughput.md
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import multiprocessing
import os
import platform
import queue
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from adapters.ratelimit import drop_postgres_state, pause_table_exists

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-key-0123456789"
CV_PROJECT, CV_PUBLISHED = "5c0f7c3e-0d6a-4f57-9a43-000000000002", "production"  # the fake's


@dataclass(frozen=True)
class Provider:
    """One provider's benchmark settings."""

    name: str
    rate: float  # R, in the provider's unit
    unit: str  # "request" (Clarifai) or "image" (Custom Vision)
    images_per_request: int
    requests_per_query: int  # a job keeps this many requests in flight per query

    def images(self, seed: int) -> np.ndarray:
        n = self.images_per_request * self.requests_per_query
        return np.random.default_rng(seed).random((n, 32, 32, 3), dtype=np.float32)


PROVIDERS = {
    "clarifai": Provider("clarifai", 15.0, "request", 128, 4),
    "customvision": Provider("customvision", 10.0, "image", 1, 8),
}


# -- the fake, as a separate process --------------------------------------------------------
@dataclass
class Fake:
    endpoint: str
    admin: str  # base URL of the admin API

    def counts(self) -> dict[str, int]:
        """requests, throttled, answered: the fake's counts for the benchmark key."""
        with urllib.request.urlopen(f"{self.admin}/counts?key={KEY}", timeout=10) as reply:
            counts = json.load(reply)
        counts["answered"] = counts.get("billable", counts.get("answered", 0))
        return counts


@contextlib.contextmanager
def fake_server(provider: Provider, rate_limit: float | None) -> Iterator[Fake]:
    """Start ``python -m tests.fakes.<provider> --model cheap`` (0: no rate limit)."""
    cmd = [sys.executable, "-m", f"tests.fakes.{provider.name}", "--port", "0", "--key", KEY]
    cmd += ["--rate-limit", str(rate_limit or 0), "--model", "cheap"]
    if provider.name == "clarifai":
        cmd += ["--admin-port", "0"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        urls = re.findall(r"http://[\d.]+:\d+", line)
        if not urls:
            raise RuntimeError(f"the fake did not start: {line!r}")
        # The Custom Vision fake answers its admin paths under /_fake/ on its own port.
        admin = urls[1] if provider.name == "clarifai" else f"{urls[0]}/_fake"
        yield Fake(urls[0], admin)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# -- one job ---------------------------------------------------------------------------------
def make_oracle(provider: Provider, endpoint: str) -> Any:
    if provider.name == "clarifai":
        from adapters.clarifai import ClarifaiOracle

        return ClarifaiOracle(api_key=KEY, endpoint=endpoint, max_images_per_request=128)
    from adapters.customvision import CustomVisionOracle

    return CustomVisionOracle(
        project_id=CV_PROJECT, published_name=CV_PUBLISHED, endpoint=endpoint, api_key=KEY
    )


_sdk = threading.local()  # per thread: seconds inside the SDK call since admission


def _timed(call: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(call)  # keeps what generated SDKs hang on methods (e.g. ``metadata``)
    def timed_call(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            _sdk.seconds = getattr(_sdk, "seconds", 0.0) + time.perf_counter() - start

    timed_call.timed = True  # type: ignore[attr-defined]
    return timed_call


def instrument(oracle: Any) -> None:
    """Time the SDK call inside each predict: the fake's service time plus the SDK's own.
    (The benchmark's probe reaches into private attributes, because the adapters rightly
    offer no such hook.)"""
    if hasattr(oracle, "_call"):  # Clarifai: every gRPC call goes through _call
        oracle._call = _timed(oracle._call)
        return
    from azure.cognitiveservices.vision.customvision.prediction import (
        CustomVisionPredictionClient as Client,
    )

    # The oracle builds one client per thread: patch the class, once per process.
    if not hasattr(Client.classify_image_with_no_store, "timed"):
        Client.classify_image_with_no_store = _timed(Client.classify_image_with_no_store)


class TimedLimiter:
    """The shared limiter, starting the clock when it lets a thread's request through."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.local = inner, threading.local()

    def acquire(self, weight: int = 1) -> float:
        waited = self.inner.acquire(weight)
        self.local.admitted, _sdk.seconds = time.perf_counter(), 0.0
        return waited

    def pause(self, seconds: float) -> None:
        self.inner.pause(seconds)


class TimedLedger:
    """A ledger that notes, per answered request, the seconds from admission to settling
    spent in our code (``own``) and inside the SDK call (``sdk``)."""

    def __init__(self, limiter: TimedLimiter) -> None:
        self.limiter = limiter
        self.own: list[float] = []
        self.sdk: list[float] = []

    def reserve(self, purpose: str, images: int) -> TimedLedger:
        return self

    def settle(self, record: Any) -> None:
        if record.outcome == "ok":  # only attempts that were sent and answered
            elapsed = time.perf_counter() - self.limiter.local.admitted
            self.own.append(elapsed - _sdk.seconds)
            self.sdk.append(_sdk.seconds)


@dataclass(frozen=True)
class JobSpec:
    provider: str
    endpoint: str
    backend: str
    limiter_key: str
    seconds: float
    seed: int


def run_job(spec: JobSpec, start: Callable[[], None], report: Callable[[Any], None]) -> None:
    """One job: a Dispatcher of its own and the credential's shared limiter; queries until
    ``seconds`` after ``start()`` returns; reports its samples (or its failure)."""
    try:
        from adapters.dispatch import Dispatcher
        from adapters.ratelimit import shared_limiter

        provider = PROVIDERS[spec.provider]
        oracle = make_oracle(provider, spec.endpoint)
        instrument(oracle)
        limiter = TimedLimiter(shared_limiter(spec.limiter_key, provider.rate, spec.backend))
        ledger = TimedLedger(limiter)
        dispatcher = Dispatcher(
            oracle,
            ledger=ledger,
            limiter=limiter,  # type: ignore[arg-type]
            limit_unit=provider.unit,
        )
        images = provider.images(spec.seed)
        start()
        deadline = time.time() + spec.seconds
        while time.time() < deadline:
            dispatcher.query(images, "bench")
        dispatcher.close()
        oracle.close()
        report({"own": ledger.own, "sdk": ledger.sdk})
    except BaseException as err:  # the parent shows it rather than waiting for nothing
        report({"error": f"{type(err).__name__}: {err}"})


def _job_process(spec: JobSpec, barrier: Any, results: Any) -> None:
    run_job(spec, barrier.wait, results.put)


def run_row(provider: Provider, jobs: int, args: argparse.Namespace, calib: dict) -> dict:
    """One table row: a fresh rate-limited fake, ``jobs`` jobs for ``args.seconds``."""
    limiter_key = f"{provider.name}_{uuid.uuid4().hex[:16]}"
    args.used_keys.append(limiter_key)
    with fake_server(provider, provider.rate) as fake:
        specs = [
            JobSpec(provider.name, fake.endpoint, args.backend, limiter_key, args.seconds, i)
            for i in range(jobs)
        ]
        if args.jobs_as == "process":
            ctx = multiprocessing.get_context("spawn")
            barrier, results = ctx.Barrier(jobs + 1), ctx.Queue()
            workers: list[Any] = [
                ctx.Process(target=_job_process, args=(s, barrier, results)) for s in specs
            ]
        else:
            barrier, results = threading.Barrier(jobs + 1), queue.Queue()
            workers = [
                threading.Thread(target=run_job, args=(s, barrier.wait, results.put)) for s in specs
            ]
        for worker in workers:
            worker.start()
        barrier.wait(timeout=300)  # every job built: the window starts now
        before, t0 = fake.counts(), time.monotonic()
        time.sleep(args.seconds)
        after, window = fake.counts(), time.monotonic() - t0
        reports = [results.get(timeout=300) for _ in workers]
        for worker in workers:
            worker.join(timeout=60)
        total = fake.counts()
    errors = [r["error"] for r in reports if "error" in r]
    if errors:
        raise RuntimeError(f"{len(errors)} job(s) failed: {errors[0]}")
    answered = (after["requests"] - after["throttled"]) - (before["requests"] - before["throttled"])
    own = [1000 * s + calib["limiter_ms"] for r in reports for s in r["own"]]
    return {
        "provider": provider.name,
        "jobs": jobs,
        "sdk_ms": 1000 * statistics.median(s for r in reports for s in r["sdk"]),
        "requests": total["requests"],
        "throughput": answered / window / provider.rate,
        "throttled": total["throttled"] / max(1, total["requests"]),
        "overhead_p50": statistics.median(own),
        "overhead_p90": statistics.quantiles(own, n=10)[-1] if len(own) > 1 else own[0],
    }


# -- calibration: the raw SDK call and the limiter's bookkeeping --------------------------------
def raw_call(provider: Provider, endpoint: str, key: str = KEY) -> Callable[[], None]:
    """One pre-encoded request straight through the SDK: the fake's time plus the SDK's."""
    images = (provider.images(0)[: provider.images_per_request] * 255).astype(np.uint8)
    if provider.name == "clarifai":
        from clarifai_grpc.grpc.api import resources_pb2, service_pb2

        from adapters.clarifai import encode_png, open_channel, v2_stub

        stub = v2_stub(open_channel(endpoint))
        request = service_pb2.PostModelOutputsRequest(
            user_app_id=resources_pb2.UserAppIDSet(user_id="clarifai", app_id="main"),
            model_id="nsfw-recognition",
            inputs=[
                resources_pb2.Input(data=resources_pb2.Data(image=resources_pb2.Image(base64=b)))
                for b in map(encode_png, images)
            ],
        )
        metadata = (("authorization", f"Key {key}"),)
        return lambda: stub.PostModelOutputs(request, metadata=metadata, timeout=30)
    from azure.cognitiveservices.vision.customvision.prediction import (
        CustomVisionPredictionClient,
    )
    from msrest.authentication import ApiKeyCredentials

    from adapters.customvision import encode_png as encode

    client = CustomVisionPredictionClient(
        endpoint, ApiKeyCredentials(in_headers={"Prediction-key": key})
    )
    data = encode(images[0])
    return lambda: client.classify_image_with_no_store(CV_PROJECT, CV_PUBLISHED, data)


def timed_ms(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - start)


def medians_ms(fns: list[Callable[[], Any]], n: int, warmup: int = 5) -> list[float]:
    """Median time of each function, calling them in turn so that they share conditions."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[timed_ms(fn) for fn in fns] for _ in range(n)]
    return [statistics.median(column) for column in zip(*times, strict=True)]


def calibrate(provider: Provider, args: argparse.Namespace) -> dict[str, float]:
    """Unloaded medians (ms): the raw SDK call, our whole path for one request (limiter
    never waiting), and one limiter acquire with a free slot."""
    from adapters.dispatch import Dispatcher
    from adapters.ratelimit import shared_limiter

    key = f"calib_{uuid.uuid4().hex[:16]}"
    args.used_keys.append(key)
    limiter = shared_limiter(key, 100_000.0, args.backend)  # never waits at these speeds
    with fake_server(provider, None) as fake:
        oracle = make_oracle(provider, fake.endpoint)
        dispatcher = Dispatcher(oracle, limiter=limiter, limit_unit=provider.unit)
        images = provider.images(1)[: provider.images_per_request]
        ours = lambda: dispatcher.query(images, "calibrate")  # noqa: E731
        raw_ms, ours_ms = medians_ms([raw_call(provider, fake.endpoint), ours], 40)
        dispatcher.close()
        oracle.close()
    (limiter_ms,) = medians_ms([limiter.acquire], 200)
    limiter.close()
    return {"raw_ms": raw_ms, "ours_ms": ours_ms, "limiter_ms": limiter_ms}


# -- report --------------------------------------------------------------------------------------
def table(rows: list[dict], calibrations: dict[str, dict[str, float]], args: Any) -> str:
    lines = [
        f"## Cloud throughput against the fakes ({args.jobs_as} jobs, {args.backend_name})",
        "",
        f"Command: `{args.command}`",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs (1-minute load "
        f"average {args.load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, "
        f"other work included), Python {platform.python_version()}, {args.seconds:g} s per "
        "row; fakes in their own process with the cheap model (`--model cheap`), 32×32 images.",
        "",
        "| provider | R | jobs | requests | throughput / R | throttled | "
        "overhead ms/request p50 (p90) | SDK call ms p50 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p = PROVIDERS[r["provider"]]
        lines.append(
            f"| {r['provider']} | {p.rate:g} {p.unit}s/s"
            f"{f' × {p.images_per_request} images' if p.images_per_request > 1 else ''} "
            f"| {r['jobs']} | {r['requests']} | {r['throughput']:.3f} | "
            f"{100 * r['throttled']:.2f} % | {r['overhead_p50']:.1f} ({r['overhead_p90']:.1f}) | "
            f"{r['sdk_ms']:.1f} |"
        )
    lines += ["", "Calibration (unloaded medians, ms per request):", ""]
    for name, c in calibrations.items():
        lines.append(
            f"- {name}: raw SDK call {c['raw_ms']:.2f}; our whole path "
            f"(dispatcher + adapter + limiter, no waiting) {c['ours_ms']:.2f}; "
            f"limiter acquire with a free slot {c['limiter_ms']:.2f}."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--provider", nargs="+", choices=sorted(PROVIDERS), default=list(PROVIDERS))
    parser.add_argument("--jobs", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=25.0)
    parser.add_argument("--backend", default=None, help="memory, sqlite:///file or postgresql://…")
    parser.add_argument("--jobs-as", choices=["process", "thread"], default="process")
    parser.add_argument("--out", type=Path, default=None, help="append the table to this file")
    args = parser.parse_args(argv)
    args.command = "python -m bench.cloud_throughput " + " ".join(argv or sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        if args.backend is None:
            args.backend = f"sqlite:///{tmp}/ratelimit.db"
        if args.backend == "memory" and args.jobs_as == "process":
            parser.error("jobs in separate processes need a shared backend (sqlite or postgresql)")
        args.backend_name = args.backend.split(":", 1)[0].replace("postgresql", "PostgreSQL")
        args.used_keys, args.load = [], os.getloadavg()
        postgres = args.backend.startswith("postgres")
        pause_table_existed = postgres and pause_table_exists(args.backend)
        rows, calibrations = [], {}
        try:
            for name in args.provider:
                provider = PROVIDERS[name]
                calibrations[name] = calibrate(provider, args)
                for jobs in args.jobs:
                    rows.append(run_row(provider, jobs, args, calibrations[name]))
                    print(rows[-1], flush=True)
        finally:
            if postgres:
                drop_postgres_state(
                    args.backend, args.used_keys, pause_table_existed=pause_table_existed
                )
    text = table(rows, calibrations, args)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as out:
            out.write(text + "\n")


if __name__ == "__main__":
    main()
