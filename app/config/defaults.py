"""Fill a job spec's open fields from what the job faces: how many labels the oracle
exposes, how many classes the task has, how much data and how large a budget.

Each choice is written down in plain words so ``reprogram train`` and ``GET /v1/jobs/{id}``
can say what was chosen and why. The numbers come from the measurements in BENCHMARKS.md.

These are the only defaults of a job: the engine's ``TrainerConfig`` has none of its own
(a second set there drifted from these), so what a job runs is what ``resolve`` chose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from app.config.spec import JobSpec, OptimizerSpec
from engine.mapping import labels_per_class

BUDGET_DECIDES = 1_000_000  # "as many iterations as the budget allows"
# A program replaces the linear probe only if a one-sided sign test on the validation images
# the two classify differently gives p ≤ this (docs/algorithm.md, "Validation").
SELECTION_P = 0.05
# Evaluation points without a better program before a job stops. 10 on cross-fitted jobs
# since 2026-12-04: on the user benchmark's 108 jobs (9 pairs x 3 seeds x 5k/15k/20k/60k) it
# was never below the probe and raised the mean margin at 15k-60k by 0.5-0.9 points over 5,
# at 21-94 % more queries. 5 on every other job (its own val/, a hold-out, or
# cross_validation): on held-out images 10 changed no result in 25 jobs and cost a third more
# queries; cross_validation was not measured, so it keeps the old default
# (BENCHMARKS.md §8, "Patience 10 becomes the default").
PATIENCE = 10
PATIENCE_HELD_OUT = 5
# Programs are tested at the sign test's level for the first FREE_LOOKS evaluation points
# only; after them the level is spent (engine TrainerConfig.free_looks), so that a longer
# patience does not buy more lucky passes: with patience 10 and the level unspent a wine3
# job returned a program 12.1 points below its probe (BENCHMARKS.md §8).
FREE_LOOKS = 5
# Step sizes raced against the default Adam step on cross-fitted programs (engine.cross_fit):
# none until the race is measured to keep the worst case and raise the mean (BENCHMARKS.md §8).
LR_RACE: list[float] = []
# Fixed views of every image the learned read-out sees beside the programmed frame
# (engine.trainer, TrainerConfig.views), by default on cross-fitted jobs whose oracle
# exposes at least VIEWS_MIN_LABELS labels: there the full view, chosen by out-of-fold
# probabilities, never fell below the probe on the user benchmark and raised the mean margin
# (BENCHMARKS.md §8); on a few-concept oracle it fell 7.6 points below it (scenes5).
VIEWS: list[str] = ["full"]
VIEWS_MIN_LABELS = 100

#: The optimizer fields whose defaults depend on the estimator (``estimator_settings``).
ESTIMATOR_FIELDS = ("q", "beta", "lr", "optimizer", "lr_decay", "batch_size")

# The paper's settings (Tsai et al. 2020, §4): used whenever the estimator is "bar".
PAPER = {
    "q": 25,
    "beta": 0.01,
    "lr": 0.05,
    "optimizer": "sgd",
    "lr_decay": 0.995,
    "batch_size": 10,
    "basis": "pixel",
}


@dataclass(frozen=True)
class Facts:
    n_labels: int
    n_classes: int
    n_train: int  # training images, before any are held out for validation
    provider: str
    n_val: int = 0  # validation images the data set (or its split) already has
    own_val: bool = True  # those are the data set's own (its val/), not drawn by our split
    train_per_class: tuple[int, ...] = field(default=())
    capped: bool = False  # whether the budget caps the queries (not: price 0, cost cap only)


def holdout_count(n: int, fraction: float) -> int:
    """Validation images held out of a class of ``n`` training images (n ≥ 2): the fraction,
    at least one, never the last training image."""
    return min(n - 1, max(1, round(fraction * n)))


def candidates_per_iteration(estimator: str, q: int) -> int:
    """Programs one iteration sends per image (engine.estimators: two-sided 2q, bar q + 1,
    white box 1; engine.search: CMA-ES its population q)."""
    return {"spsa": 2 * q, "antithetic": 2 * q, "bar": q + 1, "cma": q}.get(estimator, 1)


def estimator_settings(estimator: str | None) -> list[tuple[str, object, str]]:
    """(field, value, why) for the optimizer fields the estimator's defaults fill."""
    if estimator == "bar":
        return [(n, PAPER[n], "the paper's setting for BAR") for n in ESTIMATOR_FIELDS]
    if estimator == "cma":
        # The population sends as many candidates per iteration as the SPSA default's 2q, and
        # is about CMA-ES's own default for d = 192 (4 + 3 ln d = 19.8).
        unused = "not used: CMA-ES moves θ to the mean of its best candidates"
        return [
            ("q", 20, "CMA-ES's population: as many candidates as the default's 2q"),
            ("beta", 0.3, "CMA-ES's initial step size σ on the coefficients, before tanh"),
            ("lr", 1e-2, unused),
            ("optimizer", "adam", unused),
            ("lr_decay", 1.0, unused),
            ("batch_size", 10, "minibatch per iteration, every candidate on the same one"),
        ]
    return [
        ("q", 10, "directions per iteration"),
        ("beta", 0.01 if estimator == "spsa" else 0.005, "smoothing radius"),
        ("lr", 1e-2, "Adam step"),
        ("optimizer", "adam", "adaptive steps suit noisy estimates (ZO-AdaMM)"),
        ("lr_decay", 1.0, "no decay with Adam"),
        ("batch_size", 10, "minibatch per iteration"),
    ]


#: The frames one training iteration holds at once (candidates × minibatch, float32 RGB at
#: the frame's size) may take at most this much memory: the default takes 39 MB (20 × 10
#: frames of 128²); q = 1,000 with a minibatch of 1,024 would want hundreds of GB and kill
#: the worker, so such a spec is refused when it is submitted.
MAX_ITERATION_BYTES = 512 * 2**20


def check_iteration_size(s: JobSpec, n_train: int) -> None:
    """Refuse a spec whose training iteration could not be held in memory."""
    o, side = s.optimizer, s.program.input_size or 128
    images = min(o.batch_size or 10, max(1, n_train))
    frames = images * candidates_per_iteration(o.estimator or "", o.q or 1)
    need = frames * side * side * 3 * 4
    if need > MAX_ITERATION_BYTES:
        raise ValueError(
            f"optimizer.q: one training iteration would hold {frames:,} frames of "
            f"{side}×{side} ({need / 2**20:,.0f} MiB: the candidates of q = {o.q} on "
            f"{images} images), above the {MAX_ITERATION_BYTES // 2**20} MiB limit; lower "
            "optimizer.q or optimizer.batch_size"
        )


def check_cma(o: OptimizerSpec) -> None:
    """Refuse what CMA-ES cannot run: a population too small to rank, a step-size race."""
    if o.estimator != "cma":
        return
    if (o.q or 0) < 2:
        raise ValueError("optimizer.q: CMA-ES's population must be at least 2 to rank")
    if o.lr_race:
        raise ValueError(
            "optimizer.lr_race: it races the gradient step's size, and CMA-ES takes no "
            "gradient step (its step size adapts itself)"
        )


def step_size_race(spec: JobSpec, s: JobSpec, paper: bool) -> tuple[list[float], str]:
    """The step sizes raced against ``optimizer.lr`` (engine.cross_fit), and why: the
    default's, on cross-fitted programs with the step size left open."""
    if spec.optimizer.lr is not None:
        return [], "one step size: optimizer.lr was given"
    if paper or s.data.validation != "cross_fit":
        return [], "one step size: the race is run on cross-fitted programs only"
    if s.optimizer.estimator == "cma":
        return [], "no race: CMA-ES takes no gradient step"
    if not LR_RACE:
        return [], "one step size"
    return list(LR_RACE), (
        f"the step sizes {[s.optimizer.lr, *LR_RACE]} each train their own cross-fitted "
        "programs for the first third of the run; then the one whose programs validated "
        "best goes on"
    )


def readout_views(s: JobSpec, n_labels: int) -> tuple[list[str], str]:
    """The fixed views of every image the learned read-out sees beside the programmed frame,
    and why (``s``: mapping.method and data.validation already chosen)."""
    if s.mapping.method != "learned":
        return [], "the views feed the learned read-out only"
    alone = "the programmed frame alone: a prediction costs 1 query per image"
    if not VIEWS:
        return [], alone
    if s.data.validation != "cross_fit":
        return [], f"{alone} (the full view is measured on cross-fitted programs only)"
    if n_labels < VIEWS_MIN_LABELS:
        return [], (
            f"{alone} (an oracle of {n_labels} labels, under {VIEWS_MIN_LABELS}: the full "
            "view was measured to help on 1,000-label oracles, and fell below the linear "
            "probe on a 5-concept one, BENCHMARKS.md §8)"
        )
    return list(VIEWS), (
        f"the read-out may also see the {' and '.join(VIEWS)} view of every image (one more "
        "query per image for each, once in training and at every prediction); the returned "
        "read-out uses them only if it beats the linear probe's single view on validation"
    )


def resolve(spec: JobSpec, facts: Facts) -> tuple[JobSpec, list[str]]:
    """A copy of ``spec`` with every open field chosen, and one line per choice made."""
    s = spec.model_copy(deep=True)
    notes: list[str] = []

    def choose(section: object, name: str, value: object, why: str) -> None:
        if getattr(section, name) is None:
            setattr(section, name, value)
            notes.append(
                f"{type(section).__name__.removesuffix('Spec').lower()}.{name} = {value!r}: {why}"
            )

    k, c = facts.n_labels, facts.n_classes
    # Measured (BENCHMARKS.md): on the blank program a read-out of log-probabilities beats
    # the frequency mapping even through 5 concepts (MNIST 0-4: 51 % vs 20 %) and 2 concepts,
    # so it is the default whenever the oracle exposes more than one label.
    choose(
        s.mapping,
        "method",
        "learned" if k >= 2 else "frequency",
        f"the oracle exposes {k} labels for {c} classes; a linear read-out fitted on our "
        "side starts from the linear probe",
    )
    if s.mapping.method != "learned" and k < c:
        raise ValueError(
            f"mapping.method: a many-to-one mapping needs at least as many oracle labels as "
            f"classes ({k} labels, {c} classes); use 'learned'"
        )
    if s.mapping.views and s.mapping.method != "learned":
        raise ValueError(
            "mapping.views: the views feed the learned read-out; use mapping.method "
            f"'learned', not {s.mapping.method!r}"
        )
    choose(
        s.mapping,
        "labels_per_class",
        labels_per_class(k, c, wanted=10),
        f"{k} labels shared disjointly by {c} classes (at most 10 each)",
    )

    o = s.optimizer
    paper = o.estimator == "bar"
    choose(o, "estimator", "spsa", "fewest queries per accuracy point in BENCHMARKS.md")
    for name, value, why in estimator_settings(o.estimator):
        choose(o, name, value, why)
    if paper:
        choose(s.program, "basis", "pixel", "the paper's full-resolution program")
    choose(s.program, "basis", "bilinear", "a low-resolution program needs far fewer queries")
    choose(s.program, "input_size", 128, "the frame size the oracle sees")
    choose(
        s.program,
        "target_size",
        max(4, (s.program.input_size or 128) * 3 // 8),
        "the target image covers 3/8 of the frame",
    )
    if s.program.basis == "pixel":
        s.program.resolution = s.program.input_size
    choose(
        s.program,
        "resolution",
        8,
        "an 8×8 program per channel, upsampled: on MNIST/ImageNet it gained 5 points over "
        "the probe at 20k queries where 16×16 gained none and 4×4 gained 2.6",
    )
    if not facts.capped:
        choose(
            o,
            "iterations",
            500,
            "default length (no budget given)"
            if s.budget.max_cost_usd is None
            else "default length: budget.max_cost_usd does not limit this oracle, whose "
            "images cost nothing (give budget.max_queries to set a ceiling)",
        )
    elif o.iterations is None:
        o.iterations = BUDGET_DECIDES  # the runner fits the length to the budget and says so

    d, learned = s.data, s.mapping.method == "learned"
    if d.validation in ("cross_validation", "cross_fit") and not learned:
        raise ValueError(
            f"data.validation: {d.validation} scores programs through the learned read-out; "
            "use 'holdout' or mapping.method 'learned'"
        )
    # Measured on the user benchmark (BENCHMARKS.md §8, 54 jobs on 9 task/oracle pairs, 5–20
    # images per class without val/), by the worst case first: cross-fitted programs never
    # fell below the probe (nor did holding out a fifth; holding out half fell 1.2–3.6 points
    # below it) and gained +4.0 points on average against +0.4 — +0.8 against +0.6 on the
    # six tuning pairs, so most of the gain is on pairs held out of tuning (faces2/nsfw).
    # A data set's own val/ is the user's choice of what to validate on, and is kept.
    cross_fit = learned and (facts.n_val == 0 or not facts.own_val)
    choose(
        d,
        "validation",
        "cross_fit" if cross_fit else "holdout",
        "the data set has no validation images of its own: two programs are trained, each on "
        "one stratified half of the labelled images and validated on the other, so every "
        "labelled image scores a program that never trained on it (on the user benchmark, "
        "BENCHMARKS.md §8, never below the probe in 54 jobs and +4.0 points on average, where "
        "holding out a fifth of the images gained +0.4)"
        if cross_fit
        else "programs are scored on the data set's own validation images"
        if facts.n_val and facts.own_val
        else "programs are scored on a stratified share of the labelled images held out to "
        "validate on (the frequency mapping cannot be cross-fitted)",
    )
    check_cma(o)
    check_iteration_size(s, facts.n_train + facts.n_val)
    if o.lr_race and d.validation != "cross_fit":
        raise ValueError(
            "optimizer.lr_race: it races cross-fitted programs, so it needs data.validation "
            f"'cross_fit', not {d.validation!r}"
        )
    race, why = step_size_race(spec, s, paper)
    choose(o, "lr_race", race, why)
    views, why = readout_views(s, k)
    choose(s.mapping, "views", views, why)
    n_val, n_train = facts.n_val, facts.n_train
    if d.validation in ("cross_validation", "cross_fit"):
        # cross_fit: each of its two programs refits on its half and validates on the
        # other, so an evaluation costs every labelled image per program, like this.
        n_val, n_train = 0, facts.n_train + facts.n_val
    elif not n_val and d.val_fraction > 0:
        n_val = sum(holdout_count(n, d.val_fraction) for n in facts.train_per_class if n >= 2)
        n_train -= n_val
    # An evaluation point sends the validation set and (learned read-out) the training set
    # once: spaced so that evaluation costs about a tenth of training, every 5 to 50
    # iterations, at least 5 times over a shorter run.
    per_iteration = (o.batch_size or 10) * candidates_per_iteration(o.estimator or "", o.q or 1)
    cost = n_val + (n_train if learned else 0)
    spacing = min(50, max(5, math.ceil(10 * cost / per_iteration)))
    every = max(1, min(spacing, (o.iterations or 500) // 5))
    whose = ", each of the two half-programs" if d.validation == "cross_fit" else ""
    choose(
        o,
        "eval_every",
        every,
        f"validate every {every} iterations and at the end (an evaluation point costs "
        f"{cost} queries, an iteration {per_iteration}{whose}). The job returns the best "
        "program on "
        "validation among the blank program with the linear probe and every validated "
        "program; a program replaces the probe "
        f"only if a sign test on the validation images they classify differently gives "
        f"p ≤ {SELECTION_P:g}",
    )
    explicit = spec.optimizer.iterations is not None
    patience = PATIENCE if d.validation == "cross_fit" else PATIENCE_HELD_OUT
    choose(
        o,
        "patience",
        0 if explicit else patience,
        "optimizer.iterations was given, so all of them run (set optimizer.patience to stop early)"
        if explicit
        else f"stop after {patience} evaluation points without a better program, or as soon "
        "as the rest of the budget cannot change which program is returned; a budget is a "
        "ceiling, and what is not spent is reported",
    )
    if (o.patience or 0) > FREE_LOOKS:
        notes.append(
            f"selection: optimizer.patience {o.patience} gives programs more than "
            f"{FREE_LOOKS} evaluation points; after the first {FREE_LOOKS}, the n-th tests at "
            f"p ≤ {SELECTION_P:g} × {FREE_LOOKS}/n, so that the extra looks do not let a lucky "
            'program pass (BENCHMARKS.md §8, "Twice the patience")'
        )
    return s, notes
