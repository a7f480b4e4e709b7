"""The reprogramming job as an ask/tell state machine.

One trainer owns the whole query plan of a job: the blank-program pass over the training set
(frequency mapping, learned read-out and linear-probe baseline), the training iterations,
periodic validation (which keeps the best program so far), and the final test passes (best
program, and blank program for the baselines). The caller loops

    while not trainer.done:
        ask = trainer.ask()
        probs = oracle(ask.frames)            # N×K source probabilities
        trainer.tell(probs)                   # (white-box: tell(probs, input_grad=...))

and may serialise ``trainer.state_bytes()`` after any ``tell``. A trainer rebuilt from those
bytes continues bit-for-bit: every random draw comes from the generator in the state.

The phases and what ``ask``/``tell`` do in each are described on ``Trainer``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Literal

import numpy as np
import torch

from engine import state as state_io
from engine.estimators import ESTIMATORS, Estimator
from engine.losses import LossKind, class_weights, mean_loss, per_sample_loss
from engine.mapping import (
    CrossFitReadout,
    LinearReadout,
    OutputMapping,
    cross_fit_readout,
    fit_readout,
    frequency_mapping,
    labels_per_class,
    mapping_from_state,
    random_mapping,
)
from engine.optimizers import OPTIMIZERS, Optimizer
from engine.program import Program
from engine.search import CMA, CmaSearch

Purpose = Literal["mapping", "baseline", "training", "validation", "test"]
MappingMethod = Literal["frequency", "random", "learned"]
ValidationMethod = Literal["holdout", "cross_validation", "cross_fit"]
WHITE_BOX = "white_box"
#: The fixed extra views a read-out may see (``Split.full``): "full" is the image resized to
#: the whole input frame, nothing added. It does not depend on the program, so its answer is
#: one query per image, once; on the benchmark's 1,000-label oracles the image at 48 of 128
#: pixels (the program's frame) hides detail that the full frame shows the model.
VIEWS = ("full",)

#: What a checkpoint written before these fields existed ran with: the old behaviour.
LEGACY_CONFIG = {"validation": "holdout", "patience": 0, "selection_p": 1.0}

#: The complete state of a job's engine: θ, optimiser moments, the generator's state, phase,
#: iteration, mappings and read-outs, best-so-far, partial evaluation passes, results. Plain
#: arrays and JSON scalars; ``state.dumps``/``loads`` turn it into bytes and back exactly.
TrainerState = dict[str, Any]


class Phase(StrEnum):
    """Where a trainer is in its query plan (see ``Trainer``). The values are what a
    checkpoint stores: never rename one, or older checkpoints stop loading."""

    VIEWS = "views"  # the fixed extra views of the labelled (then of the test) images
    BLANK_TRAIN = "blank_train"
    VALIDATE = "validate"
    TRAIN = "train"
    REFIT = "refit"
    TEST = "test"
    BLANK_TEST = "blank_test"
    FOLDS = "folds"  # engine.cross_fit: the two half-programs are training and validating
    DONE = "done"


@dataclass(frozen=True)
class TrainerConfig:
    """Everything the engine needs to know about a job besides data and geometry.

    No field but ``chunk`` has a default. The product's defaults have one home,
    ``app/config/defaults.py`` (``resolve`` fills every field of a job spec before a trainer
    is built); a second set here had drifted from it and was used by tests only, so tests
    spell out the configuration they run."""

    estimator: str  # a name in ESTIMATORS, WHITE_BOX, or CMA (engine.search)
    q: int  # CMA: the population per generation
    beta: float  # CMA: the initial step size σ
    scale: float | None
    optimizer: str  # a name in OPTIMIZERS
    lr: float
    lr_decay: float
    clip: float | None
    batch_size: int
    iterations: int
    eval_every: int
    loss: LossKind
    gamma: float
    class_balance: bool
    mapping: MappingMethod
    labels_per_class: int  # wanted; fewer when the oracle has too few labels
    remap_every: int  # >0: re-estimate a frequency mapping from recent outputs (ILM-VP)
    baselines: bool
    # "holdout": programs are scored on the validation split; "cross_validation" (learned
    # read-out only, no validation split): on the training images, each classified by the
    # read-out of the fold that did not contain it; "cross_fit" (learned read-out only, no
    # validation split): two programs, each trained on one half of the training images and
    # scored on the other (engine.cross_fit.CrossFitTrainer).
    validation: ValidationMethod
    # Stop when no program has become the best for this many evaluation points, or when
    # nothing left to spend could change the choice (``Trainer._stop_reason``); 0: never.
    patience: int
    # A program replaces the blank one only if a one-sided sign test on the validation
    # images the two classify differently gives p ≤ this (1.0: any higher accuracy).
    selection_p: float
    # cross_fit only: further step sizes raced against ``lr`` (engine.cross_fit: every step
    # size trains its own pair of half-programs for the first third of the run, then only the
    # one whose programs validated best goes on). A default, unlike the fields above, so that
    # a checkpoint written before the race existed loads as what it ran: no race.
    lr_race: tuple[float, ...] = ()
    # Fixed extra views of every image whose answers the learned read-out sees next to the
    # programmed frame's (``VIEWS``); a default for the same reason as ``lr_race``.
    views: tuple[str, ...] = ()
    # Looks at ``selection_p`` before the level is spent: the n-th evaluation point after
    # the first (n > free_looks) tests a program at selection_p × free_looks / n, so that a
    # long patience does not give a lucky program ever more chances to pass. 0: every look
    # at ``selection_p`` (the default's way). A default for checkpoints, as above.
    free_looks: int = 0
    chunk: int = 256  # largest number of frames asked at once in evaluation passes

    def __post_init__(self) -> None:
        """Refuse unknown names and empty loops."""
        if self.estimator not in ESTIMATORS and self.estimator not in (WHITE_BOX, CMA):
            raise ValueError(f"unknown estimator {self.estimator!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}")
        if self.eval_every < 1 or self.batch_size < 1 or self.iterations < 0:
            raise ValueError("eval_every and batch_size must be ≥ 1, iterations ≥ 0")
        if self.validation not in ("holdout", "cross_validation", "cross_fit"):
            raise ValueError(f"unknown validation {self.validation!r}")
        if self.validation != "holdout" and self.mapping != "learned":
            raise ValueError(f"{self.validation} scores programs through the learned read-out")
        if self.patience < 0 or not 0.0 < self.selection_p <= 1.0:
            raise ValueError("patience must be ≥ 0 and selection_p in (0, 1]")
        if self.free_looks < 0:
            raise ValueError("free_looks must be ≥ 0")
        object.__setattr__(self, "lr_race", tuple(float(lr) for lr in self.lr_race))
        if self.lr_race and self.validation != "cross_fit":
            raise ValueError("lr_race races cross-fitted programs: validation must be 'cross_fit'")
        if any(not lr > 0 for lr in self.lr_race):
            raise ValueError("every step size in lr_race must be > 0")
        object.__setattr__(self, "views", tuple(self.views))
        if not set(self.views) <= set(VIEWS) or len(set(self.views)) != len(self.views):
            raise ValueError(f"views must be distinct names among {list(VIEWS)}")
        if self.views and self.mapping != "learned":
            raise ValueError("views are features of the learned read-out: mapping 'learned'")

    @property
    def needs_blank_pass(self) -> bool:
        """Whether the plan starts with the blank program on the training set: for the
        frequency mapping, the read-out, or the baselines."""
        return self.mapping != "random" or self.baselines


@dataclass(frozen=True)
class Split:
    """Target-size images (N×t×t×3 float32 in [0, 1]) and integer labels; with views, the
    full view of each image (N×S×S×3 uint8: the original resized to the input frame)."""

    x: np.ndarray
    y: np.ndarray
    full: np.ndarray | None = None

    def __len__(self) -> int:
        """The number of images."""
        return len(self.y)


@dataclass(frozen=True)
class Ask:
    """The frames a trainer wants answered next, and what the answers are for (the
    purpose the spend is booked under)."""

    purpose: Purpose
    frames: np.ndarray
    # White-box only: maps the oracle's probabilities to (loss, ∂loss/∂probs); the caller
    # then tells the trainer ∂loss/∂frames as ``input_grad``.
    loss_grad: Callable[[np.ndarray], tuple[float, np.ndarray]] | None = None


@dataclass
class Event:
    """What a ``tell`` completed."""

    kind: Literal["iteration", "validation", "mapping", "test", "done"]
    iteration: int
    values: dict[str, float] = field(default_factory=dict)
    half: int | None = None  # which half-program's iteration (engine.cross_fit), if any
    lr: float | None = None  # which raced step size's iteration (engine.cross_fit), if racing


def sign_test_p(wins: int, losses: int) -> float:
    """One-sided sign test: the chance of at least ``wins`` successes in ``wins + losses``
    fair coin flips (images only one of two classifiers gets right)."""
    n = wins + losses
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2.0**n


def wins_needed(selection_p: float) -> int:
    """The fewest images a program must win, losing none, to pass the sign test."""
    return next(b for b in range(1, 64) if sign_test_p(b, 0) <= selection_p)


@dataclass
class Best:
    """The best program so far: θ as it was after the validation pass that selected it, and
    the mapping it is used with (for the learned read-out, refitted on the training and
    validation answers together once validation has scored it), or, before any validation,
    the blank program with the mapping of the blank pass."""

    val_acc: float  # −1.0 until a validation pass has scored a program
    iteration: int
    theta: np.ndarray
    mapping: OutputMapping | None

    def state(self) -> dict[str, Any]:
        """The checkpoint form: the same keys, in the same order, as the dict it replaced."""
        return {
            "val_acc": self.val_acc,
            "iteration": self.iteration,
            "theta": self.theta,
            "mapping": None if self.mapping is None else self.mapping.state(),
        }

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> Best:
        """Inverse of ``state``."""
        mapping = None if s["mapping"] is None else mapping_from_state(s["mapping"])
        return cls(float(s["val_acc"]), int(s["iteration"]), np.asarray(s["theta"]), mapping)


class Trainer:
    """One job's whole query plan as a state machine driven by ``ask`` and ``tell``.

    ``ask()`` returns the next frames to send; ``tell(probs)`` takes the oracle's answers to
    exactly those frames (white box: and ``input_grad``, ∂loss/∂frames). A pass over a data
    split is asked ``config.chunk`` images at a time; its ``tell``s return None until the
    last chunk is in, then the pass is finished and an ``Event`` says what it completed.

    Phases (``Phase``), in order::

        BLANK_TRAIN → VALIDATE → ( TRAIN ×eval_every → [REFIT] → VALIDATE )* → TEST
                    → [BLANK_TEST] → DONE

    * ``BLANK_TRAIN``: asks the training set under the blank program (purpose "mapping",
      "baseline" for a random mapping). Finishing fits the frequency mapping (when the
      oracle has at least as many labels as classes) and the cross-fitted read-outs (the
      linear probe), takes the job's mapping from them, and goes to VALIDATE. Skipped when
      neither the mapping nor the baselines need it (a random mapping without baselines).
    * ``VALIDATE``: scores the current θ: with ``validation == "holdout"`` it asks the
      validation set; with ``"cross_validation"`` it is entered and left in the same tell
      as the blank or refit pass, whose read-outs' out-of-fold verdicts on the training
      images are the score (the event is then a "validation" one, with ``train_acc``). The
      first validation scores the blank program; its verdicts are the reference, the
      baselines (probe, frequency mapping) are refitted on training + validation answers,
      and the blank program with the probe becomes ``best``. Later, a program becomes
      ``best`` when its accuracy is higher than the best's and a one-sided sign test
      against the blank program's verdicts gives p ≤ ``selection_p``; its read-out is then
      refitted on training + validation answers. Then, with ``patience``, the job may stop
      early (``_stop_reason``): it goes to TEST; else to TRAIN while iterations remain.
    * ``TRAIN``: each ask is one iteration's minibatch: the estimator's K candidate
      programs applied to it (K×batch frames), or, white box, the batch under θ with
      ``Ask.loss_grad``, or, CMA-ES, the search's K candidates. The tell estimates the
      gradient and takes one optimiser step (CMA-ES: moves θ to the search's new mean;
      iteration += 1) and, after every ``eval_every`` iterations and after the last,
      goes to REFIT (learned read-out) or VALIDATE. An ask after ``set_iterations``
      shortened the run goes to the evaluation first.
    * ``REFIT`` (learned read-out only): asks the training set under the current θ
      (purpose "training"); finishing refits the read-outs exactly; goes to VALIDATE.
    * ``TEST``: asks the test set under the best θ; finishing records ``test_accuracy``
      and goes to BLANK_TEST, or to DONE without baselines. When the best θ is blank the
      ask goes straight to BLANK_TEST, whose pass then serves both.
    * ``BLANK_TEST``: asks the test set under the blank program (purpose "baseline", or
      "test" when it doubles as the test pass); finishing scores every baseline mapping on
      it and goes to DONE.
    * ``DONE``: ``done`` is true; ``ask`` raises.

    The state (``state``/``load_state``, see ``TrainerState``) is everything that changes:
    config (iterations may be cut to a budget), phase, iteration, answers told so far, θ,
    the optimiser's moments, the generator, the mapping, the cross-fitted read-outs, the
    baselines' mappings, ``best``, the last validation accuracy, the pass in progress
    (``cursor`` and its answered chunks), the results and the remapping window. Between an
    ask and its tell the trainer also holds the pending minibatch (and the estimator its
    directions); that is never serialised, so ``state_bytes`` refuses to run then.
    """

    def __init__(
        self,
        config: TrainerConfig,
        program: Program,
        n_classes: int,
        n_source: int,
        train: Split,
        val: Split,
        test: Split,
        seed: int = 0,
    ) -> None:
        """A trainer at the start of its plan; every random draw comes from ``seed``."""
        if len(train) == 0:
            raise ValueError("the training split is empty")
        if config.validation == "holdout" and len(val) == 0:
            raise ValueError("holdout validation needs validation images")
        if config.validation != "holdout" and len(val):
            raise ValueError(f"{config.validation} uses the training images: no validation split")
        self.config, self.program = config, program
        self.n_classes, self.n_source = n_classes, n_source
        self.train, self.val, self.test = train, val, test
        self.weights = class_weights(train.y, n_classes, config.class_balance)
        self.estimator: Estimator | None = None
        self.search: CmaSearch | None = None  # θ from the losses' ranking, no optimiser
        if config.estimator == CMA:
            self.search = CmaSearch(program.dim, config.q, config.beta)
        elif config.estimator != WHITE_BOX:
            self.estimator = ESTIMATORS[config.estimator](
                program.dim, config.q, config.beta, config.scale
            )
        self.optimizer: Optimizer = OPTIMIZERS[config.optimizer](
            program.dim, config.lr, lr_decay=config.lr_decay, clip=config.clip
        )
        self.rng = np.random.default_rng(seed)
        self.phase = Phase.BLANK_TRAIN if config.needs_blank_pass else Phase.VALIDATE
        if config.views:
            if any(s.full is None for s in (train, val, test) if len(s)):
                raise ValueError("views need the full view of every image (Split.full)")
            self.phase = Phase.VIEWS
        # The views' answers by split ("train", "val"; "test" once the best read-out needs
        # them); None: this trainer's read-outs see the programmed frame only.
        self.view_answers: dict[str, np.ndarray] | None = None
        # The probe's out-of-fold verdicts, from the blank pass to the cross-validation that
        # the same tell runs (never checkpointed in between).
        self._probe_oof = np.zeros(0, dtype=bool)
        self._probe_oof_prob: np.ndarray | None = None  # and its probabilities (cross-fit)
        self.iteration = 0
        self.told = 0  # answers received so far, all purposes
        self.theta = np.zeros(program.dim)
        self.mapping: OutputMapping | None = None
        self.crossfit: CrossFitReadout | None = None
        if config.mapping == "random":
            m = labels_per_class(n_source, n_classes, config.labels_per_class)
            self.mapping = random_mapping(self.rng, n_source, n_classes, m)
        self.baselines: dict[str, OutputMapping] = {}
        self.best = self._snapshot(-1.0)
        self.last_val_acc: float | None = None
        # The blank program's verdict on each validation image (holdout) or training image
        # (cross-validation): what a program must beat, by the sign test, to be chosen.
        self.reference: np.ndarray | None = None
        # Training answers under the current θ (blank or refit pass), kept until the
        # validation pass that follows: a chosen program's read-out is refitted on them and
        # the validation answers together.
        self.train_answers: np.ndarray | None = None
        self.since_best = 0  # evaluation points since ``best`` last changed
        self.looks = 0  # evaluation points after the first (``_selection_level``)
        self.stop_reason: str | None = None  # why the job stopped before its last iteration
        self.cursor = 0
        self.partial: list[np.ndarray] = []
        self.results: dict[str, float] = {}
        self._pending: dict[str, Any] | None = None
        self._recent: list[tuple[np.ndarray, np.ndarray]] = []  # (probs, y) for remapping
        self._prepare(seed)

    def _prepare(self, seed: int) -> None:
        """What a subclass builds on top of this state (engine.cross_fit); nothing here."""

    # ----------------------------------------------------------------- plan
    def planned_queries(self, iterations: int | None = None) -> dict[str, int]:
        """Images this job will send, by purpose, if it runs ``iterations`` iterations.

        With zero iterations the program stays blank and the test pass doubles as the
        baselines' pass: the job then costs exactly what the linear probe on every labelled
        image costs (training and validation sets once, test set once). A job that stops
        early (``patience``) sends less."""
        c = self.config
        it = c.iterations if iterations is None else iterations
        evals = it // c.eval_every + (it % c.eval_every != 0)  # evaluation points after 0
        refits = evals * len(self.train) if c.mapping == "learned" else 0
        plan = {
            "mapping": 0,
            "baseline": 0,
            "training": it * self.per_iteration + refits,
            "validation": (1 + evals) * len(self.val),
            "test": len(self.test),
        }
        if c.needs_blank_pass:
            plan["mapping" if c.mapping != "random" else "baseline"] += len(self.train)
        if c.baselines and it:
            plan["baseline"] += len(self.test)
        if c.views:  # at most: the test images' views only when the best read-out uses them
            plan["mapping"] += len(self.train) + len(self.val)
            plan["test"] += len(self.test)
        return plan

    def best_views(self) -> tuple[str, ...]:
        """The views the best program's read-out uses: () when it reads the programmed frame
        alone (a job may be given views and still return a read-out without them)."""
        return self.config.views if self._uses_views(self.best_program()[1]) else ()

    def _uses_views(self, mapping: OutputMapping) -> bool:
        return isinstance(mapping, LinearReadout) and mapping.weight.shape[1] > self.n_source

    def race_report(self) -> dict[str, Any] | None:
        """The step-size race's outcome (engine.cross_fit); None: this job raced none."""
        return None

    @property
    def progress_iteration(self) -> int:
        """Iterations done, as a progress bar shows them (``iteration`` here)."""
        return self.iteration

    @property
    def per_iteration(self) -> int:
        """Images one training iteration sends (at most)."""
        sampler = self.search or self.estimator
        n = 1 if sampler is None else sampler.n_candidates
        return self.config.batch_size * n

    def fit_iterations(self, max_queries: int) -> int:
        """The most iterations (≤ the configured number) whose whole plan fits the budget;
        raises ValueError naming the minimum when not even zero iterations fit."""
        floor = sum(self.planned_queries(0).values())
        if floor > max_queries:
            raise ValueError(
                f"a budget of {max_queries} queries is below the {floor} this job needs for "
                "its mapping and evaluation alone"
            )
        lo, hi = 0, self.config.iterations
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if sum(self.planned_queries(mid).values()) <= max_queries:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def fit_remaining(self, budget_left: int) -> int:
        """The most iterations (≥ those done, ≤ configured) whose *remaining* plan fits
        ``budget_left`` images: for a resumed job whose budget paid for work that a crash
        lost. Returns the iteration count to pass to ``set_iterations``."""
        lo, hi = self.iteration, max(self.iteration, self.config.iterations)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if sum(self.planned_queries(mid).values()) - self.told <= budget_left:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def set_iterations(self, iterations: int) -> None:
        """Shorten (or lengthen) the run, e.g. to fit a budget; takes effect at the next ask."""
        self.config = dataclasses.replace(self.config, iterations=iterations)

    # ----------------------------------------------------------------- ask
    @property
    def done(self) -> bool:
        """Whether the plan is complete (``results`` holds everything)."""
        return self.phase == Phase.DONE

    def ask(self) -> Ask:
        """The next frames to send; see the class docstring for what each phase asks."""
        if self.done:
            raise RuntimeError("the trainer is done")
        if self.phase == Phase.TRAIN and self.iteration >= self.config.iterations:
            self.phase = self._evaluation_phase
        if self.phase == Phase.TRAIN:
            return self._ask_training()
        if (
            self.phase in (Phase.TEST, Phase.BLANK_TEST)
            and self.best_views()
            and "test" not in self._views()
        ):
            self.phase = Phase.VIEWS  # the best read-out needs the test images' views
        if self.phase == Phase.VIEWS:
            purpose, full = self._view_pass()
            stop = min(self.cursor + self.config.chunk, len(full))
            return Ask(purpose, full[self.cursor : stop].astype(np.float32) / 255.0)
        if self.phase == Phase.TEST and not self.best.theta.any() and self.config.baselines:
            self.phase = Phase.BLANK_TEST  # the best program is blank: one pass serves both
        purpose, split, theta = {
            Phase.BLANK_TRAIN: (self._blank_purpose, self.train, None),
            Phase.REFIT: ("training", self.train, self.theta),
            Phase.VALIDATE: ("validation", self.val, self.theta),
            Phase.TEST: ("test", self.test, self.best.theta),
            Phase.BLANK_TEST: (
                "baseline" if "test_accuracy" in self.results else "test",
                self.test,
                None,
            ),
        }[self.phase]
        stop = min(self.cursor + self.config.chunk, len(split))
        frames = self.program.embed(split.x[self.cursor : stop])
        return Ask(purpose, frames if theta is None else self.program.apply(frames, theta))

    def _views(self) -> dict[str, np.ndarray]:
        return {} if self.view_answers is None else self.view_answers

    def _view_pass(self) -> tuple[Purpose, np.ndarray]:
        """The views being asked: the labelled images' first (training, then validation),
        the test images' once the best read-out turns out to need them."""
        if "train" not in self._views():
            parts = [s.full for s in (self.train, self.val) if len(s)]
            return "mapping", np.concatenate(parts)  # type: ignore[arg-type]
        assert self.test.full is not None
        return "test", self.test.full

    def _finish_views(self, answers: np.ndarray) -> None:
        """Keep the views' answers; then the blank pass (``_after_views``), or the test."""
        if "train" not in self._views():
            n = len(self.train)
            self.view_answers = {"train": answers[:n], "val": answers[n:]}
            self._after_views()
        else:
            self._views()["test"] = answers
            self.phase = Phase.TEST

    def _after_views(self) -> None:
        self.phase = Phase.BLANK_TRAIN

    def _with_views(self, answers: np.ndarray, part: str, start: int = 0) -> np.ndarray:
        """``answers`` (rows ``start``… of split ``part``) with the views' answers of the same
        images as further columns, when this trainer has them; else ``answers``."""
        views = self._views().get(part)
        if views is None:
            return answers
        return np.concatenate([answers, views[start : start + len(answers)]], axis=1)

    @property
    def _blank_purpose(self) -> Purpose:
        return "mapping" if self.config.mapping != "random" else "baseline"

    @property
    def _evaluation_phase(self) -> Phase:
        """Where training goes at an evaluation point: the learned read-out is refitted
        before the validation pass."""
        return Phase.REFIT if self.crossfit is not None else Phase.VALIDATE

    def _ask_training(self) -> Ask:
        c = self.config
        n = min(c.batch_size, len(self.train))
        idx = self.rng.choice(len(self.train), size=n, replace=False)
        base = self.program.embed(self.train.x[idx])
        if self.search is not None:
            candidates = self.search.ask(self.rng)
        elif self.estimator is None:
            self._pending = {"idx": idx, "base": base}
            return Ask(
                "training",
                self.program.apply(base, self.theta),
                loss_grad=lambda probs: self._loss_grad(probs, idx),
            )
        else:
            candidates = self.estimator.ask(self.theta, self.rng)
        self._pending = {"idx": idx}
        frames = np.concatenate([self.program.apply(base, cand) for cand in candidates])
        return Ask("training", frames)

    # ----------------------------------------------------------------- tell
    def tell(self, probs: np.ndarray, input_grad: np.ndarray | None = None) -> Event | None:
        """The oracle's answers (N×K probabilities) to the last ask's frames, in order.
        Returns the event it completed, or None in the middle of an evaluation pass."""
        probs = np.asarray(probs, dtype=np.float64)
        if probs.ndim != 2 or probs.shape[1] != self.n_source:
            raise ValueError(f"expected N×{self.n_source} probabilities, got {probs.shape}")
        self.told += len(probs)
        if self.phase == Phase.TRAIN:
            return self._tell_training(probs, input_grad)
        part = {
            Phase.VIEWS: "views",
            Phase.BLANK_TRAIN: "train",
            Phase.REFIT: "train",
            Phase.VALIDATE: "val",
        }.get(self.phase, "test")
        n = len(self._view_pass()[1]) if part == "views" else len(getattr(self, part))
        expected = min(self.cursor + self.config.chunk, n) - self.cursor
        if len(probs) != expected:
            raise ValueError(f"expected {expected} answers, got {len(probs)}")
        self.partial.append(self._with_views(probs, part, self.cursor).astype(np.float32))
        self.cursor += expected
        if self.cursor < n:
            return None
        answers = np.concatenate(self.partial).astype(np.float64)
        self.partial, self.cursor = [], 0
        if part == "views":
            self._finish_views(answers)
            return None
        finish = {
            Phase.BLANK_TRAIN: self._finish_blank_train,
            Phase.REFIT: self._finish_refit,
            Phase.VALIDATE: self._finish_validation,
            Phase.TEST: self._finish_test,
            Phase.BLANK_TEST: self._finish_blank_test,
        }[self.phase]
        return finish(answers)

    def _fit_baselines(self, answers: np.ndarray, y: np.ndarray) -> CrossFitReadout | None:
        """The frequency mapping (when every class can own a source label of its own: not
        on an oracle with fewer labels than classes) and the linear probe (when the oracle
        has more than one label), on blank-program answers; returns the probe's
        cross-fitted read-outs."""
        m = labels_per_class(self.n_source, self.n_classes, self.config.labels_per_class)
        blank = answers[:, : self.n_source]  # the baselines read the programmed frame alone
        if self.n_classes * m <= self.n_source:
            self.baselines["frequency"] = frequency_mapping(blank, y, self.n_classes, m)
        if self.n_source < 2:
            return None
        crossfit = cross_fit_readout(blank, y, self.n_classes)
        self.baselines["probe"] = copy.deepcopy(crossfit.full)
        return crossfit

    def _finish_blank_train(self, answers: np.ndarray) -> Event:
        c, y = self.config, self.train.y
        if c.mapping == "frequency" and self.n_classes > self.n_source:
            raise ValueError(
                f"a many-to-one mapping needs at least as many oracle labels as classes "
                f"({self.n_source} labels, {self.n_classes} classes)"
            )
        crossfit = self._fit_baselines(answers, y)
        if crossfit is not None and answers.shape[1] > self.n_source:
            # With views the job's read-outs see them too; the probe stays the reference.
            self._probe_oof = crossfit.oof_correct.astype(bool)
            crossfit = cross_fit_readout(answers, y, self.n_classes)
        if c.mapping == "learned" and crossfit is not None:
            self.crossfit, self.mapping = crossfit, crossfit.full
        if c.mapping == "frequency":
            self.mapping = copy.deepcopy(self.baselines["frequency"])
        if self.mapping is None:
            raise ValueError("a learned read-out needs an oracle with more than one label")
        self.train_answers = answers.astype(np.float32) if c.validation == "holdout" else None
        self.best = self._snapshot(-1.0)
        self.phase = Phase.VALIDATE
        acc = float((self.mapping.predict(answers) == y).mean())
        return self._then_cross_validate(Event("mapping", 0, {"train_acc": acc}))

    def _finish_refit(self, answers: np.ndarray) -> Event:
        """Refit the read-outs to the current program's answers on the whole training set."""
        self.crossfit = cross_fit_readout(
            answers, self.train.y, self.n_classes, previous=self.crossfit
        )
        self.mapping = self.crossfit.full
        if self.config.validation == "holdout":
            self.train_answers = answers.astype(np.float32)
        self.phase = Phase.VALIDATE
        acc = float((self.mapping.predict(answers) == self.train.y).mean())
        return self._then_cross_validate(Event("mapping", self.iteration, {"train_acc": acc}))

    def _then_cross_validate(self, event: Event) -> Event:
        """With cross-validation the pass that just refitted the read-outs also scored the
        program (out of fold): validate at once, no query, and report both in one event."""
        if self.config.validation != "cross_validation":
            return event
        done = self._finish_validation(None)
        done.values = event.values | done.values
        return done

    def _finish_validation(self, answers: np.ndarray | None) -> Event:
        """Score the current program (``answers``: the validation set's; None: the
        cross-fitted read-outs' out-of-fold verdicts), keep it if it is the best, and decide
        whether to go on."""
        if answers is None:
            if self.crossfit is None:
                raise RuntimeError("cross-validation needs the learned read-out")
            correct = self.crossfit.oof_correct.astype(bool)
        else:
            correct = self._mapping().predict(answers) == self.val.y
        probe: np.ndarray | None = None  # with views, the probe's verdicts at the blank program
        if self.best.val_acc < 0 and self.view_answers is not None:
            if answers is None:
                probe = self._probe_oof
            else:
                blank = answers[:, : self.n_source]
                probe = self.baselines["probe"].predict(blank) == self.val.y
        event = self._select(
            correct,
            lambda acc: Best(acc, self.iteration, self.theta.copy(), self._blank_choice(answers)),
            lambda acc: Best(acc, self.iteration, self.theta.copy(), self._final_mapping(answers)),
            probe,
        )
        self.train_answers = None
        return event

    def _select(
        self,
        correct: np.ndarray,
        blank: Callable[[float], Best],
        chosen: Callable[[float], Best],
        probe: np.ndarray | None = None,
    ) -> Event:
        """Given the current program's verdict on each validation image: the first time,
        the blank program's verdicts become the reference and ``blank(acc)`` the best;
        later, ``chosen(acc)`` becomes the best when the program beats it (``_beats_best``).
        Then decide whether to go on (``_stop_reason``).

        With views, the first time also gets ``probe``, the verdicts of the linear probe
        (the programmed frame alone): they are the reference and ``blank`` the best, and the
        blank program read with the views (``correct``) is the first candidate to beat it."""
        acc = float(correct.mean())
        self.last_val_acc = acc
        if self.best.val_acc < 0:  # the blank program: the probe is the first candidate
            self.reference = correct if probe is None else probe
            self.best = blank(float(self.reference.mean()))
            if probe is not None and self._beats_best(correct, acc):
                self.best = chosen(acc)
            self.since_best = 0
        else:
            self.looks += 1
            if self._beats_best(correct, acc):
                self.best = chosen(acc)
                self.since_best = 0
            else:
                self.since_best += 1
        self.stop_reason = self._stop_reason()
        more = self.iteration < self.config.iterations and self.stop_reason is None
        self.phase = self._training_phase if more else Phase.TEST
        values = {"val_acc": acc, "best_val_acc": self.best.val_acc}
        return Event("validation", self.iteration, values)

    @property
    def _training_phase(self) -> Phase:
        """Where a validation that goes on leads."""
        return Phase.TRAIN

    def _labelled(self, val_answers: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | None:
        """Answers and labels of every labelled image (training + validation) under the
        current θ, when this validation pass has both; None otherwise."""
        if val_answers is None or self.train_answers is None:
            return None
        answers = np.concatenate([self.train_answers.astype(np.float64), val_answers])
        return answers, np.concatenate([self.train.y, self.val.y])

    def _blank_choice(self, val_answers: np.ndarray | None) -> OutputMapping:
        """The blank program's mapping as a candidate: with holdout validation the baselines
        are refitted on training + validation answers (the probe on every labelled image)
        and the job's mapping method picks among them."""
        both = self._labelled(val_answers)
        if both is not None:
            self._fit_baselines(*both)
        if self.config.mapping == "learned":
            return copy.deepcopy(self.baselines["probe"])
        if self.config.mapping == "frequency":
            return copy.deepcopy(self.baselines["frequency"])
        return copy.deepcopy(self._mapping())

    def _final_mapping(self, val_answers: np.ndarray | None) -> OutputMapping:
        """A chosen program's mapping: the learned read-out refitted on training +
        validation answers (same L2, warm-started), any other mapping as it is."""
        both = self._labelled(val_answers)
        if both is None or self.crossfit is None:
            return copy.deepcopy(self._mapping())
        full = self.crossfit.full
        return fit_readout(*both, self.n_classes, full.l2, init=full)

    def _beats_best(self, correct: np.ndarray, acc: float) -> bool:
        """Higher accuracy than the best, and better than the blank program by the sign
        test on the images the two classify differently."""
        if acc <= self.best.val_acc:
            return False
        if self.reference is None:  # a checkpoint from before the sign test: higher wins
            return True
        wins = int((correct & ~self.reference).sum())
        losses = int((~correct & self.reference).sum())
        return sign_test_p(wins, losses) <= self._selection_level

    @property
    def _selection_level(self) -> float:
        """The sign test's level at this evaluation point (``TrainerConfig.free_looks``)."""
        return self._level_at(self.looks)

    def _level_at(self, look: int) -> float:
        c = self.config
        if not c.free_looks or look <= c.free_looks:
            return c.selection_p
        return c.selection_p * c.free_looks / look

    def _stop_reason(self) -> str | None:
        """Why to stop now, in words, or None to go on. With ``patience`` > 0 a job stops
        when (1) the best program is right on every validation image (nothing could be
        chosen over it); (2) the blank program is still the best and the probe is wrong on
        too few validation images for any program to pass the sign test against it; (3) no
        program has become the best for ``patience`` evaluation points; or (4) at the rate
        validation has improved so far, the training queries left would not gain one more
        validation image."""
        c = self.config
        if not c.patience or self.iteration >= c.iterations or self.reference is None:
            return None
        n = len(self.reference)
        what = {"holdout": "validation", "cross_fit": "cross-fitted"}.get(
            c.validation, "cross-validated training"
        )
        blank_best = not self.best.theta.any()
        if self.best.val_acc >= 1.0:
            return f"the best program is right on all {n} {what} images: nothing can beat it"
        # the next look's level: with free_looks spent it only falls, so no later one passes
        level = self._level_at(self.looks + 1)
        room, need = int((~self.reference).sum()), wins_needed(level)
        if blank_best and sign_test_p(room, 0) > level:
            return (
                f"the linear probe is wrong on only {room} of the {n} {what} images; "
                f"a program would have to get at least {need} of those right, and none "
                "that the probe gets right wrong, to be chosen over it"
                + (
                    " (more validation images, a val/ folder or a larger data.val_fraction, "
                    "would let one show it)"
                    if c.validation == "holdout"
                    else ""
                )
            )
        if self.since_best >= self._patience_points:
            if blank_best:
                return (
                    f"no program has beaten the linear probe on {what} in {c.patience} "
                    "evaluation points"
                )
            return f"{what} accuracy has not improved for {c.patience} evaluation points"
        if not blank_best and self.iteration:
            gained = round((self.best.val_acc - float(self.reference.mean())) * n)
            spent = self.iteration * self.per_iteration
            left = (c.iterations - self.iteration) * self.per_iteration
            if gained * left < spent:
                return (
                    f"{what} improved by {gained} images in {spent:,} training queries; "
                    f"at that rate the {left:,} left would not gain one more"
                )
        return None

    @property
    def _patience_points(self) -> int:
        """Evaluation points without a better program before the job stops."""
        return self.config.patience

    def _finish_test(self, answers: np.ndarray) -> Event:
        acc = float((self.best_program()[1].predict(answers) == self.test.y).mean())
        self.results["test_accuracy"] = acc
        self.phase = Phase.BLANK_TEST if self.config.baselines else Phase.DONE
        return Event("done" if self.done else "test", self.iteration, dict(self.results))

    def _finish_blank_test(self, answers: np.ndarray) -> Event:
        if "test_accuracy" not in self.results:  # the blank program was the best one
            self._finish_test(answers)
        for name, mapping in self.baselines.items():
            acc = float((mapping.predict(answers[:, : self.n_source]) == self.test.y).mean())
            self.results[f"baseline_{name}"] = acc
        self.phase = Phase.DONE
        return Event("done", self.iteration, dict(self.results))

    def _tell_training(self, probs: np.ndarray, input_grad: np.ndarray | None) -> Event:
        c, pending = self.config, self._pending
        if pending is None:
            raise RuntimeError("tell() without a matching ask()")
        idx = pending["idx"]
        y = self.train.y[idx]
        per_candidate = probs.reshape(-1, len(y), self.n_source)
        hs = [self._train_target_probs(p, idx) for p in per_candidate]
        losses = np.array([mean_loss(h, y, self.weights, c.loss, c.gamma) for h in hs])
        center: int | None = None
        if self.search is not None:
            self.theta = self.search.tell(losses)  # the new mean: no gradient, no optimiser
        else:
            if self.estimator is None:
                if input_grad is None:
                    raise ValueError("the white-box estimator needs the input gradient")
                grad = self.program.backprop(pending["base"], self.theta, input_grad)
                center = 0
            else:
                grad = self.estimator.tell(losses)
                center = self.estimator.center_index
            self.theta = self.optimizer.step(self.theta, grad)
        self._pending = None
        if c.remap_every and c.mapping == "frequency":
            self._remap(per_candidate, y)
        self.iteration += 1
        view = hs if center is None else hs[center : center + 1]
        acc = float(np.mean([(h.argmax(axis=1) == y).mean() for h in view]))
        loss = float(losses.mean() if center is None else losses[center])
        if self.iteration % c.eval_every == 0 or self.iteration >= c.iterations:
            self.phase = self._evaluation_phase
        return Event("iteration", self.iteration, {"loss": loss, "train_acc": acc})

    def _remap(self, per_candidate: np.ndarray, y: np.ndarray) -> None:
        """ILM-VP: re-estimate the frequency mapping from this window's outputs, which the
        estimator already paid for (their mean over candidates approximates f(θ))."""
        self._recent.append((per_candidate.mean(axis=0), y))
        if (self.iteration + 1) % self.config.remap_every:
            return
        probs = np.concatenate([p for p, _ in self._recent])
        ys = np.concatenate([t for _, t in self._recent])
        self._recent = []
        if len(np.unique(ys)) == self.n_classes:
            m = self._mapping().state()["indices"].shape[1]
            self.mapping = frequency_mapping(probs, ys, self.n_classes, m)

    # ----------------------------------------------------------------- helpers
    def _mapping(self) -> OutputMapping:
        if self.mapping is None:
            raise RuntimeError("no mapping yet")
        return self.mapping

    def _snapshot(self, val_acc: float) -> Best:
        return Best(val_acc, self.iteration, self.theta.copy(), copy.deepcopy(self.mapping))

    def _train_target_probs_t(self, source: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
        """h for training images: by the out-of-fold read-outs when learned, so the loss keeps
        measuring generalisation; by the mapping otherwise."""
        views = self._views().get("train")
        if views is not None:  # the views' answers are constants: no gradient flows to them
            source = torch.cat([source, torch.as_tensor(views[idx], dtype=source.dtype)], dim=1)
        if self.crossfit is None:
            return self._mapping().target_probs_t(source)
        parts = []
        folds = self.crossfit.fold_of[idx]
        order = np.argsort(folds, kind="stable")
        for f in np.unique(folds):
            sel = torch.as_tensor(np.flatnonzero(folds == f))
            parts.append(self.crossfit.folds[f].target_probs_t(source[sel]))
        return torch.cat(parts)[torch.as_tensor(np.argsort(order, kind="stable"))]

    def _train_target_probs(self, source: np.ndarray, idx: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self._train_target_probs_t(torch.as_tensor(source), idx).numpy()

    def _loss_grad(self, probs: np.ndarray, idx: np.ndarray) -> tuple[float, np.ndarray]:
        c = self.config
        src = torch.tensor(np.asarray(probs, dtype=np.float64), requires_grad=True)
        h = self._train_target_probs_t(src, idx)
        y = torch.as_tensor(self.train.y[idx])
        loss = per_sample_loss(h, y, torch.as_tensor(self.weights), c.loss, c.gamma).mean()
        loss.backward()
        assert src.grad is not None
        return float(loss.detach()), src.grad.numpy()

    def best_program(self) -> tuple[np.ndarray, OutputMapping]:
        """(θ, mapping) of the best program so far, as selected on validation."""
        mapping = self.best.mapping if self.best.mapping is not None else self.mapping
        return self.best.theta, mapping

    # ----------------------------------------------------------------- state
    def state(self) -> TrainerState:
        """Everything ``load_state`` needs to continue bit-for-bit (see the class docstring)."""

        def map_state(m: OutputMapping | None) -> dict[str, np.ndarray] | None:
            return None if m is None else m.state()

        return {
            "version": 1,
            "config": asdict(self.config),
            "phase": self.phase.value,
            "iteration": self.iteration,
            "told": self.told,
            "theta": self.theta,
            "optimizer": self.optimizer.state(),
            "search": None if self.search is None else self.search.state(),
            "rng": self.rng.bit_generator.state,
            "mapping": map_state(self.mapping),
            "crossfit": None if self.crossfit is None else self.crossfit.state(),
            "baselines": {k: v.state() for k, v in self.baselines.items()},
            "best": self.best.state(),
            "last_val_acc": self.last_val_acc,
            "reference": self.reference,
            "train_answers": self.train_answers,
            "since_best": self.since_best,
            "looks": self.looks,
            "stop_reason": self.stop_reason,
            "cursor": self.cursor,
            "partial": self.partial,
            "results": self.results,
            "recent": [[p, t] for p, t in self._recent],
            "view_answers": self.view_answers,
        }

    def state_bytes(self) -> bytes:
        """``state()`` as bytes; only between a tell and the next ask."""
        if self._pending is not None:
            raise RuntimeError("serialise between iterations, not between ask() and tell()")
        return state_io.dumps(self.state())

    def load_state(self, data: bytes | TrainerState) -> None:
        """Continue from ``state_bytes()`` (or ``state()``) of a trainer built with the same
        program, classes, labels and data."""
        s = state_io.loads(data) if isinstance(data, bytes) else data
        self.config = TrainerConfig(**(LEGACY_CONFIG | s["config"]))
        self.phase, self.iteration = Phase(s["phase"]), int(s["iteration"])
        self.told = int(s["told"])
        self.theta = np.asarray(s["theta"], dtype=np.float64)
        self.optimizer.load_state(s["optimizer"])
        if self.search is not None:
            self.search.load_state(s["search"])
        self.rng.bit_generator.state = s["rng"]
        self.mapping = None if s["mapping"] is None else mapping_from_state(s["mapping"])
        self.crossfit = None
        if s["crossfit"] is not None:
            self.crossfit = CrossFitReadout.from_state(s["crossfit"])
            self.mapping = self.crossfit.full
        self.baselines = {k: mapping_from_state(v) for k, v in s["baselines"].items()}
        self.best = Best.from_state(s["best"])
        self.last_val_acc = s["last_val_acc"]
        ref = s.get("reference")
        self.reference = None if ref is None else np.asarray(ref, dtype=bool)
        self.train_answers = s.get("train_answers")
        self.since_best = int(s.get("since_best", 0))
        self.looks = int(s.get("looks", 0))  # a checkpoint from before: none counted
        self.stop_reason = s.get("stop_reason")
        self.cursor, self.partial = int(s["cursor"]), list(s["partial"])
        self.results = dict(s["results"])
        self._recent = [(p, t) for p, t in s["recent"]]
        views = s.get("view_answers")  # a checkpoint from before views: none
        self.view_answers = None if views is None else {k: np.asarray(v) for k, v in views.items()}
        self._pending = None
