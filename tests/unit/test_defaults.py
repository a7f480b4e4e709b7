"""app/config/defaults.py: the choices a job makes by itself, and the two doc-review bugs
(a learned read-out with fewer labels than classes; a torch job budgeted by cost alone)."""

from __future__ import annotations

import pytest

from app.config.defaults import (
    BUDGET_DECIDES,
    FREE_LOOKS,
    PATIENCE,
    PATIENCE_HELD_OUT,
    Facts,
    resolve,
)
from app.config.spec import JobSpec

TINY = Facts(n_labels=1000, n_classes=3, n_train=30, provider="torch", train_per_class=(10,) * 3)


def spec(**sections) -> JobSpec:
    return JobSpec.model_validate({"oracle": {"kind": "torch"}, **sections})


def test_a_torch_job_budgeted_by_cost_alone_gets_the_default_length() -> None:
    """Its images cost nothing, so max_cost_usd caps nothing: 500 iterations, not the
    budget-decides million, and the choice says why."""
    s, notes = resolve(spec(budget={"max_cost_usd": 5.0}), TINY)
    assert s.optimizer.iterations == 500
    assert any("max_cost_usd does not limit this oracle" in n for n in notes)
    capped, _ = resolve(
        spec(budget={"max_queries": 5000}), Facts(**{**TINY.__dict__, "capped": True})
    )
    assert capped.optimizer.iterations == BUDGET_DECIDES


def test_fewer_labels_than_classes_chooses_the_learned_readout() -> None:
    s, _ = resolve(spec(), Facts(n_labels=2, n_classes=3, n_train=30, provider="torch"))
    assert s.mapping.method == "learned" and s.mapping.labels_per_class == 1
    with pytest.raises(ValueError, match="use 'learned'"):
        resolve(spec(mapping={"method": "frequency"}), Facts(2, 3, 30, "torch"))


def test_validation_cross_fits_unless_the_data_set_has_its_own() -> None:
    """No val/ of its own (train/ and test/ only, or a split we drew): cross-fitted programs;
    its own val/: hold-out on it; the frequency mapping cannot be cross-fitted."""
    s, notes = resolve(spec(), TINY)
    assert s.data.validation == "cross_fit"
    assert any("no validation images of its own" in n for n in notes)
    drawn = Facts(**{**TINY.__dict__, "n_val": 6, "own_val": False})
    assert resolve(spec(), drawn)[0].data.validation == "cross_fit"
    own = Facts(**{**TINY.__dict__, "n_val": 6})
    s, notes = resolve(spec(), own)
    assert s.data.validation == "holdout"
    assert any("the data set's own validation images" in n for n in notes)
    s, notes = resolve(spec(mapping={"method": "frequency"}), TINY)
    assert s.data.validation == "holdout" and any("cannot be cross-fitted" in n for n in notes)
    s, _ = resolve(spec(data={"validation": "holdout"}), TINY)
    assert s.data.validation == "holdout"
    for method in ("cross_validation", "cross_fit"):
        with pytest.raises(ValueError, match=rf"data\.validation: {method} scores"):
            resolve(spec(data={"validation": method}, mapping={"method": "frequency"}), TINY)


def test_the_step_size_race_is_the_defaults_on_cross_fitted_programs_only(monkeypatch) -> None:
    """``LR_RACE`` is raced on cross-fitted programs with the step size left open; a given
    lr, the paper's BAR or hold-out validation run one step size, and a race asked for with
    hold-out validation is refused naming the way out."""
    from app.config import defaults

    monkeypatch.setattr(defaults, "LR_RACE", [0.003])
    s, notes = resolve(spec(), TINY)
    assert s.optimizer.lr_race == [0.003] and s.optimizer.lr == 1e-2
    assert any("the step sizes [0.01, 0.003]" in n for n in notes)
    s, notes = resolve(spec(optimizer={"lr": 0.02}), TINY)
    assert s.optimizer.lr_race == [] and any("optimizer.lr was given" in n for n in notes)
    for other in (spec(data={"validation": "holdout"}), spec(optimizer={"estimator": "bar"})):
        assert resolve(other, TINY)[0].optimizer.lr_race == []
    s, _ = resolve(spec(optimizer={"lr": 0.02, "lr_race": [0.1, 0.005]}), TINY)
    assert s.optimizer.lr_race == [0.1, 0.005]  # asked for, it is run
    with pytest.raises(
        ValueError, match=r"^optimizer\.lr_race: it races cross-fitted programs.*'holdout'"
    ):
        resolve(spec(optimizer={"lr_race": [0.1]}, data={"validation": "holdout"}), TINY)
    monkeypatch.setattr(defaults, "LR_RACE", [])
    assert resolve(spec(), TINY)[0].optimizer.lr_race == []
    with pytest.raises(ValueError, match="lr_race"):
        spec(optimizer={"lr_race": [0.0]})
    with pytest.raises(ValueError, match="lr_race"):
        spec(optimizer={"lr_race": [0.1, 0.2, 0.3, 0.4]})


def test_patience_stops_a_budgeted_job_but_not_an_explicit_length() -> None:
    s, notes = resolve(spec(), TINY)
    assert s.optimizer.patience == PATIENCE
    assert any("a budget is a ceiling" in n for n in notes)
    s, notes = resolve(spec(optimizer={"iterations": 40}), TINY)
    assert s.optimizer.patience == 0 and any("all of them run" in n for n in notes)
    s, _ = resolve(spec(optimizer={"iterations": 40, "patience": 3}), TINY)
    assert s.optimizer.patience == 3


def test_a_job_validated_on_held_out_images_stops_after_the_shorter_patience() -> None:
    """Cross-fitted jobs (no val/) wait 10 points; a job scored on its own val/ or on a
    hold-out waits 5, where 10 only cost queries (BENCHMARKS.md §8)."""
    s, _ = resolve(spec(), TINY)
    assert s.data.validation == "cross_fit" and s.optimizer.patience == PATIENCE == 10
    own_val = Facts(n_labels=1000, n_classes=3, n_train=30, provider="torch", n_val=15)
    for sp, facts in ((spec(), own_val), (spec(data={"validation": "holdout"}), TINY)):
        s, notes = resolve(sp, facts)
        assert s.data.validation == "holdout" and s.optimizer.patience == PATIENCE_HELD_OUT == 5
        assert not any(n.startswith("selection: optimizer.patience") for n in notes)


def test_a_patience_beyond_the_free_looks_spends_the_selection_level() -> None:
    """The default patience (10) spends the level after 5 looks; a job given 5 or less (the
    cheaper stop) tests every look at the full level, as every job did before."""
    from app.jobs.runner import trainer_config

    assert PATIENCE > FREE_LOOKS
    cases = ((None, FREE_LOOKS), (PATIENCE, FREE_LOOKS), (FREE_LOOKS, 0), (3, 0), (0, 0))
    for patience, free in (*cases, (PATIENCE + 5, FREE_LOOKS)):
        s, notes = resolve(spec(optimizer={"patience": patience}), TINY)
        assert trainer_config(s).free_looks == free
        assert any(n.startswith("selection: optimizer.patience") for n in notes) == bool(free)


def test_evaluation_is_spaced_by_its_cost() -> None:
    """An evaluation point sends the validation and (learned read-out) training sets: about
    a tenth of training's queries, every 5 to 50 iterations."""
    small, _ = resolve(spec(), TINY)  # cross-fit: 30 images per evaluation, 200 per iteration
    assert small.optimizer.eval_every == 5
    big = Facts(n_labels=1000, n_classes=10, n_train=200, provider="torch", n_val=100)
    s, notes = resolve(spec(), big)  # 300 per evaluation: every 15 iterations
    assert s.optimizer.eval_every == 15
    assert any("validate every 15 iterations" in n and "costs 300 queries" in n for n in notes)
    short, _ = resolve(spec(optimizer={"iterations": 20}), big)
    assert short.optimizer.eval_every == 4  # at least 5 evaluation points


def test_cma_es_gets_its_own_population_and_step_and_says_what_it_does_not_use() -> None:
    """``optimizer.estimator: "cma"``: a population of 20 (the SPSA default's 2q candidates
    per iteration), σ = 0.3, the gradient step's fields marked unused, no step-size race;
    a population of 1 and a race asked for are refused naming the field."""
    s, notes = resolve(spec(optimizer={"estimator": "cma"}), TINY)
    o = s.optimizer
    assert (o.q, o.beta, o.batch_size, o.lr_race) == (20, 0.3, 10, [])
    assert any(n.startswith("optimizer.lr = 0.01: not used: CMA-ES") for n in notes)
    assert any("no race: CMA-ES" in n for n in notes)
    with pytest.raises(ValueError, match=r"^optimizer\.q: CMA-ES's population"):
        resolve(spec(optimizer={"estimator": "cma", "q": 1}), TINY)
    with pytest.raises(ValueError, match=r"^optimizer\.lr_race: .*CMA-ES takes no gradient"):
        resolve(spec(optimizer={"estimator": "cma", "lr_race": [0.003]}), TINY)


def test_an_iteration_too_large_to_hold_in_memory_is_refused_naming_the_limit() -> None:
    """q and the minibatch multiply: 2,000 candidates on 30 images at 128² is 11 GiB of
    frames in one iteration, refused before a worker would die of it; the minibatch counts
    only up to the training images there are, and the default is far below the limit."""
    with pytest.raises(ValueError, match=r"^optimizer\.q: one training iteration would hold "
                       r"60,000 frames of 128×128 \(11,250 MiB"):  # fmt: skip
        resolve(spec(optimizer={"q": 1000, "batch_size": 1024}), TINY)
    resolve(spec(optimizer={"q": 200, "batch_size": 1024}), Facts(1000, 3, 3, "torch"))
    s, _ = resolve(spec(), TINY)
    assert s.optimizer.q == 10 and s.optimizer.batch_size == 10  # 200 frames, 39 MB
