"""Run one job: the single place where the engine, an oracle and the accounting meet.

``prepare`` turns (spec, data set, oracle) into a trainer with the budget planned in;
``run`` drives the ask/tell loop through the dispatcher, calling the caller's hooks after
every ``tell`` (the CLI writes metrics; the worker checkpoints in the same transaction);
``summarize`` builds the result every front end reports.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from adapters.base import Oracle
from adapters.dispatch import Dispatcher
from adapters.errors import (
    BudgetExceeded,
    ConfigurationError,
    OracleError,
    QuotaExhausted,
    span,
)
from app.config.defaults import FREE_LOOKS, SELECTION_P, Facts, resolve
from app.config.settings import Settings
from app.config.spec import JobSpec
from app.data.loading import DataError, Dataset, split_indices, to_full, to_target
from app.jobs.artifacts import program_arrays
from app.jobs.validation import Validation, apply_validation
from engine.cross_fit import CrossFitTrainer
from engine.program import Program
from engine.trainer import Event, Split, Trainer, TrainerConfig

DEFAULT_INPUT_SIZE = 128


class Cancelled(Exception):
    """The job was cancelled."""


class PlanError(ValueError):
    """The job cannot run within its budget."""


class _DefaultViewTooDear(PlanError):
    """The budget cannot pay for a view the defaults chose, so it may pay without it."""


@dataclass
class PreparedJob:
    spec: JobSpec  # resolved: every field chosen
    notes: list[str]
    trainer: Trainer
    classes: list[str]
    source_labels: tuple[str, ...]
    sizes: dict[str, int]
    budget_limited: bool = False
    validation: Validation | None = None
    query_cap: int | None = None  # the budget's ceiling, None: unlimited
    cache_hits: dict[str, int] | None = None  # answers the dispatcher had already paid for


def input_size_of(spec: JobSpec) -> int:
    return spec.program.input_size or DEFAULT_INPUT_SIZE


def trainer_config(spec: JobSpec) -> TrainerConfig:
    o, m, lo = spec.optimizer, spec.mapping, spec.loss
    return TrainerConfig(
        estimator=o.estimator,
        q=o.q,
        beta=o.beta,
        scale=o.scale,
        optimizer=o.optimizer,
        lr=o.lr,
        lr_decay=o.lr_decay,
        clip=o.clip,
        batch_size=o.batch_size,
        iterations=o.iterations,
        eval_every=o.eval_every,
        loss=lo.kind,
        gamma=lo.gamma,
        class_balance=lo.class_balance,
        mapping=m.method,
        labels_per_class=m.labels_per_class,
        remap_every=m.remap_every,
        baselines=spec.data.baselines,
        validation=spec.data.validation,
        patience=o.patience,
        selection_p=SELECTION_P,
        free_looks=FREE_LOOKS if (o.patience or 0) > FREE_LOOKS else 0,
        lr_race=tuple(o.lr_race or ()),
        views=tuple(m.views or ()),
    )  # type: ignore[arg-type]


@dataclass
class Plan:
    """What a job will do, before any image is resized: the resolved spec, the split and
    the program."""

    spec: JobSpec
    notes: list[str]
    parts: dict[str, np.ndarray]
    program: Program
    validation: Validation


def plan(
    spec: JobSpec, dataset: Dataset, *, n_labels: int, provider: str, capped: bool = False
) -> Plan:
    """Split the data, resolve the spec for an oracle of ``n_labels`` labels and decide the
    validation (``app.jobs.validation``; DataError when the data is too small to validate).
    ``capped``: the budget caps the queries. Reads the data set's labels only
    (``app.data.store.stored_labels`` is enough)."""
    parts = split_indices(
        dataset,
        spec.seed,
        spec.data.val_fraction,
        spec.data.test_fraction,
        spec.data.max_train,
        spec.data.max_test,
    )
    n_classes = len(dataset.classes)
    facts = Facts(
        n_labels=n_labels,
        n_classes=n_classes,
        n_train=len(parts["train"]),
        provider=provider,
        n_val=len(parts["val"]),
        own_val=dataset.split is not None,
        train_per_class=tuple(np.bincount(dataset.y[parts["train"]], minlength=n_classes)),
        capped=capped,
    )
    try:
        resolved, notes = resolve(spec, facts)
    except ValueError as err:
        raise PlanError(str(err)) from err
    assert resolved.data.validation is not None
    parts, validation = apply_validation(
        parts,
        dataset.y,
        list(dataset.classes),
        resolved.data.validation,
        fraction=resolved.data.val_fraction,
        seed=resolved.seed,
        own_val=dataset.split is not None,
    )
    notes.append(validation.sentence(len(parts["train"]), resolved.data.val_fraction))
    p = resolved.program
    assert p.input_size and p.target_size and p.basis
    program = Program(
        p.input_size, p.target_size, p.basis, None if p.basis == "pixel" else p.resolution
    )
    return Plan(resolved, notes, parts, program, validation)


def _trainer(the_plan: Plan, dataset: Dataset, n_labels: int, split: Any) -> Trainer:
    cross_fit = the_plan.spec.data.validation == "cross_fit"
    return (CrossFitTrainer if cross_fit else Trainer)(
        trainer_config(the_plan.spec),
        the_plan.program,
        len(dataset.classes),
        n_labels,
        split("train"),
        split("val"),
        split("test"),
        seed=the_plan.spec.seed,
    )


def minimum_queries(spec: JobSpec, dataset: Dataset, *, n_labels: int, provider: str) -> int:
    """The fewest queries the job can run on under a budget: its plan with no training
    iteration (the mapping's or baselines' pass and the test), below which ``prepare``
    raises PlanError. The same trainer computes it, over images that are never looked at
    (zeros, no memory). A view the defaults would choose is not counted: it gives way to a
    budget too small for it (``prepare``)."""
    if spec.mapping.views is None:
        spec = spec.model_copy(deep=True)
        spec.mapping.views = []
    the_plan = plan(spec, dataset, n_labels=n_labels, provider=provider, capped=True)
    t, s = the_plan.program.target_size, the_plan.program.input_size
    views = bool(the_plan.spec.mapping.views)

    def split(name: str) -> Split:
        idx = the_plan.parts[name]
        return Split(
            np.broadcast_to(np.zeros((1, t, t, 3), np.float32), (len(idx), t, t, 3)),
            dataset.y[idx],
            full=np.broadcast_to(np.zeros((1, s, s, 3), np.uint8), (len(idx), s, s, 3))
            if views
            else None,
        )

    try:
        trainer = _trainer(the_plan, dataset, n_labels, split)
    except ValueError as err:
        raise PlanError(str(err)) from err
    return sum(trainer.planned_queries(0).values())


def prepare(
    spec: JobSpec, dataset: Dataset, oracle: Oracle, *, query_cap: int | None, spent: int = 0
) -> PreparedJob:
    """Resolve the spec, split and resize the data, build the trainer, fit the plan into
    ``query_cap`` images (minus ``spent``). Raises PlanError when the budget is too small.

    A view the defaults chose (``mapping.views`` left open) gives way to a budget too small
    for it: a cloud model's label count is learned from its first answer, so the minimum
    checked when the job was submitted could not count the full view the defaults choose
    for a model of many labels (``app.config.defaults.readout_views``)."""
    try:
        return _prepare(spec, dataset, oracle, query_cap=query_cap, spent=spent)
    except _DefaultViewTooDear:
        pass  # a budget too small for any other reason is refused as it is, not retried
    without = spec.model_copy(deep=True)
    without.mapping.views = []
    job = _prepare(without, dataset, oracle, query_cap=query_cap, spent=spent)
    job.notes.append(
        f"mapping.views = []: the budget of {query_cap} queries does not cover the full "
        "view's queries as well, so the read-out sees the programmed frame alone"
    )
    return job


def _prepare(
    spec: JobSpec, dataset: Dataset, oracle: Oracle, *, query_cap: int | None, spent: int
) -> PreparedJob:
    the_plan = plan(
        spec,
        dataset,
        n_labels=len(oracle.labels),
        provider=oracle.provider,
        capped=query_cap is not None,
    )
    resolved, notes, parts = the_plan.spec, the_plan.notes, the_plan.parts
    target_size, input_size = the_plan.program.target_size, the_plan.program.input_size
    views = bool(resolved.mapping.views)

    def split(name: str) -> Split:
        idx = parts[name]
        return Split(
            to_target(dataset.images, target_size, idx),
            dataset.y[idx],
            # from the originals: the full view is the image itself at the frame's size
            full=to_full(dataset.images, input_size, idx) if views else None,
        )

    trainer = _trainer(the_plan, dataset, len(oracle.labels), split)
    limited = False
    if query_cap is not None:
        try:
            fitted = trainer.fit_iterations(query_cap - spent)
        except ValueError as err:
            dear = views and spec.mapping.views is None
            raise (_DefaultViewTooDear if dear else PlanError)(str(err)) from err
        if fitted < trainer.config.iterations:
            asked = spec.optimizer.iterations is not None  # the user's own number
            notes.append(
                f"optimizer.iterations = {fitted}: "
                + (
                    f"the budget of {query_cap} queries covers {fitted} of the "
                    f"{trainer.config.iterations} asked for"
                    if asked
                    else f"as many as the budget of {query_cap} queries allows"
                )
                + ", after mapping and evaluation"
            )
            trainer.set_iterations(fitted)
            resolved.optimizer.iterations = fitted
            limited = asked
    sizes = {k: len(v) for k, v in parts.items()}
    return PreparedJob(
        resolved,
        notes,
        trainer,
        list(dataset.classes),
        oracle.labels,
        sizes,
        limited,
        validation=the_plan.validation,
        query_cap=query_cap,
    )


class MetricRows:
    """Builds the metrics row of each event: the spend so far, the event's values, and on
    iteration rows the latest validation accuracy (so every row can be plotted alone)."""

    def __init__(self) -> None:
        self.last_val: float | None = None

    def row(self, event: Event, *, queries: int, requests: int, cost_usd: float) -> dict:
        if "val_acc" in event.values:
            self.last_val = event.values["val_acc"]
        row = {
            "kind": event.kind,
            "iteration": event.iteration,
            "queries": queries,
            "requests": requests,
            "cost_usd": round(cost_usd, 6),
            **{k: round(v, 6) for k, v in event.values.items()},
        }
        if event.kind == "iteration":
            row["val_acc"] = self.last_val
        if event.half is not None:
            row["half"] = event.half
        if event.lr is not None:
            row["lr"] = event.lr
        return row


class RunHooks(Protocol):
    def after_tell(self, trainer: Trainer, event: Event | None) -> None:
        """Called after every tell: record metrics, checkpoint."""

    def cancelled(self) -> bool: ...


def run(trainer: Trainer, dispatcher: Dispatcher, hooks: RunHooks) -> None:
    """Drive the trainer to the end. Raises Cancelled, BudgetExceeded or oracle errors; the
    trainer's state after the last completed tell is always consistent."""
    while not trainer.done:
        if hooks.cancelled():
            raise Cancelled()
        ask = trainer.ask()
        if ask.loss_grad is not None:
            probs, grad = dispatcher.query_with_gradient(ask.frames, ask.loss_grad, ask.purpose)
            event = trainer.tell(probs, input_grad=grad)
        else:
            event = trainer.tell(dispatcher.query(ask.frames, ask.purpose))
        hooks.after_tell(trainer, event)


#: Errors that end a run as a status (cancelled, budget_exhausted, failed) with the best
#: program so far, rather than as a crash.
RUN_ERRORS = (Cancelled, BudgetExceeded, OracleError)
#: Errors of a job that cannot start as specified (raised before any training query).
CONFIGURATION_ERRORS = (ConfigurationError, DataError, PlanError, ValueError)


def run_to_end(trainer: Trainer, dispatcher: Dispatcher, hooks: RunHooks) -> BaseException | None:
    """``run``, with the errors that end a run normally returned instead of raised."""
    try:
        run(trainer, dispatcher, hooks)
    except RUN_ERRORS as err:
        return err
    return None


def quota_wait(error: QuotaExhausted, settings: Settings) -> float | QuotaExhausted:
    """How long a job waits for its oracle's quota to renew: until the provider said it
    renews (a second more, so that it has), else ``quota_wait_seconds``. When the provider
    said it renews later than the job would wait in all (``quota_wait_seconds`` ×
    ``max_quota_waits``), the error to fail with at once instead: waiting days for a month's
    quota helps nobody, failing does."""
    if error.renews_in is None:
        return settings.quota_wait_seconds
    longest = settings.quota_wait_seconds * settings.max_quota_waits
    if error.renews_in > longest:
        return QuotaExhausted(
            f"{error}: later than a job waits for its oracle's quota ({span(longest)}, "
            "quota_wait_seconds × max_quota_waits)",
            provider=error.provider,
            renews_in=error.renews_in,
        )
    return error.renews_in + 1.0


def quota_gave_up(error: QuotaExhausted, waits: int, seconds: float) -> QuotaExhausted:
    """The error a job ends with when its oracle's quota did not come back in time
    (``waits`` waits, the last of ``seconds``)."""
    return QuotaExhausted(
        f"{error}: still used up after {waits} waits of {seconds:g} s without progress",
        provider=error.provider,
    )


def error_message(error: BaseException | None) -> str | None:
    """How a job's error is reported to its owner (result.json, GET /v1/jobs/{id})."""
    return None if error is None else f"{type(error).__name__}: {error}"


def program_of(job: PreparedJob) -> dict[str, np.ndarray] | None:
    """The contract's program arrays of the best program, or None when the job ended before
    it had one (a failure before the mapping)."""
    if job.trainer.best_program()[1] is None:
        return None
    spec_json = json.dumps(job.spec.model_dump(mode="json"))
    return program_arrays(job.trainer, spec_json, job.classes, job.source_labels)


def discover_labels(oracle: Oracle, dispatcher: Dispatcher, input_size: int) -> None:
    """Providers without a label listing learn their labels from one answered image."""
    if not oracle.labels_known:
        dispatcher.query(np.zeros((1, input_size, input_size, 3), np.float32), "discovery")


def with_labels(spec: JobSpec, oracle: Oracle) -> JobSpec:
    """``spec`` naming the labels ``oracle`` learned from its first answer (Custom Vision
    cannot list a project's tags): the spec a job resumes from, so that a later execution
    knows them before any answer (a resumed one may take its first answers from those an
    earlier execution saved, which teach the adapter nothing) and in the same order."""
    oracle_spec = spec.oracle.model_copy(update={"labels": list(oracle.labels)})
    return spec.model_copy(update={"oracle": oracle_spec})


def summarize(
    job: PreparedJob, totals: dict[str, Any], status: str, seconds: float
) -> dict[str, Any]:
    """The result every front end reports (result.json, GET /v1/jobs/{id})."""
    t = job.trainer
    n_test = job.sizes["test"]
    y_test = t.test.y
    counts = np.bincount(y_test, minlength=len(job.classes)) if len(y_test) else np.zeros(1)
    blank_queries = job.sizes["train"] + job.sizes["val"] + n_test  # fitted on every label
    baselines: dict[str, dict[str, Any]] = {
        "chance": {"accuracy": 1.0 / len(job.classes), "queries": 0},
        "majority": {"accuracy": float(counts.max() / max(1, counts.sum())), "queries": 0},
    }
    if "baseline_frequency" in t.results:
        baselines["blank_program"] = {
            "accuracy": t.results["baseline_frequency"],
            "queries": blank_queries,
            "mapping": "frequency",
        }
    if "baseline_probe" in t.results:
        baselines["linear_probe"] = {
            "accuracy": t.results["baseline_probe"],
            "queries": blank_queries,
        }
    planned = t.planned_queries()
    discovery = int(totals["by_purpose"].get("discovery", {}).get("queries", 0))
    ceiling = job.query_cap if job.query_cap is not None else sum(planned.values()) + discovery
    unspent = max(0, ceiling - int(totals["queries"]))
    hits = job.cache_hits or {}
    breakdown = {k: dict(v) for k, v in totals["by_purpose"].items()}
    for purpose, n in hits.items():
        breakdown.setdefault(purpose, {"queries": 0, "requests": 0, "cost_usd": 0.0})
        breakdown[purpose]["cache_hits"] = n
    blank = not t.best.theta.any()
    returned = (
        "trained_program"
        if not blank
        else "linear_probe"
        if t.config.mapping == "learned"
        else "blank_program"
    )
    return {
        "status": status,
        "test_accuracy": t.results.get("test_accuracy"),
        "queries": totals["queries"],
        "requests": totals["requests"],
        "cost_usd": totals["cost_usd"],
        "breakdown": breakdown,
        "images_sent": totals.get("images_sent"),
        "cache_hits": sum(hits.values()),
        "baselines": baselines,
        "returned": returned,
        "best_iteration": t.best.iteration,
        "best_val_accuracy": t.best.val_acc if t.best.val_acc >= 0 else None,
        "validation": job.validation.as_dict() if job.validation is not None else None,
        "iterations": t.iteration,
        "stopped_early": t.stop_reason,
        "step_size_race": t.race_report(),
        "views": list(t.best_views()),
        "queries_per_prediction": 1 + len(t.best_views()),
        "unspent_queries": unspent,
        "planned_queries": planned,
        "sizes": job.sizes,
        "classes": job.classes,
        "n_source_labels": len(job.source_labels),
        "choices": job.notes + outcome_notes(job, returned, unspent),
        "spec": job.spec.model_dump(mode="json"),
        "seconds": round(seconds, 1),
    }


def outcome_notes(job: PreparedJob, returned: str, unspent: int) -> list[str]:
    """Plain sentences on how the job ended: stopped early (and what it did not spend), or
    the probe returned because no program beat it."""
    t, notes = job.trainer, []
    if t.stop_reason is not None:
        budget = (
            f"of the budget of {job.query_cap:,} queries"
            if job.query_cap is not None
            else "of the queries planned"
        )
        notes.append(
            f"Stopped early after iteration {t.iteration} of {t.config.iterations}: "
            f"{t.stop_reason}. {unspent:,} {budget} were not spent."
        )
    race = t.race_report()
    if race is not None and race["kept"] is not None:
        peaks = ", ".join(
            f"{lr:g}: {'–' if p is None else f'{100 * p:.1f} %'}"
            for lr, p in zip(race["step_sizes"], race["peak_val_accuracy"], strict=True)
        )
        notes.append(
            f"The step-size race kept lr {race['kept']:g}: the highest cross-fitted accuracy "
            f"each step size's programs reached, the others' up to the rung, the kept one's "
            f"through the job ({peaks})."
        )
    if job.spec.mapping.views and t.best_program()[1] is not None:
        notes.append(views_note(t))
    if returned == "linear_probe" and t.done and t.config.iterations:
        n = job.sizes["train"] + job.sizes["val"]
        # With the full view, the blank program's read-out beat the probe: it is not the probe.
        notes.append(
            "No program beat the blank program's read-out with the full view on validation, "
            "so the job returns it: a blank program (P = 0) with that read-out, fitted on all "
            f"{n} labelled images."
            if t.best_views()
            else "No program beat the linear probe on validation, so the job returns the "
            f"probe: a blank program (P = 0) with the probe's read-out, fitted on all {n} "
            "labelled images."
        )
    return notes


def views_note(t: Trainer) -> str:
    """Whether the returned read-out uses the views the job was configured with, and so
    what a prediction costs; claims a validation verdict only when there was one."""
    if t.best_views():
        return (
            "The read-out uses the full view of each image as well as the programmed frame: "
            f"a prediction costs {1 + len(t.best_views())} queries per image."
        )
    if t.best.val_acc >= 0 and t.config.validation == "cross_fit":
        return (
            "The full view did not beat the linear probe's single view: neither the blank "
            "program read with it (judged by cross-validation over all "
            f"{len(t.train.y)} labelled images) nor a program trained with it (judged on the "
            "other half's images) passed the sign test against the probe; the returned "
            "read-out does not use it (1 query per prediction)."
        )
    if t.best.val_acc >= 0:
        return (
            "The full view did not beat the linear probe's single view on validation; the "
            "returned read-out does not use it (1 query per prediction)."
        )
    return (
        "The job ended before a read-out with the full view was validated; the returned "
        "read-out does not use it (1 query per prediction)."
    )


def final_status(job: PreparedJob, error: BaseException | None) -> str:
    if isinstance(error, Cancelled):
        return "cancelled"
    # A job that stopped early did not run out of budget, whatever it had asked for.
    limited = job.budget_limited and job.trainer.stop_reason is None
    if isinstance(error, BudgetExceeded) or (error is None and limited):
        return "budget_exhausted"
    return "failed" if error is not None else "succeeded"
