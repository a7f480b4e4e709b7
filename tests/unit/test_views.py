"""A read-out with views (``TrainerConfig.views``): the full view of every image is asked once,
its answers are features next to the programmed frame's, and the linear probe (the programmed
frame alone) stays the reference a read-out with views must beat."""

import numpy as np
import pytest

from engine.cross_fit import CrossFitTrainer
from engine.program import Program
from engine.trainer import Phase, Split, Trainer, TrainerConfig, sign_test_p
from tests.unit.test_trainer import CONFIG, K, check_resume, drive, oracle, round_trip_phases

S = 16  # the frame; the target image is 8×8 in its centre
LEARNED = CONFIG | {"mapping": "learned", "views": ("full",), "selection_p": 0.05}


def split(n: int, seed: int, informative: bool, signal: float = 0.1) -> Split:
    """Target images whose class signal (``signal``) is faint under noise, and a full view
    that shows the class clearly (``informative``) or is noise alone."""
    r = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = r.uniform(0, 0.6, size=(n, 8, 8, 3)).astype(np.float32)
    x[np.arange(n), :, :, y] += signal
    full = r.uniform(0, 0.3, size=(n, S, S, 3))
    if informative:
        full[np.arange(n), :, :, y] += 0.6
    return Split(x, y, (full * 255).round().astype(np.uint8))


def make(informative: bool = True, seed: int = 7, **overrides) -> Trainer:
    cfg = TrainerConfig(**(LEARNED | overrides))
    prog = Program(S, 8, "bilinear", 4)
    parts = [split(n, s, informative) for n, s in ((30, 0), (15, 1), (21, 2))]
    return Trainer(cfg, prog, 3, K, *parts, seed=seed)


def make_cf(
    informative: bool = True, seed: int = 7, signal: float = 0.1, **overrides
) -> CrossFitTrainer:
    cfg = TrainerConfig(**(LEARNED | {"validation": "cross_fit"} | overrides))
    prog = Program(S, 8, "bilinear", 4)
    train, test = split(30, 0, informative, signal), split(21, 2, informative, signal)
    empty = Split(train.x[:0], train.y[:0], train.full[:0])  # type: ignore[index]
    return CrossFitTrainer(cfg, prog, 3, K, train, empty, test, seed=seed)


def full_answers(s: Split) -> np.ndarray:
    return oracle(s.full.astype(np.float32) / 255.0)  # type: ignore[union-attr]


@pytest.mark.parametrize("build", [make, make_cf], ids=["holdout", "cross_fit"])
def test_an_informative_view_is_used_and_the_plan_is_what_is_sent(build) -> None:
    t = build()
    plan = t.planned_queries()
    sent = drive(t)
    assert t.best_views() == ("full",)
    assert t.best_program()[1].weight.shape[1] == 2 * K  # [programmed frame, full view]
    if not t.best.theta.any():  # the blank program's test pass served the baselines
        plan["baseline"] -= len(t.test)
    assert {k: v for k, v in plan.items() if v} == sent
    # the views were asked once each: every labelled image's, then the test images'
    n_labelled = len(t.train) + len(t.val)
    assert sent["test"] == 2 * len(t.test)
    assert t.view_answers is not None and len(t.view_answers["train"]) == len(t.train)
    assert sent["mapping"] == build(views=()).planned_queries()["mapping"] + n_labelled
    # what the read-out with views scores on the test set, recomputed here
    theta, mapping = t.best_program()
    frames = t.program.apply(t.program.embed(t.test.x), theta)
    feats = np.concatenate([oracle(frames), full_answers(t.test)], axis=1)
    assert t.results["test_accuracy"] == float((mapping.predict(feats) == t.test.y).mean())
    assert t.results["test_accuracy"] > t.results["baseline_probe"] + 0.2


@pytest.mark.parametrize("build", [make, make_cf], ids=["holdout", "cross_fit"])
def test_a_view_of_noise_is_not_used_and_its_test_views_are_not_asked(build) -> None:
    t = build(informative=False)
    sent = drive(t)
    assert t.best_views() == ()
    assert t.best_program()[1].weight.shape[1] == K
    assert sent["test"] == len(t.test)  # the test images' views were never needed
    assert "test" not in (t.view_answers or {})


def test_a_view_that_only_sharpens_a_nearly_perfect_probe_is_chosen_by_probabilities() -> None:
    """A stronger target signal: the probe is right on 28 of 30 images out of fold, so the
    view can win 2 verdicts at most (sign test p = 0.25); on each image's probability of its
    own class it wins far more, and that is what decides."""
    t = make_cf(signal=0.3)
    while t.best.val_acc < 0:  # up to the blank selection
        drive(t, stop_after=1)
    probe_right = int(t._probe_oof.sum())
    assert probe_right == 28 and sign_test_p(30 - probe_right, 0) > t.config.selection_p
    assert t.best_views() == ("full",) and t.best.val_acc == 1.0
    assert t._probe_oof_prob is not None and float(t._probe_oof_prob.max()) < 0.95


def test_the_probe_is_the_programmed_frame_alone_and_the_reference() -> None:
    """The baselines (and the sign test's reference) are what a job without views has."""
    with_views, without = make(), make(views=())
    drive(with_views)
    drive(without)
    assert with_views.results["baseline_probe"] == without.results["baseline_probe"]
    assert with_views.results["baseline_frequency"] == without.results["baseline_frequency"]
    np.testing.assert_array_equal(with_views.reference, without.reference)


def test_half_programs_read_the_views_of_their_own_halves() -> None:
    t = make_cf()
    drive(t, stop_after=3)  # the views pass (30 images in chunks of 7: 5 asks) in progress
    assert t.phase is Phase.VIEWS
    drive(t, stop_after=2)
    assert t.phase is Phase.FOLDS
    views = full_answers(t.train)
    for f, fold in enumerate(t.folds):
        k = f % 2
        assert fold.view_answers is not None
        np.testing.assert_allclose(fold.view_answers["train"], views[t.half == k], rtol=1e-6)
        np.testing.assert_allclose(fold.view_answers["val"], views[t.half != k], rtol=1e-6)


@pytest.mark.parametrize("build", [make, make_cf], ids=["holdout", "cross_fit"])
def test_resume_is_bit_identical(build) -> None:
    check_resume(build, (1, 4, 6, 9, 25))


@pytest.mark.parametrize("build", [make, make_cf], ids=["holdout", "cross_fit"])
def test_state_round_trips_in_every_phase(build) -> None:
    assert {Phase.VIEWS, Phase.DONE} <= round_trip_phases(build)


def test_white_box_and_cross_validation_run_with_views() -> None:
    white, base = make(estimator="white_box"), make()
    cv = TrainerConfig(**(LEARNED | {"validation": "cross_validation"}))
    no_val = Split(base.val.x[:0], base.val.y[:0])
    for t in (white, Trainer(cv, base.program, 3, K, base.train, no_val, base.test)):
        drive(t)
        assert t.done and t.best_views() == ("full",)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"mapping": "frequency"}, "mapping 'learned'"),
        ({"views": ("side",)}, "distinct names"),
        ({"views": ("full", "full")}, "distinct names"),
    ],
)
def test_what_it_refuses(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make(**overrides)


def test_views_need_the_full_view_of_every_image() -> None:
    t = make()
    bare = Split(t.train.x, t.train.y)
    with pytest.raises(ValueError, match=r"Split\.full"):
        Trainer(t.config, t.program, 3, K, bare, t.val, t.test)
