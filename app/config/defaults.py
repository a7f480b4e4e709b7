"""Fill a job spec's open fields from what the job faces: how many labels the oracle
exposes, how many classes the task has, how much data and how large a budget.

Each choice is written down in plain words so ``reprogram train`` and ``GET /v1/jobs/{id}``
can say what was chosen and why. The numbers come from the measurements in BENCHMARKS.md.

These are the only defaults of a job: the engine's ``TrainerConfig`` has none of its own
(a second set there drifted from these), so what a job runs is what ``resolve`` chose.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.config.spec import JobSpec
from engine.mapping import labels_per_class

BUDGET_DECIDES = 1_000_000  # "as many iterations as the budget allows"

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
    n_train: int
    provider: str


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
    choose(
        s.mapping,
        "labels_per_class",
        labels_per_class(k, c, wanted=10),
        f"{k} labels shared disjointly by {c} classes (at most 10 each)",
    )

    o = s.optimizer
    paper = o.estimator == "bar"
    choose(o, "estimator", "spsa", "fewest queries per accuracy point in BENCHMARKS.md")
    if paper:
        for name in ("q", "beta", "lr", "optimizer", "lr_decay", "batch_size"):
            choose(o, name, PAPER[name], "the paper's setting for BAR")
        choose(s.program, "basis", "pixel", "the paper's full-resolution program")
    else:
        choose(o, "q", 10, "directions per iteration")
        choose(o, "beta", 0.01 if o.estimator == "spsa" else 0.005, "smoothing radius")
        choose(o, "lr", 1e-2, "Adam step")
        choose(o, "optimizer", "adam", "adaptive steps suit noisy estimates (ZO-AdaMM)")
        choose(o, "lr_decay", 1.0, "no decay with Adam")
        choose(o, "batch_size", 10, "minibatch per iteration")
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
    if s.budget.max_queries is None and s.budget.max_cost_usd is None:
        choose(o, "iterations", 500, "default length (no budget given)")
    elif o.iterations is None:
        o.iterations = BUDGET_DECIDES  # the runner fits the length to the budget and says so
    choose(
        o,
        "eval_every",
        max(1, min(50, (o.iterations or 500) // 5 or 1)),
        "validate every 50 iterations (5 times over a shorter run) and at the end, keeping "
        "the best program",
    )
    return s, notes
