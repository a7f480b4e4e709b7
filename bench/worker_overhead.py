"""What the service adds to a job: the same job run by the engine and oracle alone, and by
the worker (database ledger row per request, budget reservation, checkpoint + metrics + progress
in one transaction per tell), on SQLite and on PostgreSQL.

Two measures. *Wall*: each path's total time (fastest of interleaved rounds); on a shared VM
this moves by ±10 % from run to run, more than the overhead itself. *Inside the run*: the time
spent in the engine (``Trainer.ask``/``tell``) and the model (``TorchOracle.predict``) is
clocked inside each run; whatever else the run spent is what the path adds, so a slow spell of
the machine slows both sides of the ratio alike.

    python -m bench.worker_overhead --iterations 60 --repeat 2
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np

from adapters.torch_local import TorchOracle
from app.config.settings import Settings
from app.config.spec import JobSpec
from app.data.loading import load_bytes
from app.data.store import store_upload
from app.jobs import runner
from app.jobs.execute import execute_job
from app.services.auth import create_token
from app.services.jobs import create_job
from app.storage.db import Database
from app.storage.migrate import upgrade
from bench.tasks import load_task
from engine.trainer import Trainer


def dataset_npz() -> bytes:
    d = load_task("mnist10")
    buf = io.BytesIO()
    np.savez(buf, x=np.stack(d.images), y=d.y, classes=np.array(d.classes), split=d.split)
    return buf.getvalue()


def spec(iterations: int) -> dict:
    return {
        "oracle": {"kind": "torch"},
        "optimizer": {"iterations": iterations, "eval_every": 20},
        "seed": 0,
    }


class EngineClock:
    """Accumulates the seconds spent in the engine and the model, whoever calls them."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._patched: list[tuple[type, str, object]] = []

    def __enter__(self) -> EngineClock:
        for cls, name in ((TorchOracle, "predict"), (Trainer, "ask"), (Trainer, "tell")):
            original = getattr(cls, name)
            self._patched.append((cls, name, original))
            setattr(cls, name, self._timed(original))
        return self

    def __exit__(self, *exc: object) -> None:
        for cls, name, original in self._patched:
            setattr(cls, name, original)

    def _timed(self, fn):  # type: ignore[no-untyped-def]
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return wrapper


def clocked(fn, *args) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(wall seconds, seconds outside the engine and the model) of one path."""
    with EngineClock() as clock:
        wall = fn(*args)
    return wall, wall - clock.seconds


def engine_alone(content: bytes, iterations: int) -> float:
    data = load_bytes(content, "mnist.npz")
    s = JobSpec.model_validate(spec(iterations))
    oracle = TorchOracle(input_size=runner.input_size_of(s))
    t = runner.prepare(s, data, oracle, query_cap=None).trainer
    start = time.perf_counter()
    while not t.done:
        ask = t.ask()
        t.tell(
            np.concatenate(
                [
                    oracle.predict(ask.frames[i : i + 256]).probs
                    for i in range(0, len(ask.frames), 256)
                ]
            )
        )
    return time.perf_counter() - start


def worker(content: bytes, iterations: int, url: str | None, data_dir: Path) -> float:
    settings = Settings(
        data_dir=data_dir, database_url=url or f"sqlite:///{data_dir}/b.db", secret_key="bench"
    )
    upgrade(settings.db_url)
    db = Database(settings.db_url)
    with db.session() as s:
        create_token(s, tenant_name="bench")
        from app.storage.models import Tenant

        tenant = s.query(Tenant).one()
        ds = store_upload(
            s, data_dir=data_dir, tenant_id=tenant.id, filename="mnist.npz", content=content
        )
        s.flush()
        job = create_job(
            s,
            settings,
            tenant_id=tenant.id,
            spec=JobSpec.model_validate({**spec(iterations), "dataset_id": ds.id}),
        )
        job_id = job.id
    start = time.perf_counter()
    status = execute_job(db, settings, job_id)
    elapsed = time.perf_counter() - start
    assert status == "succeeded", status
    db.dispose()
    return elapsed


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--iterations", type=int, default=60)
    p.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--repeat", type=int, default=2, help="rounds; each path's fastest counts")
    a = p.parse_args()
    content = dataset_npz()
    times: dict[str, list[tuple[float, float]]] = {}
    for _ in range(a.repeat):  # interleaved, so a slow spell of the machine hits every path
        times.setdefault("engine + oracle alone", []).append(
            clocked(engine_alone, content, a.iterations)
        )
        with tempfile.TemporaryDirectory() as tmp:
            times.setdefault("worker, SQLite", []).append(
                clocked(worker, content, a.iterations, None, Path(tmp))
            )
        if a.postgres:
            from tests.helpers import create_database, drop_database

            url = create_database()
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    times.setdefault("worker, PostgreSQL", []).append(
                        clocked(worker, content, a.iterations, url, Path(tmp))
                    )
            finally:
                drop_database(url)
    base = min(w for w, _ in times["engine + oracle alone"])
    print(
        f"\nmnist10 job, {a.iterations} iterations (defaults), bundled model, 128², "
        f"{a.repeat} interleaved rounds\n"
    )
    print(
        "| path | wall s (fastest) | wall vs engine | outside engine+model, ms/iteration "
        "| inside-run overhead |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, runs in times.items():
        wall = min(w for w, _ in runs)
        extra = [x / (w - x) for w, x in runs]  # added time over engine+model time, per run
        print(
            f"| {name} | {wall:.1f} | {(wall / base - 1) * 100:+.1f} % | "
            f"{min(x for _, x in runs) / a.iterations * 1000:.0f} | "
            f"{min(extra) * 100:.1f} %–{max(extra) * 100:.1f} % |"
        )


if __name__ == "__main__":
    main()
