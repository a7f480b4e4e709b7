"""Cross-fitted programs (``validation == "cross_fit"``): every labelled image validates.

With 5–20 labelled images per class, a held-out fifth is 1–4 images per class: too few for a
program that beats the linear probe by a few points to show it (BENCHMARKS.md §8, §10). Here
the labelled images are split into two stratified halves and two programs are trained, each
on one half, with its own read-out, optimiser and generator (two ordinary ``Trainer``\\ s,
each validating on the other half). At every evaluation point the two programs' verdicts
together score every labelled image by a program that never trained on it, and the job's
selection (``Trainer._select``: the blank program with the probe first, then a program only
when it has higher accuracy and passes the sign test against the probe's verdicts) runs over
all of them instead of a fifth.

What is returned is one program, so that ``program.npz`` stays one P and one read-out: of the
two half-programs at the chosen evaluation point, the one that won more images net on its own
half (the other's half on a tie goes to the first), with its read-out refitted on its answers
for every labelled image (training half from the refit pass, the other half from its
validation pass: no extra query). The sign test judged the *procedure* (a program trained on
half the images), and the returned program is one draw of it.

The price: two programs, so at a given budget each runs about half the iterations on half
the images, and an evaluation point sends every labelled image twice (each program's refit
and validation passes). The blank program costs what the linear probe costs: every labelled
image once (half 1's blank passes are half 0's answers told again, ``_replay_blank``).

**The step-size race** (``lr_race``, issue 9 item 4): on these tasks the Adam step that gains
differs from task to task (BENCHMARKS.md §10: 0.003 gained where 0.01 did not, and the
reverse), and nothing but the task's own validation can tell which. With further step sizes
to race, each step size trains its own pair of half-programs (the same halves, its own
generator), driven in turn one evaluation point at a time, for the first third of the run
(the rung, ``rung``); then only the step size whose programs reached the highest
cross-fitted accuracy goes on (a tie keeps the earlier one: ``lr`` before ``lr_race``), for
the rest of the run. Every step size's programs are candidates of the one joint selection
(the sign test against the probe, and higher than the best so far), so a loser's program
that was chosen stays chosen unless the survivor beats it. Patience counts rounds: an
evaluation point of every step size still racing. The blank passes are paid for once.
A successive halving of one rung: with m step sizes the survivor runs about 3/(m + 2) of the
iterations a job without the race would (three quarters with two).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import numpy as np

from engine import state as state_io
from engine.mapping import cross_fit_readout, fit_readout
from engine.trainer import Ask, Best, Event, Phase, Split, Trainer, TrainerState, sign_test_p

HALVES_STREAM = 10  # the generator stream of the split into halves: [seed, 10]
FOLD_STREAM = 11  # each half-program's generator: [seed, 11, k]
#: The half-programs never choose among their own checkpoints (the joint selection does), so
#: their own sign test is set never to pass: no read-out refit is spent on it.
NEVER = 1e-12
RUNG = 3  # the step-size race ends after this fraction (1/RUNG) of the run


def halves(y: np.ndarray, seed: int) -> np.ndarray:
    """0 or 1 for each image: a stratified random split, the first half taking the odd
    image of a class (so each class of ≥ 2 images has one in each half)."""
    rng = np.random.default_rng([seed, HALVES_STREAM])
    half = np.zeros(len(y), dtype=np.int64)
    for j in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == j))
        half[idx[(len(idx) + 1) // 2 :]] = 1
    return half


class CrossFitTrainer(Trainer):
    """A job's plan with cross-fitted programs (see the module docstring).

    Phases: ``FOLDS`` (the two half-programs, driven in turn: half 0 up to and through its
    next validation pass, then half 1 likewise, then the joint selection; racing, each step
    size's pair so in turn) → ``TEST`` → [``BLANK_TEST``] → ``DONE``, the last three exactly
    as ``Trainer``'s. The checkpoint is ``Trainer``'s plus ``cross_fit``: every
    half-program's state, which step size and half is being driven, the answers of the
    driven pair's latest evaluation passes, the step sizes still racing and each one's
    peak."""

    def _prepare(self, seed: int) -> None:
        """The half-programs: a pair per step size (``Trainer.__init__`` has checked the
        splits)."""
        config, program, train, test = self.config, self.program, self.train, self.test
        n_classes, n_source = self.n_classes, self.n_source
        if config.validation != "cross_fit":
            raise ValueError("CrossFitTrainer runs data.validation 'cross_fit' only")
        counts = np.bincount(train.y, minlength=n_classes)
        if counts.min() < 2:
            raise ValueError("cross-fitted programs need at least 2 training images per class")
        self.half = halves(train.y, seed)
        self.lrs = (config.lr, *config.lr_race)
        inner = dataclasses.replace(
            config,
            validation="holdout",
            patience=0,
            selection_p=NEVER,
            baselines=False,
            lr_race=(),
            views=(),  # the job asks the views once and hands each half-program its own
        )
        empty = Split(test.x[:0], test.y[:0])
        # folds[2c + k]: step size c's half-program trained on half k
        self.folds: list[Trainer] = []
        for c, lr in enumerate(self.lrs):
            for k in (0, 1):
                mine, other = self._part(k), self._part(1 - k)
                fold_config = dataclasses.replace(inner, lr=lr)
                fold = Trainer(fold_config, program, n_classes, n_source, mine, other, empty, seed)
                # the first step size keeps the streams a job without the race draws from
                fold.rng = np.random.default_rng([seed, FOLD_STREAM, k, *([c] if c else [])])
                self.folds.append(fold)
        self.phase = Phase.VIEWS if config.views else Phase.FOLDS
        self.racer = 0  # the step size being driven
        self.active = 0  # the half-program being driven
        self.alive = list(range(len(self.lrs)))  # the step sizes still racing
        # each step size's highest cross-fitted accuracy over its trained programs
        self.peak = [-1.0] * len(self.lrs)
        # The driven pair's answers of its latest evaluation: "train" (each half-program's
        # own half, from the blank or refit pass) and "val" (the other half), as chunks while
        # a pass is in progress.
        self.answers: list[dict[str, list[np.ndarray]]] = [self._no_answers() for _ in (0, 1)]
        self.best_half: int | None = None  # which half-program ``best`` is

    def _after_views(self) -> None:
        """Every half-program reads the views of its own half (training) and of the other
        (validation), from the job's one pass over the labelled images."""
        views = self._views()["train"]
        for f, fold in enumerate(self.folds):
            k = f % 2
            fold.view_answers = {"train": views[self.half == k], "val": views[self.half != k]}
        self.phase = Phase.FOLDS

    def _pair(self, c: int) -> list[Trainer]:
        """Step size c's two half-programs."""
        return self.folds[2 * c : 2 * c + 2]

    @property
    def _driven(self) -> Trainer:
        return self.folds[2 * self.racer + self.active]

    def _alive_folds(self) -> list[Trainer]:
        return [fold for c in self.alive for fold in self._pair(c)]

    def rung(self, iterations: int | None = None) -> int:
        """The iteration after which the race keeps one step size: the first evaluation
        point at or after a third of the run (the whole run without a race)."""
        it = self.config.iterations if iterations is None else iterations
        if len(self.lrs) == 1:
            return it
        every = self.config.eval_every
        return min(it, every * math.ceil(it / (RUNG * every)))

    def race_report(self) -> dict[str, Any] | None:
        """The step sizes raced, the highest cross-fitted accuracy each one's programs
        reached (None before any was scored), and the one kept (None while still racing);
        None when the job raced none."""
        if len(self.lrs) < 2:
            return None
        return {
            "step_sizes": list(self.lrs),
            "peak_val_accuracy": [None if p < 0 else p for p in self.peak],
            "kept": self.kept_lr,
        }

    @property
    def kept_lr(self) -> float | None:
        """The step size the race kept; None while racing or without a race."""
        return self.lrs[self.alive[0]] if len(self.lrs) > 1 and len(self.alive) == 1 else None

    def _part(self, k: int) -> Split:
        sel = self.half == k
        return Split(self.train.x[sel], self.train.y[sel])

    @staticmethod
    def _no_answers() -> dict[str, list[np.ndarray]]:
        return {"train": [], "val": []}

    # ----------------------------------------------------------------- plan
    def planned_queries(self, iterations: int | None = None) -> dict[str, int]:
        """Every half-program's plan (blank pass, training, refits, validation): the first
        step size's over the whole run, the others' up to the rung (which step size goes on
        is not known in advance; they cost the same), every blank pass but the first
        replayed; then the test pass and the baselines' as ``Trainer.planned_queries``
        counts them."""
        it = self.config.iterations if iterations is None else iterations
        rung = self.rung(it)
        plan = {"mapping": 0, "baseline": 0, "training": 0, "validation": 0, "test": 0}
        for f, fold in enumerate(self.folds):
            for purpose, n in fold.planned_queries(it if f < 2 else rung).items():
                plan[purpose] += n
            if f:  # replayed (``_replay_blank``)
                plan["mapping"] -= len(fold.train)
                plan["validation"] -= len(fold.val)
        plan["test"] += len(self.test)
        if self.config.baselines and it:
            plan["baseline"] += len(self.test)
        if self.config.views:  # the half-programs' views are the job's (``_after_views``)
            plan["mapping"] += len(self.train)
            plan["test"] += len(self.test)
        return plan

    @property
    def per_iteration(self) -> int:
        """Images one iteration of every half-program still racing sends (at most)."""
        return sum(fold.per_iteration for fold in self._alive_folds())

    @property
    def progress_iteration(self) -> int:
        """The mean of the iterations of the half-programs still racing: ``iteration`` (the
        laggard's) stays put while half 0 trains up to its next evaluation point, which at
        a long ``eval_every`` left a job's progress at 0 for minutes."""
        folds = self._alive_folds()
        return sum(f.iteration for f in folds) // len(folds)

    @property
    def _patience_points(self) -> int:
        """Patience counts rounds: an evaluation point of every step size still racing."""
        return self.config.patience * len(self.alive)

    def set_iterations(self, iterations: int) -> None:
        """Shorten (or lengthen) the run of every half-program."""
        super().set_iterations(iterations)
        for fold in self.folds:
            fold.set_iterations(iterations)

    # ----------------------------------------------------------------- ask / tell
    def ask(self) -> Ask:
        """The driven half-program's next frames, or ``Trainer``'s test passes."""
        if self.phase == Phase.FOLDS:
            return self._driven.ask()
        return super().ask()

    def tell(self, probs: np.ndarray, input_grad: np.ndarray | None = None) -> Event | None:
        """Answers to the last ask. A half-program's validation event is not passed on; the
        joint one, after its pair's half 1's, is."""
        if self.phase != Phase.FOLDS:
            return super().tell(probs, input_grad)
        fold = self._driven
        before = fold.phase
        event = fold.tell(probs, input_grad)  # validates the answers before they count
        self.told += len(probs)
        self.iteration = min(f.iteration for f in self._alive_folds())
        if before in (Phase.BLANK_TRAIN, Phase.REFIT, Phase.VALIDATE):
            key = "val" if before == Phase.VALIDATE else "train"
            self.answers[self.active][key].append(np.asarray(probs, dtype=np.float32))
        if event is not None and event.kind == "iteration":
            event.half = self.active  # every half-program counts its own iterations
            if len(self.lrs) > 1:
                event.lr = self.lrs[self.racer]
        if event is None or event.kind != "validation":
            return event
        if self.active == 0:
            self.active = 1
            if self._driven.phase != Phase.BLANK_TRAIN:
                return None
            self._replay_blank()
        self.active = 0
        event = self._select_joint()
        self._next_racer()
        return event

    def _replay_blank(self) -> None:
        """Every other half-program's blank pass and blank validation without a query: they
        are the first one's blank pass and blank validation (the same frames), told again in
        that half-program's chunks (half k trains on half k's images and validates on the
        other half's)."""
        by_half = [np.concatenate(self.answers[0][key]) for key in ("train", "val")]
        for f, fold in enumerate(self.folds[1:], start=1):
            k = f % 2
            replay = {
                Phase.BLANK_TRAIN: ("train", by_half[k]),
                Phase.VALIDATE: ("val", by_half[1 - k]),
            }
            while fold.phase in replay:
                key, answers = replay[fold.phase]
                cursor, n = fold.cursor, len(fold.ask().frames)
                chunk = answers[cursor : cursor + n]
                if f == 1:  # the first pair's answers make the blank selection
                    self.answers[1][key].append(chunk)
                fold.tell(chunk)

    def _next_racer(self) -> None:
        """The next step size to drive; after a round that reached the rung, only the one
        whose programs reached the highest cross-fitted accuracy (the earlier on a tie)."""
        if len(self.alive) == 1 or not self._pair(self.racer)[0].iteration:
            return  # the blank selection is every step size's: the first one trains first
        at = self.alive.index(self.racer)
        if at + 1 < len(self.alive):
            self.racer = self.alive[at + 1]
            return
        if self.iteration >= self.rung():
            keep = max(self.alive, key=lambda c: (self.peak[c], -c))
            self.alive = [keep]
            self.iteration = min(f.iteration for f in self._alive_folds())
        self.racer = self.alive[0]

    def _joined(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Half-program k's answers for every labelled image (its own half, then the other)
        and their labels."""
        a = self.answers[k]
        fold = self._pair(self.racer)[k]
        own, other = (np.concatenate(a[key]).astype(np.float64) for key in ("train", "val"))
        return (
            np.concatenate([fold._with_views(own, "train"), fold._with_views(other, "val")]),
            np.concatenate([fold.train.y, fold.val.y]),
        )

    def _select_joint(self) -> Event:
        """Both half-programs have validated at this iteration: select over every labelled
        image (``Trainer._select``), then start the next evaluation's answers afresh."""
        verdicts = []
        pair = self._pair(self.racer)
        for k, fold in enumerate(pair):
            val = np.concatenate(self.answers[k]["val"]).astype(np.float64)
            verdicts.append(fold._mapping().predict(fold._with_views(val, "val")) == fold.val.y)
        correct = np.concatenate(verdicts)
        if pair[0].iteration:  # a trained program, not the blank one every pair shares
            self.peak[self.racer] = max(self.peak[self.racer], float(correct.mean()))
        views = self.best.val_acc < 0 and self.view_answers is not None
        if views:  # the blank selection is the probe's (each half-program's reference) ...
            correct = np.concatenate([fold.reference for fold in pair])  # type: ignore[misc]
        event = self._select(correct, self._blank_best, lambda acc: self._chosen(acc, verdicts))
        if views:  # ... then the blank program read with the views may take its place
            self._views_candidate()
        self.answers = [self._no_answers() for _ in (0, 1)]
        event.iteration = pair[0].iteration  # while racing, the job's is the laggard's
        if len(self.lrs) > 1:
            event.lr = self.lrs[self.racer]
        return event

    def _blank_best(self, acc: float) -> Best:
        """The blank program with the probe and the frequency mapping fitted on every
        labelled image's blank answer (the two halves' blank passes)."""
        answers = np.concatenate([a for k in (0, 1) for a in self.answers[k]["train"]])
        y = np.concatenate([fold.train.y for fold in self._pair(0)])
        crossfit = self._fit_baselines(answers.astype(np.float64), y)
        if crossfit is not None:  # the views candidate's reference: no second fit
            self._probe_oof = crossfit.oof_correct.astype(bool)
            self._probe_oof_prob = crossfit.oof_true_prob
        self.best_half = None
        probe = copy.deepcopy(self.baselines["probe"])
        return Best(acc, self.iteration, np.zeros(self.program.dim), probe)

    def _views_candidate(self) -> None:
        """The blank program read with the views replaces the probe as the best when, by
        k-fold cross-validation over every labelled image (the blank program is trained on
        none, so nothing is optimistic here), it is right at least as often and passes the
        sign test against the probe on each image's out-of-fold probability of its own
        class (the images where it gives the higher probability against those where the
        probe does). Probabilities, not verdicts: with the probe right on 13 of 15 images
        (textures3/lite0) no read-out can win the 4+ images the verdict test needs, while
        the probability of every image can speak. Scored on a read-out fitted on three
        quarters of the images, not on a half-program's half: with K·2 features and 5–20
        images per class, half the images left the view unseen (mnist10/lite0). Its
        accuracy is then the bar a program's cross-fitted accuracy must clear."""
        pair = self._pair(0)
        blank = np.concatenate([a for k in (0, 1) for a in self.answers[k]["train"]])
        views = np.concatenate([fold._views()["train"] for fold in pair])
        y = np.concatenate([fold.train.y for fold in pair])
        both = cross_fit_readout(
            np.concatenate([blank.astype(np.float64), views], axis=1), y, self.n_classes
        )
        p, v = self._probe_oof, both.oof_correct.astype(bool)
        p_prob, v_prob = self._probe_oof_prob, both.oof_true_prob
        assert p_prob is not None and v_prob is not None
        wins, losses = int((v_prob > p_prob).sum()), int((v_prob < p_prob).sum())
        if v.mean() >= p.mean() and sign_test_p(wins, losses) <= self.config.selection_p:
            self.best = Best(float(v.mean()), 0, np.zeros(self.program.dim), both.full)

    def _chosen(self, acc: float, verdicts: list[np.ndarray]) -> Best:
        """The half-program that won more images net against the probe on its own
        validation half, its read-out refitted on all its answers (same L2, warm start)."""
        assert self.reference is not None
        n1 = len(verdicts[0])  # half 0 validates on half 1's images: the reference's start
        refs = [self.reference[:n1], self.reference[n1:]]
        net = [
            int((v & ~r).sum()) - int((~v & r).sum()) for v, r in zip(verdicts, refs, strict=True)
        ]
        k = 0 if net[0] >= net[1] else 1
        fold = self._pair(self.racer)[k]
        assert fold.crossfit is not None
        full = fold.crossfit.full
        mapping = fit_readout(*self._joined(k), self.n_classes, full.l2, init=full)
        self.best_half = k
        return Best(acc, fold.iteration, fold.theta.copy(), mapping)

    @property
    def _training_phase(self) -> Phase:
        return Phase.FOLDS

    # ----------------------------------------------------------------- state
    def state(self) -> TrainerState:
        """``Trainer.state`` plus the half-programs' (see the class docstring)."""
        s = super().state()
        s["cross_fit"] = {
            "folds": [fold.state() for fold in self.folds],
            "active": self.active,
            "answers": self.answers,
            "best_half": -1 if self.best_half is None else self.best_half,
            "racer": self.racer,
            "alive": list(self.alive),
            "peak": list(self.peak),
        }
        return s

    def state_bytes(self) -> bytes:
        """As ``Trainer.state_bytes``: only between a tell and the next ask."""
        if any(fold._pending is not None for fold in self.folds):
            raise RuntimeError("serialise between iterations, not between ask() and tell()")
        return super().state_bytes()

    def load_state(self, data: bytes | TrainerState) -> None:
        """Continue from ``state_bytes()``."""
        s = state_io.loads(data) if isinstance(data, bytes) else data
        super().load_state(s)
        cf = s["cross_fit"]
        for fold, fold_state in zip(self.folds, cf["folds"], strict=True):
            fold.load_state(fold_state)
        self.active = int(cf["active"])
        self.answers = [
            {key: [np.asarray(a, dtype=np.float32) for a in part[key]] for key in ("train", "val")}
            for part in cf["answers"]
        ]
        best_half = int(cf["best_half"])
        self.best_half = None if best_half < 0 else best_half
        # checkpoints from before the race: one step size
        self.racer = int(cf.get("racer", 0))
        self.alive = [int(c) for c in cf.get("alive", [0])]
        self.peak = [float(p) for p in cf.get("peak", [-1.0])]
