"""Cross-fitted programs (engine.cross_fit): every labelled image validates, by a program
that never trained on it; the plan, resume and selection hold as for one program."""

import numpy as np
import pytest

from engine.cross_fit import CrossFitTrainer, halves
from engine.program import Program
from engine.trainer import Event, Phase, Split, Trainer, TrainerConfig
from tests.unit.test_trainer import (
    CONFIG,
    K,
    accuracy_on,
    check_resume,
    data,
    drive,
    oracle,
    round_trip_phases,
)

NO_VAL = Split(np.zeros((0, 8, 8, 3), np.float32), np.zeros(0, np.int64))
CF = CONFIG | {"mapping": "learned", "validation": "cross_fit"}


def make(seed: int = 7, n: int = 30, **overrides) -> CrossFitTrainer:
    cfg = TrainerConfig(**(CF | overrides))
    prog = Program(16, 8, "bilinear", 4)
    return CrossFitTrainer(cfg, prog, 3, K, data(n, 0), NO_VAL, data(15, 2), seed=seed)


def test_the_halves_are_stratified_disjoint_and_drawn_from_the_seed() -> None:
    y = np.array([0] * 5 + [1] * 4 + [2] * 2)
    h = halves(y, 3)
    for j, n in ((0, 5), (1, 4), (2, 2)):
        assert sorted(np.bincount(h[y == j], minlength=2)) == sorted([(n + 1) // 2, n // 2])
    np.testing.assert_array_equal(h, halves(y, 3))
    assert any(not np.array_equal(h, halves(y, s)) for s in range(4, 10))


def test_each_half_program_trains_on_its_half_and_validates_on_the_other() -> None:
    t = make()
    a, b = t.folds
    assert len(a.train) + len(b.train) == len(t.train) == 30
    np.testing.assert_array_equal(a.train.x, b.val.x)
    np.testing.assert_array_equal(b.train.x, a.val.x)
    assert not np.array_equal(a.rng.random(3), b.rng.random(3))  # their own draws


@pytest.mark.parametrize(
    "estimator, race",
    [("antithetic", ()), ("white_box", ()), ("cma", ()), ("antithetic", (0.01, 0.2))],
)
def test_plan_matches_what_is_sent(estimator: str, race: tuple[float, ...]) -> None:
    t = make(estimator=estimator, lr_race=race)
    plan = t.planned_queries()
    sent = drive(t)
    assert t.done and t.iteration == 12
    if not t.best.theta.any():
        plan["baseline"] -= len(t.test)
    assert {k: v for k, v in plan.items() if v} == sent
    assert t.told == sum(sent.values())
    # the blank program once per image (every other half-program's blank passes are the
    # first's answers again), then both programs of every step size still racing refit on
    # their own half and validate on the other: at 5 (the rung), then the survivor at 10, 12
    assert sent["mapping"] == 15
    assert sent["validation"] == 15 + (len(race) + 3) * 30


def test_the_blank_program_costs_what_the_probe_costs() -> None:
    t = make(iterations=0)
    sent = drive(t)
    assert sent == {"mapping": 15, "validation": 15, "test": 15}  # every image once
    assert sum(t.planned_queries(0).values()) == 45


def test_every_labelled_image_is_scored_at_every_evaluation() -> None:
    t = make(iterations=10)
    events: list[Event] = []
    drive(t, events=events)
    validations = [e for e in events if e.kind == "validation"]
    assert [e.iteration for e in validations] == [0, 5, 10]  # one joint event each
    assert t.reference is not None and len(t.reference) == 30
    for e in validations:  # an accuracy over 30 images
        assert round(e.values["val_acc"] * 30, 9) == round(e.values["val_acc"] * 30)


def test_each_half_program_counts_its_own_iterations_and_says_which() -> None:
    """Iteration events name their half-program (metrics.jsonl's ``half``), and the curve
    draws a loss line for each instead of one zigzagging between them."""
    from app.jobs.artifacts import program_lines

    t = make()
    events: list[Event] = []
    drive(t, events=events)
    its = [e for e in events if e.kind == "iteration"]
    assert {e.half for e in its} == {0, 1}
    for half in (0, 1):
        assert [e.iteration for e in its if e.half == half] == list(range(1, t.iteration + 1))
    rows = [{"half": e.half, "queries": i, "loss": e.values["loss"]} for i, e in enumerate(its)]
    lines = program_lines(rows, "loss")
    assert set(lines) == {"half-program 0", "half-program 1"}
    assert lines["half-program 1"][1] == [e.values["loss"] for e in its if e.half == 1]
    assert set(program_lines([{"queries": 1, "loss": 0.5}], "loss")) == {None}


def test_the_probe_is_fitted_on_every_labelled_image() -> None:
    t = make(iterations=0)
    drive(t)
    probe = t.baselines["probe"]
    blank = np.zeros(t.program.dim)
    # refitted on all 30 images' blank answers, the probe classifies them nearly all right
    assert accuracy_on(t, t.train, blank, probe) >= 0.9
    assert t.results["test_accuracy"] == accuracy_on(t, t.test, blank, probe)
    assert t.best_half is None


def test_a_chosen_program_is_one_half_with_a_readout_on_every_image() -> None:
    # a hard task and a long, loose run, so that a program is chosen over the probe
    def hard(n: int, s: int) -> Split:
        return data(n, s, signal=0.15, noise=0.6)

    cfg = TrainerConfig(**(CF | {"iterations": 40, "lr": 0.2, "selection_p": 1.0}))
    for seed in range(6):
        t = CrossFitTrainer(
            cfg, Program(16, 8, "bilinear", 4), 3, K, hard(30, 0), NO_VAL, hard(15, 2), seed=seed
        )
        drive(t)
        if t.best_half is not None:
            break
    assert t.best_half is not None, "no seed chose a program"
    theta, mapping = t.best_program()
    assert theta.any()
    # the θ of one of the two half-programs as it was at the chosen evaluation point
    assert t.best.iteration > 0
    assert mapping.l2 == t.folds[t.best_half].crossfit.full.l2
    # its read-out is fitted on the answers of all 30 images under that θ
    frames = t.program.apply(t.program.embed(t.train.x), theta)
    probs = oracle(frames)
    from engine.mapping import fit_readout

    order = np.concatenate(
        [np.flatnonzero(t.half == t.best_half), np.flatnonzero(t.half != t.best_half)]
    )
    again = fit_readout(probs[order], t.train.y[order], 3, mapping.l2)
    assert (again.predict(probs) == mapping.predict(probs)).mean() >= 0.9
    assert t.results["test_accuracy"] == accuracy_on(t, t.test, theta, mapping)


@pytest.mark.parametrize("race", [(), (0.2,)])
def test_resume_is_bit_identical(race: tuple[float, ...]) -> None:
    def build() -> CrossFitTrainer:
        return make(iterations=12, patience=2, selection_p=0.2, lr_race=race)

    check_resume(build, (1, 2, 3, 8, 15, 21, 30))


def test_a_race_trains_every_step_size_up_to_the_rung_then_only_the_best() -> None:
    """Each step size trains its own pair of half-programs, in turn, one evaluation point at
    a time; after the rung (the first evaluation point at or after a third of the run) only
    the one whose programs reached the highest cross-fitted accuracy goes on."""
    from app.jobs.artifacts import program_lines

    t = make(iterations=30, lr_race=(0.005, 0.5))
    assert t.lrs == (0.05, 0.005, 0.5) and len(t.folds) == 6 and t.rung() == 10
    for c in range(3):  # the same halves for every step size, and its own step and draws
        a, b = t._pair(c)
        np.testing.assert_array_equal(a.train.x, t.folds[0].train.x)
        np.testing.assert_array_equal(b.train.x, t.folds[1].train.x)
        assert a.config.lr == b.config.lr == t.lrs[c]
    assert not np.array_equal(t.folds[0].rng.random(2), t.folds[2].rng.random(2))
    events: list[Event] = []
    drive(t, events=events)
    kept = max(range(3), key=lambda c: (t.peak[c], -c))
    assert t.kept_lr == t.lrs[kept] and t.alive == [kept]
    assert all(p > 0 for p in t.peak)
    its = [e for e in events if e.kind == "iteration"]
    for c, lr in enumerate(t.lrs):
        for half in (0, 1):
            seen = [e.iteration for e in its if e.lr == lr and e.half == half]
            assert seen == list(range(1, (30 if c == kept else 10) + 1))
    # driven in turn: step size 0's first five iterations (both halves) come before 1's
    order = [e.lr for e in its if e.iteration == 1]
    assert order == [0.05, 0.05, 0.005, 0.005, 0.5, 0.5]
    # one joint validation per step size at 5 and 10, then the survivor's at 15 … 30
    validations = [e.iteration for e in events if e.kind == "validation"]
    assert validations == [0, 5, 5, 5, 10, 10, 10, 15, 20, 25, 30]
    assert len(program_lines([{"queries": 1, "loss": 0.1, **_row(e)} for e in its], "loss")) == 6
    # curve.png: a validation line per step size, not one line zigzagging between them
    vals = [{"queries": 1, "val_acc": 0.5, **_row(e)} for e in events if e.kind == "validation"]
    assert set(program_lines(vals, "val_acc")) == {f"lr {lr:g}" for lr in t.lrs}


def _row(e: Event) -> dict:
    return {"half": e.half, "lr": e.lr}


def test_without_a_race_the_trainer_is_the_one_it_was() -> None:
    """The first step size keeps the generator streams of a job without the race: its pair
    of half-programs trains exactly as before, bit for bit, up to the rung."""
    racing, alone = make(iterations=15, lr_race=(0.2,)), make(iterations=15)
    ev_r: list[Event] = []
    ev_a: list[Event] = []
    drive(racing, events=ev_r)
    drive(alone, events=ev_a)
    first = [e.values["loss"] for e in ev_r if e.kind == "iteration" and e.lr == 0.05]
    assert first[:10] == [e.values["loss"] for e in ev_a if e.kind == "iteration"][:10]
    assert alone.kept_lr is None and all(e.lr is None for e in ev_a)


def test_patience_counts_rounds_of_every_step_size_still_racing() -> None:
    t = make(iterations=60, patience=2, lr_race=(0.2,))
    assert t._patience_points == 4
    while not t.done:
        drive(t, stop_after=1)
        assert t._patience_points == 2 * len(t.alive)


def test_a_checkpoint_from_before_the_race_loads_as_one_step_size() -> None:
    t = make()
    drive(t, stop_after=12)
    s = t.state()
    for key in ("racer", "alive", "peak"):
        del s["cross_fit"][key]
    again = make()
    again.load_state(s)
    assert again.racer == 0 and again.alive == [0]
    drive(again)
    straight = make()
    drive(straight)
    assert again.state_bytes() == straight.state_bytes()


def test_state_round_trips_in_every_phase() -> None:
    assert {Phase.FOLDS, Phase.DONE} <= round_trip_phases(make)


def test_state_cannot_be_taken_between_ask_and_tell() -> None:
    t = make()
    while t.phase != Phase.FOLDS or t.folds[t.active].phase != Phase.TRAIN:
        drive(t, stop_after=1)
    t.ask()
    with pytest.raises(RuntimeError):
        t.state_bytes()


def test_a_probe_that_cannot_be_beaten_stops_the_job() -> None:
    t = make(iterations=200, patience=3, selection_p=0.05)
    sent = drive(t)
    assert t.stop_reason is not None and "cross-fitted" in t.stop_reason
    assert sum(sent.values()) < sum(t.planned_queries().values())
    assert not t.best.theta.any()


def test_budget_fitting_counts_both_programs() -> None:
    t = make(iterations=1000)
    one = Trainer(
        TrainerConfig(**(CONFIG | {"mapping": "learned"})),
        Program(16, 8, "bilinear", 4),
        3,
        K,
        data(30, 0),
        data(9, 1),
        data(15, 2),
    )
    assert t.per_iteration == 2 * one.per_iteration
    it = t.fit_iterations(5000)
    assert sum(t.planned_queries(it).values()) <= 5000 < sum(t.planned_queries(it + 1).values())
    t.set_iterations(it)
    assert all(f.config.iterations == it for f in t.folds)


@pytest.mark.parametrize(
    "overrides, y, message",
    [
        ({"mapping": "frequency"}, None, "learned read-out"),
        ({"validation": "cross_validation"}, None, "cross_fit. only"),
        ({}, np.array([0, 0, 1, 1, 2]), "at least 2 training images per class"),
        ({"validation": "holdout", "lr_race": (0.1,)}, None, "lr_race races cross-fitted"),
        ({"lr_race": (0.1, -1.0)}, None, "every step size in lr_race"),
    ],
)
def test_what_it_refuses(overrides: dict, y, message: str) -> None:
    train = data(30, 0) if y is None else Split(np.zeros((len(y), 8, 8, 3), np.float32), y)
    with pytest.raises(ValueError, match=message):
        cfg = TrainerConfig(**(CF | overrides))
        CrossFitTrainer(cfg, Program(16, 8, "bilinear", 4), 3, K, train, NO_VAL, data(15, 2))
    with pytest.raises(ValueError, match="no validation split"):
        make_cfg = TrainerConfig(**CF)
        CrossFitTrainer(
            make_cfg, Program(16, 8, "bilinear", 4), 3, K, data(30, 0), data(9, 1), data(15, 2)
        )


def test_progress_moves_while_half_0_trains_towards_its_evaluation_point() -> None:
    """``iteration`` is the laggard's (half 1 waits for half 0's evaluation point); a
    progress bar shows the mean over the half-programs instead, which never stands still
    while one trains and never runs backwards."""
    t = make(iterations=40, eval_every=20)
    seen = []
    while not t.done:
        drive(t, stop_after=1)
        seen.append((t.iteration, t.progress_iteration))
    assert seen == sorted(seen, key=lambda p: p[1])  # never backwards
    during = [p for i, p in seen if i == 0]
    assert max(during) == 10  # half 0 at 20, half 1 at 0
    assert seen[-1] == (40, 40)
