"""Run a whole job in this process, without the server: what ``reprogram train``,
``reprogram demo`` and the benchmarks use. The service's worker runs the same
``app.jobs.runner`` functions with a database ledger and checkpoints instead.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from adapters.errors import QuotaExhausted, span
from app.config.settings import Settings
from app.config.spec import JobSpec
from app.data.loading import Dataset
from app.jobs import runner
from app.jobs.accounting import MemoryLedger, query_cap
from app.jobs.oracles import SecretResolver, open_oracle, secret_from_env
from engine.trainer import Event, Trainer

log = logging.getLogger("reprogram.local")
T = TypeVar("T")


@dataclass
class LocalRun:
    result: dict[str, Any]
    rows: list[dict[str, Any]]
    arrays: dict[str, np.ndarray] | None = field(repr=False)


ProgressFn = Callable[[runner.PreparedJob, dict[str, Any]], None]


class _Hooks:
    """Collects one metrics row per event, with the ledger's running totals."""

    def __init__(
        self,
        job: runner.PreparedJob,
        ledger: MemoryLedger,
        on_row: ProgressFn | None,
        should_stop: Callable[[], bool],
    ) -> None:
        self.job, self.ledger, self.on_row, self.should_stop = job, ledger, on_row, should_stop
        self.rows: list[dict[str, Any]] = []
        self.metrics = runner.MetricRows()
        # Where a wait for the oracle's quota resumes. A local model has no quota, and its
        # runs (the benchmarks') need not pay for a state copy at every tell.
        self.keeps_checkpoint = job.spec.oracle.kind != "torch"
        self.checkpoint = job.trainer.state_bytes() if self.keeps_checkpoint else None

    def after_tell(self, trainer: Trainer, event: Event | None) -> None:
        if self.keeps_checkpoint:
            self.checkpoint = trainer.state_bytes()
        if event is None:
            return
        totals = self.ledger.totals
        row = self.metrics.row(
            event, queries=totals.queries, requests=totals.requests, cost_usd=totals.cost_usd
        )
        self.rows.append(row)
        if self.on_row is not None:
            self.on_row(self.job, row)

    def cancelled(self) -> bool:
        return self.should_stop()


def run_local(
    spec: JobSpec,
    dataset: Dataset,
    *,
    settings: Settings | None = None,
    secret: SecretResolver = secret_from_env,
    on_row: ProgressFn | None = None,
    on_prepared: Callable[[runner.PreparedJob], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], None] = time.sleep,
) -> LocalRun:
    """Run ``spec`` on ``dataset`` to the end. Configuration problems raise before any
    query is spent (ConfigurationError, DataError, PlanError); a failure mid-run ends in a
    result with status ``failed`` / ``budget_exhausted`` / ``cancelled`` and its best program."""
    settings = settings or Settings()
    start = time.monotonic()
    price = settings.price(spec.oracle.kind)
    ledger = MemoryLedger(price, spec.budget.max_queries, spec.budget.max_cost_usd)
    size = runner.input_size_of(spec)
    with contextlib.ExitStack() as stack:
        # Opening a cloud oracle may ask for its concepts, and finding the labels may ask
        # for an answer: the quota can run out there too. (Preparing sends nothing.)
        oracle, dispatcher = _waiting_for_quota(
            lambda: stack.enter_context(
                # No egress policy: the user's own key, on the user's own machine, anywhere.
                open_oracle(
                    spec.oracle,
                    input_size=size,
                    settings=settings,
                    ledger=ledger,
                    secret=secret,
                    egress=None,
                )
            ),
            settings,
            sleep,
        )
        _waiting_for_quota(
            lambda: runner.discover_labels(oracle, dispatcher, size), settings, sleep
        )
        cap = query_cap(spec.budget.max_queries, spec.budget.max_cost_usd, price)
        job = runner.prepare(spec, dataset, oracle, query_cap=cap, spent=ledger.totals.queries)
        if on_prepared is not None:
            on_prepared(job)
        hooks = _Hooks(job, ledger, on_row, should_stop)
        error = _run_waiting_for_quota(job, dispatcher, hooks, settings, sleep)
        job.cache_hits = dict(dispatcher.cache_hits)
    status = runner.final_status(job, error)
    result = runner.summarize(job, ledger.totals.as_dict(), status, time.monotonic() - start)
    if status == "failed":
        result["error"] = runner.error_message(error)
    return LocalRun(result, hooks.rows, runner.program_of(job))


def _waiting_for_quota(
    step: Callable[[], T], settings: Settings, sleep: Callable[[float], None]
) -> T:
    """``step()``, tried again after a wait when the oracle's quota is used up, up to
    ``max_quota_waits`` times."""
    waits = 0
    while True:
        try:
            return step()
        except QuotaExhausted as err:
            wait = runner.quota_wait(err, settings)
            if isinstance(wait, QuotaExhausted):
                raise wait from err
            if waits == settings.max_quota_waits:
                raise runner.quota_gave_up(err, waits, wait) from err
            waits += 1
            log.warning("%s; waiting %s for it to renew", err, span(wait))
            sleep(wait)


def _run_waiting_for_quota(
    job: runner.PreparedJob,
    dispatcher: Any,
    hooks: _Hooks,
    settings: Settings,
    sleep: Callable[[float], None],
) -> BaseException | None:
    """``run_to_end``; when the oracle's quota for the period is used up, sleep until it
    renews (``runner.quota_wait``) and go on from the last tell (as the service's worker
    goes on from its checkpoint), up to ``max_quota_waits`` times in a row without progress."""
    waits = 0
    while True:
        told = job.trainer.told
        error = runner.run_to_end(job.trainer, dispatcher, hooks)
        if not isinstance(error, QuotaExhausted) or hooks.checkpoint is None:
            return error
        wait = runner.quota_wait(error, settings)
        if isinstance(wait, QuotaExhausted):
            return wait
        waits = 1 if job.trainer.told > told else waits + 1
        if waits > settings.max_quota_waits:
            return runner.quota_gave_up(error, settings.max_quota_waits, wait)
        log.warning("%s; waiting %s for it to renew", error, span(wait))
        sleep(wait)
        job.trainer.load_state(hooks.checkpoint)
