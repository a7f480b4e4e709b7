"""The ask/tell trainer on a cheap deterministic oracle: plans, resume, white box."""

from collections.abc import Callable

import numpy as np
import pytest

from engine import state as state_io
from engine.mapping import cross_fit_readout, labels_per_class
from engine.program import Program
from engine.trainer import (
    Best,
    Event,
    Phase,
    Split,
    Trainer,
    TrainerConfig,
    sign_test_p,
    wins_needed,
)

K = 12  # source labels
RNG = np.random.default_rng(42)
W_ORACLE = RNG.normal(size=(16 * 16 * 3, K))


def oracle(frames: np.ndarray) -> np.ndarray:
    """A fixed random linear classifier on the 16×16 frame, softmaxed."""
    z = frames.reshape(len(frames), -1).astype(np.float64) @ W_ORACLE * 0.05
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def oracle_grad(frames, loss_grad):
    p = oracle(frames)
    _, g = loss_grad(p)
    # ∂L/∂x = J^T g with J the softmax-linear Jacobian
    s = g - (g * p).sum(axis=1, keepdims=True)
    gx = (p * s) @ W_ORACLE.T * 0.05
    return p, gx.reshape(frames.shape)


def data(n: int, seed: int, signal: float = 0.5, noise: float = 0.3) -> Split:
    r = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = r.uniform(0, noise, size=(n, 8, 8, 3)).astype(np.float32)
    x[np.arange(n), :, :, y] += signal  # the class lights one colour channel
    return Split(x, y)


# The engine has no defaults of its own (the product's are in app/config/defaults.py):
# every test run spells out its configuration, small enough to run in a blink.
CONFIG = {
    "estimator": "antithetic",
    "q": 3,
    "beta": 0.05,
    "scale": None,
    "optimizer": "adam",
    "lr": 0.05,
    "lr_decay": 1.0,
    "clip": None,
    "batch_size": 4,
    "iterations": 12,
    "eval_every": 5,
    "loss": "focal",
    "gamma": 2.0,
    "class_balance": True,
    "mapping": "frequency",
    "labels_per_class": 10,
    "remap_every": 0,
    "baselines": True,
    "validation": "holdout",
    "patience": 0,
    "selection_p": 1.0,
    "chunk": 7,
}


def make(seed: int = 7, hard: bool = False, **overrides) -> Trainer:
    """A trainer on the easy task (``hard``: the class signal 0.15 over noise 0.6, where
    the probe is right on 7 of the 9 validation images)."""
    cfg = TrainerConfig(**(CONFIG | overrides))
    prog = Program(16, 8, "bilinear", 4)
    d = (lambda n, s: data(n, s, signal=0.15, noise=0.6)) if hard else data
    return Trainer(cfg, prog, 3, K, d(24, 0), d(9, 1), d(15, 2), seed=seed)


def drive(
    trainer: Trainer, stop_after: int | None = None, events: list[Event] | None = None
) -> dict[str, int]:
    """Answer the trainer's asks (all, or ``stop_after`` of them); images sent by purpose.
    The events the tells return are appended to ``events`` when given."""
    sent: dict[str, int] = {}
    tells = 0
    while not trainer.done and (stop_after is None or tells < stop_after):
        ask = trainer.ask()
        frames = ask.frames.copy()
        if ask.loss_grad is not None:
            p, g = oracle_grad(ask.frames, ask.loss_grad)
            event = trainer.tell(p, input_grad=g)
        else:
            event = trainer.tell(oracle(ask.frames))
        np.testing.assert_array_equal(ask.frames, frames)  # tell leaves the ask alone
        sent[ask.purpose] = sent.get(ask.purpose, 0) + len(ask.frames)
        tells += 1
        if events is not None and event is not None:
            events.append(event)
    return sent


def accuracy_on(t: Trainer, split: Split, theta: np.ndarray, mapping) -> float:
    """Accuracy of (θ, mapping) on a split, computed here rather than by the trainer."""
    frames = t.program.apply(t.program.embed(split.x), theta)
    return float((mapping.predict(oracle(frames)) == split.y).mean())


@pytest.mark.parametrize("mapping", ["frequency", "learned", "random"])
@pytest.mark.parametrize("estimator", ["bar", "antithetic", "spsa", "white_box", "cma"])
def test_plan_matches_what_is_sent(mapping: str, estimator: str) -> None:
    t = make(mapping=mapping, estimator=estimator)
    plan = t.planned_queries()
    sent = drive(t)
    assert t.done and t.iteration == 12
    if not t.best.theta.any():  # blank stayed best: its test pass served the baselines
        plan["baseline"] -= len(t.test)
    assert {k: v for k, v in plan.items() if v} == sent
    assert t.told == sum(sent.values())


@pytest.mark.parametrize("mapping", ["frequency", "learned", "random"])
def test_results_are_the_best_program_and_the_baselines_on_the_test_set(mapping: str) -> None:
    # A large step for long enough that the last program is not the best one (frequency:
    # iteration 10 of 30; random: 10; learned: the blank program), so only a test pass under
    # the best program gives these numbers.
    t = make(mapping=mapping, iterations=30, lr=0.2)
    drive(t)
    theta, best_mapping = t.best_program()
    assert t.results["test_accuracy"] == accuracy_on(t, t.test, theta, best_mapping)
    blank = np.zeros_like(theta)
    for name, m in t.baselines.items():
        assert t.results[f"baseline_{name}"] == accuracy_on(t, t.test, blank, m)
    assert set(t.baselines) == {"frequency", "probe"}


@pytest.mark.parametrize("estimator", ["antithetic", "cma"])
def test_resume_from_serialised_state_is_bit_identical(estimator: str) -> None:
    """CMA-ES: its search state travels in the checkpoint and its draws come from the
    trainer's generator, so a resumed search asks the very same candidates."""
    straight = make(mapping="learned", estimator=estimator)
    drive(straight)
    for cut in (1, 2, 3, 9, 17):
        first = make(mapping="learned", estimator=estimator)
        drive(first, stop_after=cut)
        resumed = make(mapping="learned", estimator=estimator)
        resumed.load_state(first.state_bytes())
        drive(resumed)
        np.testing.assert_array_equal(resumed.theta, straight.theta)
        np.testing.assert_array_equal(resumed.best.theta, straight.best.theta)
        assert resumed.results == straight.results
        assert resumed.state_bytes() == straight.state_bytes()


@pytest.mark.parametrize("mapping", ["frequency", "learned"])
def test_state_round_trips_bit_for_bit_in_every_phase(mapping: str) -> None:
    t = make(mapping=mapping)
    seen = set()
    while True:
        data = t.state_bytes()
        again = make(mapping=mapping)
        again.load_state(data)
        assert again.phase is t.phase and again.best.iteration == t.best.iteration
        assert again.state_bytes() == data
        seen.add(t.phase)
        if t.done:
            break
        drive(t, stop_after=1)
    # Only the learned read-out refits; with it the blank program stays best here, while
    # the frequency mapping's best is a trained program.
    # (FOLDS is the cross-fitted trainer's: tests/unit/test_cross_fit.py; VIEWS a job's
    # with views: tests/unit/test_views.py)
    never = {Phase.FOLDS, Phase.VIEWS} | ({Phase.REFIT} if mapping == "frequency" else set())
    assert seen == set(Phase) - never
    assert t.best.iteration > 0 if mapping == "frequency" else t.best.iteration == 0


def test_the_checkpoint_keeps_its_plain_layout() -> None:
    """Checkpoints written before Phase and Best existed must load: the phase is stored as
    its plain string and the best program as the same four keys."""
    t = make(mapping="learned")
    drive(t, stop_after=10)
    s = state_io.loads(t.state_bytes())
    assert type(s["phase"]) is str and s["phase"] == t.phase.value
    assert list(s["best"]) == ["val_acc", "iteration", "theta", "mapping"]
    assert type(s["best"]["val_acc"]) is float and type(s["best"]["iteration"]) is int


def test_state_cannot_be_taken_between_ask_and_tell() -> None:
    t = make()
    while t.phase != Phase.TRAIN:
        drive(t, stop_after=1)
    t.ask()
    with pytest.raises(RuntimeError):
        t.state_bytes()


def test_budget_fitting_and_the_minimum_it_needs() -> None:
    t = make(iterations=1000)
    floor = sum(t.planned_queries(0).values())
    with pytest.raises(ValueError, match=str(floor)):
        t.fit_iterations(floor - 1)
    n = t.fit_iterations(5000)
    assert sum(t.planned_queries(n).values()) <= 5000 < sum(t.planned_queries(n + 1).values())


@pytest.mark.parametrize("seed", [0, 3, 7])  # 3 is the weakest of seeds 0-7
def test_training_improves_on_an_easy_task_and_keeps_the_best(seed: int) -> None:
    t = make(seed=seed, estimator="white_box", iterations=40, lr=0.1, mapping="frequency")
    events: list[Event] = []
    drive(t, events=events)
    blank = np.zeros_like(t.theta)
    # Measured over seeds 0-7: the blank program scores 6/9 on validation and 8/15 on test;
    # the best program 8/9 or 9/9 and at least 11/15.
    assert t.best.val_acc > accuracy_on(t, t.val, blank, t.baselines["frequency"]) + 0.2
    assert t.results["test_accuracy"] > t.results["baseline_frequency"] + 0.15
    # The best is the first validation pass with the highest accuracy, θ as it was then.
    scores = [(e.values["val_acc"], -e.iteration) for e in events if e.kind == "validation"]
    top, first = max(scores)
    assert (t.best.val_acc, t.best.iteration) == (top, -first) and t.best.iteration > 0
    assert accuracy_on(t, t.val, t.best.theta, t.best.mapping) == t.best.val_acc


@pytest.mark.parametrize("mapping", ["frequency", "learned", "random"])
def test_zero_iterations_cost_exactly_what_the_probe_costs(mapping: str) -> None:
    t = make(mapping=mapping, iterations=0)
    sent = drive(t)
    # Every labelled image once (the probe is fitted on training + validation), test once.
    labelled = len(t.train) + len(t.val)
    assert sum(sent.values()) == labelled + len(t.test) == sum(t.planned_queries().values())
    # The blank program is the job's program; its score is its own mapping's.
    blank = np.zeros_like(t.theta)
    assert t.results["test_accuracy"] == accuracy_on(t, t.test, blank, t.best_program()[1])
    if mapping != "random":
        baseline = "baseline_probe" if mapping == "learned" else "baseline_frequency"
        assert t.results["test_accuracy"] == t.results[baseline]


def test_a_random_mapping_is_a_disjoint_assignment_fixed_by_the_seed() -> None:
    m = labels_per_class(K, 3, CONFIG["labels_per_class"])
    assert m == K // 3  # 10 wanted, 12 labels for 3 classes: 4 each
    mappings = {seed: make(seed=seed, mapping="random").mapping.indices for seed in (1, 2)}
    for indices in mappings.values():
        assert indices.shape == (3, m)
        assert sorted(indices.ravel().tolist()) == list(range(K))  # each label, one class
    assert not np.array_equal(mappings[1], mappings[2])
    # Training on it is deterministic per seed, and the seed matters.
    runs = {}
    for seed in (1, 1, 2):
        t = make(seed=seed, mapping="random")
        drive(t)
        np.testing.assert_array_equal(t.mapping.indices, mappings[seed])  # never remapped
        if seed in runs:
            np.testing.assert_array_equal(t.theta, runs[seed].theta)
            assert t.results == runs[seed].results
        runs[seed] = t
    assert not np.array_equal(runs[1].theta, runs[2].theta)


def test_a_learned_readout_scores_each_training_image_out_of_fold() -> None:
    """The training loss sees each image through the read-out fitted without its fold."""
    t = make(mapping="learned")
    while t.phase == Phase.BLANK_TRAIN:
        drive(t, stop_after=1)
    cf = t.crossfit
    idx = np.array([9, 0, 20, 6, 4, 15, 3, 13])  # folds mixed, out of order
    assert len(set(cf.fold_of[idx].tolist())) == 4
    src = oracle(t.program.embed(t.train.x[idx]))
    h = t._train_target_probs(src, idx)
    for row, i in enumerate(idx):
        own = cf.folds[cf.fold_of[i]].target_probs(src[row : row + 1])[0]
        np.testing.assert_allclose(h[row], own, rtol=1e-12, atol=0)
    assert not np.allclose(h, cf.full.target_probs(src))


def test_a_blank_best_program_shares_its_test_pass_with_the_baselines() -> None:
    t = make(mapping="learned", lr=1e-12)  # the program cannot move: blank stays best
    sent = drive(t)
    planned = t.planned_queries()
    assert sent["test"] == len(t.test) and "baseline" not in sent
    assert sum(sent.values()) == sum(planned.values()) - planned["baseline"]


# ------------------------------------------------------- validation, selection, early stop
def test_every_trainer_validates() -> None:
    empty = Split(np.zeros((0, 8, 8, 3), np.float32), np.zeros(0, np.int64))
    prog = Program(16, 8, "bilinear", 4)
    with pytest.raises(ValueError, match="holdout validation needs validation images"):
        Trainer(TrainerConfig(**CONFIG), prog, 3, K, data(24, 0), empty, data(15, 2))
    cv = CONFIG | {"validation": "cross_validation", "mapping": "learned"}
    with pytest.raises(ValueError, match="no validation split"):
        Trainer(TrainerConfig(**cv), prog, 3, K, data(24, 0), data(9, 1), data(15, 2))
    with pytest.raises(ValueError, match="learned read-out"):
        TrainerConfig(**(cv | {"mapping": "frequency"}))


def test_the_probe_is_fitted_on_training_and_validation_images() -> None:
    """The blank program's candidate (and the probe baseline) is the read-out fitted on every
    labelled image: the blank answers of the training and the validation sets together."""
    t = make(mapping="learned", iterations=0)
    answers: dict[str, list[np.ndarray]] = {}
    while not t.done:
        ask = t.ask()
        probs = oracle(ask.frames)
        answers.setdefault(ask.purpose, []).append(probs)
        t.tell(probs)
    both = np.concatenate(answers["mapping"] + answers["validation"]).astype(np.float32)
    y = np.concatenate([t.train.y, t.val.y])
    probe = cross_fit_readout(both.astype(np.float64), y, 3).full
    _, chosen = t.best_program()
    np.testing.assert_array_equal(chosen.state()["weight"], probe.state()["weight"])
    np.testing.assert_array_equal(t.baselines["probe"].state()["weight"], probe.state()["weight"])


def test_a_chosen_programs_readout_is_refitted_on_training_and_validation() -> None:
    """When a validation pass chooses a program, its read-out is refitted on the training
    answers of the refit pass before it and the validation answers together (standardised
    on both), at the L2 strength cross-validation chose."""
    t = make(mapping="learned")
    while not (t.phase == Phase.VALIDATE and t.iteration == 5):
        drive(t, stop_after=1)
    val_answers = oracle(t.program.apply(t.program.embed(t.val.x), t.theta))
    both = np.concatenate([t.train_answers.astype(np.float64), val_answers])
    chosen = t._final_mapping(val_answers)
    feats = np.log(both + 1e-6)
    np.testing.assert_allclose(chosen.state()["mu"], feats.mean(axis=0), rtol=1e-12)
    assert chosen.l2 == t.crossfit.full.l2
    y = np.concatenate([t.train.y, t.val.y])
    assert (chosen.predict(both) == y).mean() == 1.0  # fitted on these 33 images


def test_sign_test() -> None:
    assert sign_test_p(0, 0) == 1.0
    assert sign_test_p(3, 0) == 0.125
    assert sign_test_p(5, 0) == 0.03125
    assert sign_test_p(4, 1) == pytest.approx(6 / 32)
    assert wins_needed(0.05) == 5 and wins_needed(0.2) == 3 and wins_needed(1.0) == 1


def test_a_program_must_pass_the_sign_test_against_the_probe() -> None:
    """With selection_p 1.0 a trained program is chosen on this task; the same run with a
    level no 9-image validation set can reach keeps the probe (the runs are the same until
    the choice: the selection rule draws nothing)."""
    free = make(mapping="frequency", iterations=30, lr=0.2)
    drive(free)
    assert free.best.iteration > 0
    strict = make(mapping="frequency", iterations=30, lr=0.2, selection_p=0.001)
    drive(strict)
    np.testing.assert_array_equal(strict.theta, free.theta)
    assert strict.best.iteration == 0 and not strict.best.theta.any()
    assert strict.results["test_accuracy"] == strict.results["baseline_frequency"]


def test_looks_beyond_the_free_ones_spend_the_selection_level() -> None:
    """free_looks 2: the first two evaluation points after the blank one test at
    selection_p, the n-th after them at selection_p × 2 / n; a run that chose a program at
    its free looks makes the same choice, one whose choice came later may not."""
    t = make(mapping="frequency", iterations=30, lr=0.2, selection_p=0.05, free_looks=2)
    levels = []
    for looks in range(5):
        t.looks = looks
        levels.append(t._selection_level)
    assert levels == [0.05, 0.05, 0.05, pytest.approx(0.1 / 3), pytest.approx(0.025)]
    free = make(mapping="frequency", iterations=30, lr=0.2, selection_p=0.5)
    drive(free)
    spent = make(mapping="frequency", iterations=30, lr=0.2, selection_p=0.5, free_looks=1)
    drive(spent)
    np.testing.assert_array_equal(spent.theta, free.theta)  # selection draws nothing
    assert spent.looks == free.looks == 30 // CONFIG["eval_every"]
    assert spent.best.iteration <= free.best.iteration


def test_a_job_that_cannot_beat_the_probe_returns_it_and_stops_spending() -> None:
    """The program cannot move (lr ≈ 0): with patience the job stops after that many
    evaluation points without a better program, returns the probe, and sends less than
    planned."""
    t = make(mapping="learned", iterations=40, eval_every=5, lr=1e-12, patience=2, hard=True)
    assert t.reference is None
    planned = sum(t.planned_queries().values())
    events: list[Event] = []
    sent = drive(t, events=events)
    assert t.done and t.iteration == 10  # evaluation points at 5 and 10, none better
    assert "no program has beaten the linear probe" in t.stop_reason
    assert t.best.iteration == 0 and not t.best.theta.any()
    assert t.results["test_accuracy"] == t.results["baseline_probe"]
    assert sum(sent.values()) < planned and "baseline" not in sent
    assert [e.iteration for e in events if e.kind == "validation"] == [0, 5, 10]
    assert t.reference.mean() < 1  # the probe is not perfect: there was room to beat it
    never = make(mapping="learned", iterations=40, eval_every=5, lr=1e-12, patience=0, hard=True)
    drive(never)
    assert never.iteration == 40 and never.stop_reason is None


def test_a_probe_no_program_could_be_shown_to_beat_stops_at_once() -> None:
    """The probe is wrong on 2 of the 9 validation images: no program can pass a sign test
    at p ≤ 0.05 against it on these images (that takes 5 wins), so nothing is trained."""
    t = make(mapping="learned", iterations=40, patience=3, selection_p=0.05, hard=True)
    sent = drive(t)
    assert t.iteration == 0 and t.stop_reason is not None
    wrong = int((~t.reference).sum())
    assert wrong < wins_needed(0.05)
    assert f"wrong on only {wrong} of the {len(t.val)} validation images" in t.stop_reason
    assert "training" not in sent


def test_the_projected_gain_rule() -> None:
    """A program 1 validation image better after 20 iterations, 4 iterations left: at that
    rate the rest would gain less than one image, so the job stops."""
    t = make(mapping="learned", iterations=24, patience=10)
    t.reference = np.array([True] * 5 + [False] * 4)
    t.best = Best(6 / 9, 20, np.ones_like(t.theta), None)
    t.iteration = 20
    assert "would not gain one more" in t._stop_reason()
    t.set_iterations(1000)  # with 980 left the same rate promises more than one image
    assert t._stop_reason() is None
    t.best = Best(1.0, 20, np.ones_like(t.theta), None)
    assert "right on all 9 validation images" in t._stop_reason()


def test_cross_validation_scores_programs_out_of_fold_without_queries() -> None:
    empty = Split(np.zeros((0, 8, 8, 3), np.float32), np.zeros(0, np.int64))
    cfg = TrainerConfig(**(CONFIG | {"mapping": "learned", "validation": "cross_validation"}))
    t = Trainer(cfg, Program(16, 8, "bilinear", 4), 3, K, data(24, 0), empty, data(15, 2), seed=7)
    events: list[Event] = []
    sent = drive(t, events=events)
    assert "validation" not in sent and t.planned_queries()["validation"] == 0
    vals = [e for e in events if e.kind == "validation"]
    assert [e.iteration for e in vals] == [0, 5, 10, 12]
    assert vals[-1].values["val_acc"] == float(t.crossfit.oof_correct.mean())
    assert len(t.reference) == len(t.train)


def test_a_learned_readout_works_with_fewer_oracle_labels_than_classes() -> None:
    """3 classes on a 2-label oracle (the 2-concept view): no frequency-mapping baseline
    (it needs a label per class), but the read-out, the probe and training run."""
    two = Program(16, 8, "bilinear", 4)
    w = RNG.normal(size=(16 * 16 * 3, 2))

    def oracle2(frames: np.ndarray) -> np.ndarray:
        z = frames.reshape(len(frames), -1).astype(np.float64) @ w * 0.05
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    t = Trainer(
        TrainerConfig(**(CONFIG | {"mapping": "learned"})),
        two, 3, 2, data(24, 0), data(9, 1), data(15, 2), seed=7,
    )  # fmt: skip
    while not t.done:
        t.tell(oracle2(t.ask().frames))
    assert set(t.baselines) == {"probe"} and "test_accuracy" in t.results
    with pytest.raises(ValueError, match="at least as many oracle labels as classes"):
        f = Trainer(TrainerConfig(**CONFIG), two, 3, 2, data(24, 0), data(9, 1), data(15, 2))
        while not f.done:
            f.tell(oracle2(f.ask().frames))


@pytest.mark.parametrize(
    "variant",
    [
        {"patience": 2, "selection_p": 0.2, "lr": 0.2, "iterations": 30},
        {"validation": "cross_validation", "patience": 3, "iterations": 30},
        {"patience": 4, "selection_p": 0.3, "lr": 0.2, "iterations": 30, "free_looks": 1},
    ],
)
def test_resume_is_bit_identical_with_early_stopping_and_selection(variant: dict) -> None:
    val = data(9, 1)
    if variant.get("validation") == "cross_validation":
        val = Split(np.zeros((0, 8, 8, 3), np.float32), np.zeros(0, np.int64))

    def build() -> Trainer:
        cfg = TrainerConfig(**(CONFIG | {"mapping": "learned"} | variant))
        return Trainer(cfg, Program(16, 8, "bilinear", 4), 3, K, data(24, 0), val, data(15, 2), 7)

    check_resume(build, (1, 4, 9, 13))


def round_trip_phases(build: Callable[[], Trainer]) -> set[Phase]:
    """Drive a trainer one tell at a time; before each, its state rebuilt into a fresh
    trainer must serialise to the same bytes. Returns the phases it passed through."""
    t = build()
    seen = set()
    while True:
        data = t.state_bytes()
        again = build()
        again.load_state(data)
        assert again.state_bytes() == data
        seen.add(t.phase)
        if t.done:
            return seen
        drive(t, stop_after=1)


def check_resume(build: Callable[[], Trainer], cuts: tuple[int, ...]) -> None:
    """A trainer stopped after each number of tells in ``cuts``, serialised and rebuilt,
    ends exactly where one run straight through ends."""
    straight = build()
    drive(straight)
    for cut in cuts:
        first = build()
        drive(first, stop_after=cut)
        resumed = build()
        resumed.load_state(first.state_bytes())
        drive(resumed)
        assert resumed.state_bytes() == straight.state_bytes()
        assert resumed.stop_reason == straight.stop_reason
        assert resumed.results == straight.results


def test_a_checkpoint_from_before_validation_changes_loads() -> None:
    """Checkpoints written before the validation fields existed resume with the old
    behaviour (no early stop, any higher accuracy wins)."""
    t = make(mapping="learned")
    drive(t, stop_after=6)
    s = state_io.loads(t.state_bytes())
    for key in ("validation", "patience", "selection_p"):
        del s["config"][key]
    for key in ("reference", "train_answers", "since_best", "stop_reason"):
        del s[key]
    del s["crossfit"]["oof_correct"]
    old = make(mapping="learned", selection_p=0.5, patience=4)
    old.load_state(s)
    assert (old.config.patience, old.config.selection_p) == (0, 1.0)
    drive(old)
    assert old.done and old.iteration == 12
