"""Losses against hand computations; mappings' contracts."""

import math

import numpy as np
import pytest
import torch

from engine.losses import class_weights, mean_loss, per_sample_loss
from engine.mapping import (
    READOUT_EPS,
    ManyToOneMapping,
    cross_fit_readout,
    frequency_mapping,
    labels_per_class,
    random_mapping,
)


def test_focal_loss_matches_hand_computation() -> None:
    h = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    y = np.array([0, 1])
    w = np.array([1.0, 2.0, 1.0])
    # −w_y (1 − h_y)^γ log h_y, γ = 2, averaged over the two samples
    hand = (-(1 * 0.3**2 * math.log(0.7)) - (2 * 0.7**2 * math.log(0.3))) / 2
    assert mean_loss(h, y, w, "focal", 2.0) == pytest.approx(hand)
    ce = (-(1 * math.log(0.7)) - (2 * math.log(0.3))) / 2
    assert mean_loss(h, y, w, "ce", 2.0) == pytest.approx(ce)
    assert mean_loss(h, y, w, "focal", 0.0) == pytest.approx(ce)


def test_focal_gradient_is_finite_at_certainty() -> None:
    h = torch.tensor([[1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    loss = per_sample_loss(h, torch.tensor([0]), torch.ones(2, dtype=torch.float64), "focal", 2)
    loss.sum().backward()
    assert torch.isfinite(h.grad).all()


def test_class_weights_are_inverse_frequency() -> None:
    w = class_weights(np.array([0, 0, 0, 1]), 2)
    assert w[1] / w[0] == pytest.approx(3.0)
    assert (w * np.array([3, 1])).sum() == pytest.approx(4.0)  # balanced scale


def test_frequency_mapping_picks_most_frequent_labels_disjointly() -> None:
    # Class 0 images mostly predict label 5 then 2; class 1 predicts 5 too but less often,
    # then 7: greedy gives 5 to class 0 and the next most frequent free labels to each.
    rows = {5: 0.9, 2: 0.5, 7: 0.4}
    src = np.full((8, 10), 0.01)
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    tops = [5, 5, 5, 2, 5, 7, 7, 5]
    for i, t in enumerate(tops):
        src[i, t] = rows[t]
    m = frequency_mapping(src, y, n_classes=2, labels_per_class=2)
    assert m.indices[0].tolist()[0] == 5
    assert 7 in m.indices[1].tolist()
    assert len(set(m.indices.ravel().tolist())) == 4


def test_mappings_are_disjoint_and_renormalised() -> None:
    m = random_mapping(np.random.default_rng(0), 100, 5, 10)
    assert m.indices.shape == (5, 10)
    assert len(np.unique(m.indices)) == 50
    p = np.random.default_rng(1).dirichlet(np.ones(100), size=4)
    np.testing.assert_allclose(m.target_probs(p).sum(axis=1), 1.0)
    with pytest.raises(ValueError):
        ManyToOneMapping(indices=np.array([[0, 1], [1, 2]]))


def test_readout_learns_a_separable_task_and_cross_fits() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 12)
    logits = rng.normal(size=(36, 20))
    logits[np.arange(36), y] += 4.0  # label j carries class j
    src = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    cf = cross_fit_readout(src, y, 3)
    assert (cf.full.predict(src) == y).mean() == 1.0
    assert len(cf.folds) == 4 and set(cf.fold_of.tolist()) == {0, 1, 2, 3}
    # Each image scored by the read-out fitted without its fold (the trainer's training
    # path is tested in test_trainer.py): the read-outs generalise.
    oof = np.empty(len(y), dtype=np.int64)
    for f, fold in enumerate(cf.folds):
        held_out = cf.fold_of == f
        oof[held_out] = fold.predict(src[held_out])
    assert (oof == y).mean() > 0.9


def test_each_fold_readout_never_sees_its_fold() -> None:
    """Swapping the labels of two fold-0 images (same rank in their classes, so every
    fold stays as it was) cannot change the read-out fitted without fold 0, and must
    change those fitted with it."""
    rng = np.random.default_rng(2)
    y = np.arange(36) % 3
    src = rng.dirichlet(np.ones(20), size=36)
    src[np.arange(36), y] += 0.3
    src /= src.sum(axis=1, keepdims=True)
    swapped = y.copy()
    swapped[[0, 1]] = y[[1, 0]]
    a = cross_fit_readout(src, y, 3, l2_grid=(1e-2,))
    b = cross_fit_readout(src, swapped, 3, l2_grid=(1e-2,))
    np.testing.assert_array_equal(a.fold_of, b.fold_of)
    assert a.fold_of[0] == a.fold_of[1] == 0
    np.testing.assert_array_equal(a.folds[0].weight, b.folds[0].weight)
    for f in (1, 2, 3):
        assert not np.array_equal(a.folds[f].weight, b.folds[f].weight)
    assert not np.array_equal(a.full.weight, b.full.weight)


def test_exported_readout_is_the_readout_without_the_standardisation() -> None:
    """A program file carries (W, b) on log(p + READOUT_EPS) (app/jobs/artifacts.py): the
    same probabilities as the read-out, from the transform the file names."""
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1, 2], 12)
    src = rng.dirichlet(np.ones(20), size=36)
    src[np.arange(36), y] += 0.5
    src /= src.sum(axis=1, keepdims=True)
    full = cross_fit_readout(src, y, 3).full
    w, b = full.exported()
    logits = np.log(src + READOUT_EPS) @ w.T.astype(np.float64) + b
    direct = np.exp(logits - logits.max(axis=1, keepdims=True))
    direct /= direct.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(direct, full.target_probs(src), atol=1e-5)


@pytest.mark.parametrize(
    ("n_source", "n_classes", "wanted", "expected"),
    [(1000, 10, 10, 10), (12, 3, 10, 4), (5, 3, 10, 1), (2, 5, 10, 1), (1000, 2, 3, 3)],
)
def test_labels_per_class_is_what_is_wanted_within_what_the_oracle_allows(
    n_source: int, n_classes: int, wanted: int, expected: int
) -> None:
    assert labels_per_class(n_source, n_classes, wanted) == expected


def test_the_l2_strength_is_chosen_by_cross_validation_and_scores_out_of_fold() -> None:
    """The read-out's L2 strength is chosen on our side, from the answers already paid for:
    the strength whose read-outs classify the held-out folds best; its out-of-fold verdicts
    are kept (``oof_correct``, the cross-validation score), and so is each image's
    out-of-fold probability of its own class (``oof_true_prob``)."""
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1, 2], 12)
    grid = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
    logits = rng.normal(size=(36, 30))
    logits[np.arange(36), y] += 3.0
    src = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    cf = cross_fit_readout(src, y, 3, l2_grid=grid)
    oof, own = np.empty(len(y), dtype=np.int64), np.empty(len(y))
    for f, fold in enumerate(cf.folds):
        held = cf.fold_of == f
        oof[held] = fold.predict(src[held])
        own[held] = fold.target_probs(src[held])[np.arange(held.sum()), y[held]]
        assert fold.l2 == cf.full.l2
    np.testing.assert_array_equal(cf.oof_correct, oof == y)
    assert cf.oof_true_prob is not None
    np.testing.assert_allclose(cf.oof_true_prob, own, rtol=1e-6)
    scores = {l2: cross_fit_readout(src, y, 3, l2_grid=(l2,)).oof_correct.mean() for l2 in grid}
    assert scores[cf.full.l2] == max(scores.values())  # no other strength does better
    assert len(set(scores.values())) > 1  # and the choice mattered here
