"""sep-CMA-ES behind the trainer's ask/tell (engine/search.py): it descends on losses alone,
its draws are the generator's, and its state round-trips exactly."""

import numpy as np
import pytest

from engine import state as state_io
from engine.search import CmaSearch

TARGET = np.linspace(-1.0, 1.0, 12)


def run(search: CmaSearch, rng: np.random.Generator, generations: int) -> np.ndarray:
    """Minimise a noisy quadratic; returns the mean after ``generations``."""
    for _ in range(generations):
        cands = search.ask(rng)
        losses = ((cands - TARGET) ** 2).sum(axis=1) + rng.normal(0, 0.05, len(cands))
        search.tell(losses)
    return search.mean


def test_it_descends_on_a_noisy_quadratic_from_ranks_alone() -> None:
    rng = np.random.default_rng(0)
    search = CmaSearch(12, 10, 0.3)
    start = float(((search.mean - TARGET) ** 2).sum())
    end = float(((run(search, rng, 60) - TARGET) ** 2).sum())
    assert end < 0.05 * start


def test_its_draws_come_from_the_given_generator() -> None:
    a, b = CmaSearch(12, 6, 0.3), CmaSearch(12, 6, 0.3)
    np.testing.assert_array_equal(a.ask(np.random.default_rng(5)), b.ask(np.random.default_rng(5)))
    assert not np.array_equal(a.ask(np.random.default_rng(5)), a.ask(np.random.default_rng(6)))


def test_its_state_round_trips_through_a_checkpoint_and_continues_identically() -> None:
    first = CmaSearch(12, 6, 0.3)
    run(first, np.random.default_rng(1), 7)
    saved = state_io.loads(state_io.dumps({"search": first.state()}))["search"]
    again = CmaSearch(12, 6, 0.3)
    again.load_state(saved)
    np.testing.assert_array_equal(again.mean, first.mean)
    end_a = run(first, np.random.default_rng(2), 5)
    end_b = run(again, np.random.default_rng(2), 5)
    np.testing.assert_array_equal(end_a, end_b)


def test_a_tell_needs_its_ask_and_one_loss_per_candidate() -> None:
    search = CmaSearch(12, 6, 0.3)
    with pytest.raises(RuntimeError, match="without a matching ask"):
        search.tell(np.zeros(6))
    search.ask(np.random.default_rng(0))
    with pytest.raises(ValueError, match="expected 6 losses"):
        search.tell(np.zeros(5))
    with pytest.raises(ValueError, match="population"):
        CmaSearch(12, 1, 0.3)
