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
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np

from engine import state as state_io
from engine.mapping import fit_readout
from engine.trainer import Ask, Best, Event, Phase, Split, Trainer, TrainerState

HALVES_STREAM = 10  # the generator stream of the split into halves: [seed, 10]
FOLD_STREAM = 11  # each half-program's generator: [seed, 11, k]
#: The half-programs never choose among their own checkpoints (the joint selection does), so
#: their own sign test is set never to pass: no read-out refit is spent on it.
NEVER = 1e-12


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
    next validation pass, then half 1 likewise, then the joint selection) → ``TEST`` →
    [``BLANK_TEST``] → ``DONE``, the last three exactly as ``Trainer``'s. The checkpoint is
    ``Trainer``'s plus ``cross_fit``: both half-programs' states, which one is being driven,
    and the answers of their latest evaluation passes."""

    def _prepare(self, seed: int) -> None:
        """The two half-programs (``Trainer.__init__`` has checked the splits)."""
        config, program, train, test = self.config, self.program, self.train, self.test
        n_classes, n_source = self.n_classes, self.n_source
        if config.validation != "cross_fit":
            raise ValueError("CrossFitTrainer runs data.validation 'cross_fit' only")
        counts = np.bincount(train.y, minlength=n_classes)
        if counts.min() < 2:
            raise ValueError("cross-fitted programs need at least 2 training images per class")
        self.half = halves(train.y, seed)
        inner = dataclasses.replace(
            config, validation="holdout", patience=0, selection_p=NEVER, baselines=False
        )
        empty = Split(test.x[:0], test.y[:0])
        self.folds: list[Trainer] = []
        for k in (0, 1):
            mine, other = self._part(k), self._part(1 - k)
            fold = Trainer(inner, program, n_classes, n_source, mine, other, empty, seed)
            fold.rng = np.random.default_rng([seed, FOLD_STREAM, k])
            self.folds.append(fold)
        self.phase = Phase.FOLDS
        self.active = 0  # the half-program being driven
        # Each half-program's answers of its latest evaluation: "train" (its own half, from
        # the blank or refit pass) and "val" (the other half), as chunks while a pass is in
        # progress.
        self.answers: list[dict[str, list[np.ndarray]]] = [self._no_answers() for _ in (0, 1)]
        self.best_half: int | None = None  # which half-program ``best`` is

    def _part(self, k: int) -> Split:
        sel = self.half == k
        return Split(self.train.x[sel], self.train.y[sel])

    @staticmethod
    def _no_answers() -> dict[str, list[np.ndarray]]:
        return {"train": [], "val": []}

    # ----------------------------------------------------------------- plan
    def planned_queries(self, iterations: int | None = None) -> dict[str, int]:
        """Both half-programs' plans (blank pass, training, refits, validation), then the
        test pass and the baselines' as ``Trainer.planned_queries`` counts them."""
        it = self.config.iterations if iterations is None else iterations
        plan = {"mapping": 0, "baseline": 0, "training": 0, "validation": 0, "test": 0}
        for fold in self.folds:
            for purpose, n in fold.planned_queries(it).items():
                plan[purpose] += n
        plan["mapping"] -= len(self.folds[1].train)  # replayed (``_replay_blank``)
        plan["validation"] -= len(self.folds[1].val)
        plan["test"] += len(self.test)
        if self.config.baselines and it:
            plan["baseline"] += len(self.test)
        return plan

    @property
    def per_iteration(self) -> int:
        """Images one iteration of both half-programs sends (at most)."""
        return sum(fold.per_iteration for fold in self.folds)

    def set_iterations(self, iterations: int) -> None:
        """Shorten (or lengthen) the run of both half-programs."""
        super().set_iterations(iterations)
        for fold in self.folds:
            fold.set_iterations(iterations)

    # ----------------------------------------------------------------- ask / tell
    def ask(self) -> Ask:
        """The driven half-program's next frames, or ``Trainer``'s test passes."""
        if self.phase == Phase.FOLDS:
            return self.folds[self.active].ask()
        return super().ask()

    def tell(self, probs: np.ndarray, input_grad: np.ndarray | None = None) -> Event | None:
        """Answers to the last ask. A half-program's validation event is not passed on; the
        joint one, after half 1's, is."""
        if self.phase != Phase.FOLDS:
            return super().tell(probs, input_grad)
        fold = self.folds[self.active]
        before = fold.phase
        event = fold.tell(probs, input_grad)  # validates the answers before they count
        self.told += len(probs)
        self.iteration = min(f.iteration for f in self.folds)
        if before in (Phase.BLANK_TRAIN, Phase.REFIT, Phase.VALIDATE):
            key = "val" if before == Phase.VALIDATE else "train"
            self.answers[self.active][key].append(np.asarray(probs, dtype=np.float32))
        if event is not None and event.kind == "iteration":
            event.half = self.active  # both half-programs count their own iterations
        if event is None or event.kind != "validation":
            return event
        if self.active == 0:
            self.active = 1
            if self.folds[1].phase != Phase.BLANK_TRAIN:
                return None
            self._replay_blank()
        self.active = 0
        return self._select_joint()

    def _replay_blank(self) -> None:
        """Half 1's blank pass and blank validation without a query: they are half 0's blank
        validation and blank pass (the same frames), told again in half 1's chunks."""
        fold, mine = self.folds[1], self.answers[1]
        replay = {
            Phase.BLANK_TRAIN: ("train", np.concatenate(self.answers[0]["val"])),
            Phase.VALIDATE: ("val", np.concatenate(self.answers[0]["train"])),
        }
        while fold.phase in replay:
            key, answers = replay[fold.phase]
            cursor, n = fold.cursor, len(fold.ask().frames)
            chunk = answers[cursor : cursor + n]
            mine[key].append(chunk)
            fold.tell(chunk)

    def _joined(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Half-program k's answers for every labelled image (its own half, then the other)
        and their labels."""
        a = self.answers[k]
        fold = self.folds[k]
        return (
            np.concatenate(a["train"] + a["val"]).astype(np.float64),
            np.concatenate([fold.train.y, fold.val.y]),
        )

    def _select_joint(self) -> Event:
        """Both half-programs have validated at this iteration: select over every labelled
        image (``Trainer._select``), then start the next evaluation's answers afresh."""
        verdicts = []
        for k, fold in enumerate(self.folds):
            val = np.concatenate(self.answers[k]["val"]).astype(np.float64)
            verdicts.append(fold._mapping().predict(val) == fold.val.y)
        correct = np.concatenate(verdicts)
        event = self._select(correct, self._blank_best, lambda acc: self._chosen(acc, verdicts))
        self.answers = [self._no_answers() for _ in (0, 1)]
        return event

    def _blank_best(self, acc: float) -> Best:
        """The blank program with the probe and the frequency mapping fitted on every
        labelled image's blank answer (the two halves' blank passes)."""
        answers = np.concatenate([a for k in (0, 1) for a in self.answers[k]["train"]])
        y = np.concatenate([fold.train.y for fold in self.folds])
        self._fit_baselines(answers.astype(np.float64), y)
        self.best_half = None
        probe = copy.deepcopy(self.baselines["probe"])
        return Best(acc, self.iteration, np.zeros(self.program.dim), probe)

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
        fold = self.folds[k]
        assert fold.crossfit is not None
        full = fold.crossfit.full
        mapping = fit_readout(*self._joined(k), self.n_classes, full.l2, init=full)
        self.best_half = k
        return Best(acc, self.iteration, fold.theta.copy(), mapping)

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
