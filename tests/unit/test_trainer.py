"""The ask/tell trainer on a cheap deterministic oracle: plans, resume, white box."""

import numpy as np
import pytest

from engine.program import Program
from engine.trainer import Split, Trainer, TrainerConfig

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


def data(n: int, seed: int) -> Split:
    r = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = r.uniform(0, 0.3, size=(n, 8, 8, 3)).astype(np.float32)
    x[np.arange(n), :, :, y] += 0.5  # the class lights one colour channel
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
    "chunk": 7,
}


def make(seed: int = 7, **overrides) -> Trainer:
    cfg = TrainerConfig(**(CONFIG | overrides))
    prog = Program(16, 8, "bilinear", 4)
    return Trainer(cfg, prog, 3, K, data(24, 0), data(9, 1), data(15, 2), seed=seed)


def drive(trainer: Trainer, stop_after: int | None = None) -> dict[str, int]:
    sent: dict[str, int] = {}
    tells = 0
    while not trainer.done and (stop_after is None or tells < stop_after):
        ask = trainer.ask()
        frames = ask.frames.copy()
        if ask.loss_grad is not None:
            p, g = oracle_grad(ask.frames, ask.loss_grad)
            trainer.tell(p, input_grad=g)
        else:
            trainer.tell(oracle(ask.frames))
        np.testing.assert_array_equal(ask.frames, frames)  # tell leaves the ask alone
        sent[ask.purpose] = sent.get(ask.purpose, 0) + len(ask.frames)
        tells += 1
    return sent


@pytest.mark.parametrize("mapping", ["frequency", "learned", "random"])
@pytest.mark.parametrize("estimator", ["bar", "antithetic", "spsa", "white_box"])
def test_plan_matches_what_is_sent(mapping: str, estimator: str) -> None:
    t = make(mapping=mapping, estimator=estimator)
    plan = t.planned_queries()
    sent = drive(t)
    assert t.done and t.iteration == 12
    if not t.best.theta.any():  # blank stayed best: its test pass served the baselines
        plan["baseline"] -= len(t.test)
    assert {k: v for k, v in plan.items() if v} == sent
    assert 0 <= t.results["test_accuracy"] <= 1


def test_resume_from_serialised_state_is_bit_identical() -> None:
    straight = make(mapping="learned")
    drive(straight)
    for cut in (1, 2, 3, 9, 17):
        first = make(mapping="learned")
        drive(first, stop_after=cut)
        resumed = make(mapping="learned")
        resumed.load_state(first.state_bytes())
        drive(resumed)
        np.testing.assert_array_equal(resumed.theta, straight.theta)
        np.testing.assert_array_equal(resumed.best.theta, straight.best.theta)
        assert resumed.results == straight.results


def test_state_cannot_be_taken_between_ask_and_tell() -> None:
    t = make()
    drive(t, stop_after=2)  # blank pass done (24 = 4 chunks of 7?) -> still in evaluation
    while t.phase != "train":
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


def test_training_improves_on_an_easy_task_and_keeps_the_best() -> None:
    t = make(estimator="white_box", iterations=40, lr=0.1, mapping="frequency")
    drive(t)
    assert t.best.val_acc >= 0
    assert t.results["test_accuracy"] >= t.results["baseline_frequency"]


@pytest.mark.parametrize("mapping", ["frequency", "learned", "random"])
def test_zero_iterations_cost_exactly_what_the_probe_costs(mapping: str) -> None:
    t = make(mapping=mapping, iterations=0)
    sent = drive(t)
    assert sum(sent.values()) == len(t.train) + len(t.test) == sum(t.planned_queries().values())
    assert (
        t.results["test_accuracy"]
        == t.results["baseline_probe" if mapping == "learned" else "baseline_frequency"]
        or mapping == "random"
    )


def test_a_blank_best_program_shares_its_test_pass_with_the_baselines() -> None:
    t = make(mapping="learned", lr=1e-12)  # the program cannot move: blank stays best
    sent = drive(t)
    planned = t.planned_queries()
    assert sent["test"] == len(t.test) and "baseline" not in sent
    assert sum(sent.values()) == sum(planned.values()) - planned["baseline"]
