"""Program geometry, clipping, parameterisations and the exact adjoint."""

import numpy as np
import pytest

from engine.program import Program, bilinear_matrix


def test_mask_and_shapes() -> None:
    prog = Program(input_size=32, target_size=12)
    assert prog.mask.shape == (32, 32, 3)
    o = (32 - 12) // 2
    assert prog.mask[o : o + 12, o : o + 12].sum() == 0
    assert prog.mask.sum() == 3 * (32 * 32 - 12 * 12)
    frames = prog.embed(np.ones((2, 12, 12, 3), np.float32))
    assert frames.shape == (2, 32, 32, 3)
    assert frames[:, o : o + 12, o : o + 12].min() == 1.0 and frames.sum() == 2 * 3 * 144


def test_program_applies_only_outside_the_image_and_clips() -> None:
    prog = Program(input_size=16, target_size=8)
    theta = np.full(prog.dim, 5.0)  # tanh(5) ≈ 1: border pushed to 1
    frames = prog.embed(np.full((1, 8, 8, 3), 0.5, np.float32))
    out = prog.apply(frames, theta)
    assert out.max() <= 1.0 and out.min() >= 0.0
    np.testing.assert_array_equal(out[0, 4:12, 4:12], 0.5)  # image untouched
    assert out[0, 0, 0, 0] == pytest.approx(np.tanh(5.0), abs=1e-6)
    neg = prog.apply(frames, -theta)
    assert neg[0, 0, 0, 0] == 0.0  # clipped, never negative


@pytest.mark.parametrize("basis,resolution", [("pixel", None), ("bilinear", 4), ("dct", 4)])
def test_backprop_is_the_adjoint_of_apply(basis: str, resolution: int | None) -> None:
    prog = Program(16, 8, basis, resolution)  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    frames = prog.embed(rng.uniform(0, 1, (3, 8, 8, 3)).astype(np.float32))
    theta = rng.normal(0, 0.3, prog.dim)
    weights = rng.normal(size=frames.shape)

    def loss(t: np.ndarray) -> float:
        return float((prog.apply(frames, t).astype(np.float64) * weights).sum())

    grad = prog.backprop(frames, theta, weights)
    for i in rng.choice(prog.dim, 6, replace=False):
        e = np.zeros(prog.dim)
        e[i] = 1e-3
        fd = (loss(theta + e) - loss(theta - e)) / 2e-3
        assert grad[i] == pytest.approx(fd, rel=1e-2, abs=1e-2)


def test_bilinear_upsampling_preserves_constants() -> None:
    a = bilinear_matrix(32, 8)
    np.testing.assert_allclose(a.sum(axis=1), 1.0)
    prog = Program(32, 8, "bilinear", 8)
    w = prog.weights(np.full(prog.dim, 0.3))
    np.testing.assert_allclose(w, 0.3)


def test_invalid_geometry_is_refused() -> None:
    with pytest.raises(ValueError):
        Program(16, 20)
    with pytest.raises(ValueError):
        Program(16, 8, "pixel", 4)
