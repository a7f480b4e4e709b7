"""The service's side of a read-out with the "full" view (``mapping.views``): the spec refuses
it without the learned read-out, ``to_full`` makes what the engine is given, and a program
file with ``views`` classifies on the programmed frame's answer and the full view's, sending
two frames per image (``ProgramFile``). None of this runs the engine."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from app.config.defaults import Facts, resolve
from app.config.spec import JobSpec
from app.data.loading import Limits, decode_resized, to_full, to_target
from app.jobs.artifacts import ProgramFile, npz_bytes
from tests.helpers import png

TINY = Facts(n_labels=6, n_classes=3, n_train=30, provider="torch", train_per_class=(10,) * 3)
S, T, K, C = 32, 11, 6, 3  # frame, target, oracle labels, classes


def spec(**sections) -> JobSpec:
    return JobSpec.model_validate({"oracle": {"kind": "torch"}, **sections})


# ----------------------------------------------------------------- the spec
WIDE = Facts(n_labels=1000, n_classes=3, n_train=30, provider="torch", train_per_class=(10,) * 3)


def test_the_full_view_is_the_default_on_cross_fitted_jobs_of_wide_oracles(monkeypatch) -> None:
    """By default: on a cross-fitted job whose oracle has ≥ 100 labels, not on a few-concept
    oracle, not on a job validated on its own val/, never on a many-to-one mapping; what
    the user asks for is kept."""
    from app.config import defaults

    s, notes = resolve(spec(), WIDE)
    assert s.data.validation == "cross_fit" and s.mapping.views == ["full"]
    assert any("beats the linear probe's single view on validation" in n for n in notes)
    s, notes = resolve(spec(), TINY)  # 6 labels
    assert s.mapping.views == [] and any(n.startswith("mapping.views = []") for n in notes)
    assert any("an oracle of 6 labels, under 100: the full view was measured" in n for n in notes)
    own_val = Facts(**{**WIDE.__dict__, "n_val": 9})
    s, notes = resolve(spec(), own_val)
    assert s.data.validation == "holdout" and s.mapping.views == []
    assert any("measured on cross-fitted programs only" in n for n in notes)
    assert resolve(spec(mapping={"method": "frequency"}), WIDE)[0].mapping.views == []
    assert resolve(spec(mapping={"views": []}), WIDE)[0].mapping.views == []
    assert resolve(spec(mapping={"views": ["full"]}), TINY)[0].mapping.views == ["full"]
    monkeypatch.setattr(defaults, "VIEWS", [])
    assert resolve(spec(), WIDE)[0].mapping.views == []


@pytest.mark.parametrize("method", ["frequency", "random"])
def test_views_without_the_learned_readout_are_refused_naming_the_field(method) -> None:
    with pytest.raises(ValueError, match=rf"^mapping\.views: .*not '{method}'"):
        resolve(spec(mapping={"method": method, "views": ["full"]}), TINY)


@pytest.mark.parametrize("views", [["programmed"], ["full", "full"], ["FULL"], "full"])
def test_unknown_repeated_or_malformed_views_are_refused(views) -> None:
    with pytest.raises(ValueError, match=r"mapping\.views"):
        spec(mapping={"views": views})


# ----------------------------------------------------------------- the data
def test_to_full_is_the_original_resized_to_the_frame_as_bytes() -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(40, 25, 3), (7, 9, 3)]]
    images.append(rng.integers(0, 256, (S, S, 3), dtype=np.uint8))
    full = to_full(images, S, [2, 0])  # in the order of the indices
    assert full.dtype == np.uint8 and full.shape == (2, S, S, 3)
    np.testing.assert_array_equal(full[0], images[2])  # a frame-size image is left as it is
    want = np.asarray(Image.fromarray(images[0]).resize((S, S), Image.BILINEAR))
    np.testing.assert_array_equal(full[1], want)
    # the same rule as the target-size images, only at another size and kept as bytes
    np.testing.assert_array_equal(to_full(images, T) / np.float32(255), to_target(images, T))


def test_one_decode_gives_the_target_and_frame_sizes_the_predict_endpoint_needs() -> None:
    data = png(size=20, seed=3)
    small, frame = decode_resized(data, "x.png", Limits(), (T, S))
    original = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(small, to_full([original], T)[0])
    np.testing.assert_array_equal(frame, to_full([original], S)[0])


# ----------------------------------------------------------------- the program file
_R = np.random.default_rng(7).standard_normal((S * S * 3, K)) * (6.0 / np.sqrt(S * S * 3))


class FakeOracle:
    """A deterministic black box that keeps every batch it is sent."""

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        self.batches.append(np.array(frames))
        return answer(frames)


def answer(frames: np.ndarray) -> np.ndarray:
    z = np.asarray(frames, dtype=np.float64).reshape(len(frames), -1) @ _R
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def program_file(views: list[str] | None) -> tuple[ProgramFile, dict[str, np.ndarray]]:
    """A read-out program file written and read back; ``views`` None: a file written before
    views existed (no ``views`` key)."""
    rng = np.random.default_rng(1)
    o = (S - T) // 2
    mask = np.ones((S, S, 3), np.float32)
    mask[o : o + T, o : o + T] = 0
    arrays = {
        "P": (rng.uniform(-0.5, 0.5, (S, S, 3)) * mask).astype(np.float32),
        "mask": mask,
        "mapping": np.arange(C * 2, dtype=np.int64).reshape(C, 2),
        "source_labels": np.array([f"label{k}" for k in range(K)]),
        "target_classes": np.array(["ant", "bee", "cat"]),
        "target_size": np.array(T),
        "input_size": np.array(S),
        "spec": np.array("{}"),
        "classifier": np.array("readout"),
        "readout_weight": rng.standard_normal((C, K * (1 + len(views or [])))).astype(np.float32),
        "readout_bias": rng.standard_normal(C).astype(np.float32),
        "readout_transform": np.array("log(p + 1e-06)"),
        "readout_eps": np.array(1e-6),
    }
    if views is not None:
        arrays["views"] = np.array(views, dtype=str)
    return ProgramFile.load(npz_bytes(arrays)), arrays


def recipe(arrays: dict[str, np.ndarray], probs: np.ndarray) -> list[str]:
    """docs/contract.md's classification on p (the frame's answer, then each view's)."""
    scores = np.log(probs + 1e-6) @ arrays["readout_weight"].T.astype(np.float64)
    return [str(arrays["target_classes"][j]) for j in (scores + arrays["readout_bias"]).argmax(1)]


def some_images(n: int = 7) -> list[np.ndarray]:
    rng = np.random.default_rng(2)
    sizes = [(T, T, 3), (40, 25, 3), (S, S, 3), (7, 9, 3), (20, 20)]  # grey too
    return [rng.integers(0, 256, sizes[i % len(sizes)], dtype=np.uint8) for i in range(n)]


def test_a_program_with_the_full_view_sends_two_frames_per_image_and_reads_both() -> None:
    prog, arrays = program_file(["full"])
    assert prog.views == ("full",) and prog.queries_per_image == 2
    images, oracle = some_images(), FakeOracle()
    labels = prog.predict(images, oracle)
    programmed, full = oracle.batches  # the programmed frames, then the full views
    assert sum(len(b) for b in oracle.batches) == 2 * len(images)
    np.testing.assert_array_equal(programmed, prog.frames(images))
    rgb = [np.asarray(Image.fromarray(img).convert("RGB")) for img in images]
    np.testing.assert_array_equal(
        full, to_full(rgb, S) / np.float32(255)
    )  # no program, whole frame
    assert full.dtype == np.float32 and full.min() >= 0 and full.max() <= 1
    both = np.concatenate([answer(programmed), answer(full)], axis=1)
    assert labels == recipe(arrays, both)
    assert labels != recipe(arrays, np.concatenate([answer(programmed)] * 2, axis=1))


def test_the_endpoints_two_sizes_classify_as_the_originals_do() -> None:
    """The predict endpoint decodes each image once into its target-size and frame-size
    copies and hands both over: the same frames, the same classes."""
    prog, _ = program_file(["full"])
    images = [img for img in some_images() if img.ndim == 3]
    oracle, resized = FakeOracle(), FakeOracle()
    labels = prog.predict(images, oracle)
    again = prog.predict(to_full(images, T), resized, view_images=to_full(images, S))
    assert again == labels
    for a, b in zip(oracle.batches, resized.batches, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("views", [None, []], ids=["older file", "no views"])
def test_a_program_without_views_sends_one_frame_per_image(views) -> None:
    prog, arrays = program_file(views)
    assert prog.views == () and prog.queries_per_image == 1
    images, oracle = some_images(), FakeOracle()
    labels = prog.predict(images, oracle)
    (programmed,) = oracle.batches
    np.testing.assert_array_equal(programmed, prog.frames(images))
    assert labels == recipe(arrays, answer(programmed))
