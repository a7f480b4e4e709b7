"""The program file recipe of docs/contract.md ("Applying a program without this code"),
implemented from the document alone with numpy, against the code that writes and reads
``program.npz`` (``app.jobs.artifacts``) and against the trainer's own view of its program.

A stranger holding only ``program.npz`` and the oracle must classify exactly as the service
does: same frame (resize, centring, mask, clip), same read-out (orientation, transform,
epsilon, bias), same class names. Runs a tiny training job on a deterministic numpy oracle.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from app.jobs.artifacts import ProgramFile, npz_bytes, program_arrays
from engine.program import Program
from engine.trainer import Best, Split, Trainer, TrainerConfig

S, T, K, C = 32, 11, 6, 3  # frame, target (S − T odd: the offset rounds down), labels, classes
CLASSES = ["ant", "bee", "cat"]
LABELS = tuple(f"label{k}" for k in range(K))


# ----------------------------------------------------------------- the recipe, from the doc
def _triangle(n_in: int, n_out: int) -> np.ndarray:
    """Rows of bilinear weights with half-pixel centres; the triangle widens by the scale
    factor when shrinking (PIL's antialiased BILINEAR)."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = (np.arange(n_out) + 0.5) * scale
    w = np.clip(1.0 - np.abs(np.arange(n_in)[None, :] + 0.5 - centres[:, None]) / support, 0, None)
    return w / w.sum(axis=1, keepdims=True)


def recipe_frames(npz: dict[str, np.ndarray], images: list[np.ndarray]) -> np.ndarray:
    s, t = int(npz["input_size"]), int(npz["target_size"])
    o = (s - t) // 2
    out = np.zeros((len(images), s, s, 3), dtype=np.float64)
    for i, img in enumerate(images):
        img = np.asarray(img, dtype=np.float64)
        if img.ndim == 2:
            img = img[:, :, None]
        if img.shape[2] == 1:
            img = np.repeat(img, 3, axis=2)
        h, w = img.shape[:2]
        if (h, w) != (t, t):
            img = np.einsum("oj,hjc->hoc", _triangle(w, t), img)
            img = np.clip(np.rint(np.einsum("oi,ijc->ojc", _triangle(h, t), img)), 0, 255)
        out[i, o : o + t, o : o + t] = img / 255.0
    return np.clip(out + npz["P"] * npz["mask"], 0.0, 1.0)


def recipe_scores(npz: dict[str, np.ndarray], probs: np.ndarray) -> np.ndarray:
    """N×C scores whose argmax is the class index into ``target_classes``."""
    if str(npz["classifier"]) == "readout":
        w = npz["readout_weight"].astype(np.float64)  # C×K
        b = npz["readout_bias"].astype(np.float64)  # C
        return np.log(probs + float(npz["readout_eps"])) @ w.T + b
    return probs[:, npz["mapping"]].mean(axis=2)


def recipe_classify(npz: dict[str, np.ndarray], probs: np.ndarray) -> list[str]:
    return [str(npz["target_classes"][j]) for j in recipe_scores(npz, probs).argmax(axis=1)]


# ----------------------------------------------------------------- a tiny job
_R = np.random.default_rng(7).standard_normal((S * S * 3, K)) * (6.0 / np.sqrt(S * S * 3))


def oracle(frames: np.ndarray) -> np.ndarray:
    """A deterministic black box: softmax of a fixed projection of the whole frame."""
    z = np.asarray(frames, dtype=np.float64).reshape(len(frames), -1) @ _R
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def _images(rng: np.random.Generator, n: int, size: tuple[int, int]) -> tuple[list, np.ndarray]:
    y = np.arange(n) % C
    imgs = []
    for j in y:
        img = rng.integers(0, 120, (*size, 3))
        img[..., j] += 120
        imgs.append(img.astype(np.uint8))
    return imgs, y


def _train(mapping: str) -> tuple[Trainer, dict[str, np.ndarray], ProgramFile]:
    rng = np.random.default_rng(0)
    x, y = _images(rng, 24, (T, T))
    xt, yt = _images(rng, 9, (T, T))
    train = Split(np.stack(x).astype(np.float32) / 255.0, y)
    test = Split(np.stack(xt).astype(np.float32) / 255.0, yt)
    xv, yv = _images(rng, 9, (T, T))
    val = Split(np.stack(xv).astype(np.float32) / 255.0, yv)
    config = TrainerConfig(
        estimator="spsa",
        q=2,
        beta=0.05,
        scale=None,
        optimizer="adam",
        lr=0.1,
        lr_decay=1.0,
        clip=None,
        batch_size=4,
        iterations=4,
        eval_every=2,
        loss="focal",
        gamma=2.0,
        class_balance=True,
        mapping=mapping,  # type: ignore[arg-type]
        labels_per_class=2,
        remap_every=0,
        baselines=True,
        validation="holdout",
        patience=0,
        selection_p=1.0,
    )
    trainer = Trainer(config, Program(S, T, "bilinear", 4), C, K, train, val, test, seed=3)
    while not trainer.done:
        trainer.tell(oracle(trainer.ask().frames))
    assert trainer.iteration == 4
    # The recipe must hold for any program the file may hold; validation kept the blank one
    # on this easy task, so the file holds the latest program instead (P not blank).
    trainer.best = Best(0.0, trainer.iteration, trainer.theta.copy(), trainer.mapping)
    assert trainer.best.theta.any()
    spec = json.dumps({"oracle": {"kind": "torch"}, "mapping": {"method": mapping}})
    blob = npz_bytes(program_arrays(trainer, spec, CLASSES, LABELS))
    with np.load(io.BytesIO(blob), allow_pickle=False) as f:
        npz = {k: f[k] for k in f.files}
    return trainer, npz, ProgramFile.load(blob)


@pytest.fixture(scope="module")
def readout_job():
    return _train("learned")


@pytest.fixture(scope="module")
def mapping_job():
    return _train("frequency")


# ----------------------------------------------------------------- the checks
def test_keys_dtypes_and_shapes_are_as_documented(readout_job, mapping_job):
    _, npz, _ = readout_job
    assert npz["P"].dtype == np.float32 and npz["P"].shape == (S, S, 3)
    assert npz["mask"].dtype == np.float32 and npz["mask"].shape == (S, S, 3)
    assert npz["readout_weight"].dtype == np.float32 and npz["readout_weight"].shape == (C, K)
    assert npz["readout_bias"].dtype == np.float32 and npz["readout_bias"].shape == (C,)
    assert npz["readout_eps"].dtype == np.float64 and float(npz["readout_eps"]) == 1e-6
    assert str(npz["readout_transform"]) == "log(p + 1e-06)"
    assert str(npz["classifier"]) == "readout"
    assert npz["mapping"].dtype == np.int64 and npz["mapping"].shape == (C, 2)
    assert npz["source_labels"].tolist() == list(LABELS)
    assert npz["target_classes"].tolist() == CLASSES
    assert npz["input_size"].shape == () and npz["input_size"].dtype.kind == "i"
    assert int(npz["input_size"]) == S
    assert npz["target_size"].shape == () and int(npz["target_size"]) == T
    assert json.loads(str(npz["spec"]))["oracle"]["kind"] == "torch"
    _, m_npz, _ = mapping_job
    assert str(m_npz["classifier"]) == "mapping"
    assert not {"readout_weight", "readout_bias", "readout_eps"} & set(m_npz)
    m = m_npz["mapping"]
    assert m.shape == (C, 2) and len(np.unique(m)) == m.size and m.max() < K


def test_mask_is_one_outside_the_centred_target_square_and_p_lives_there(readout_job):
    _, npz, _ = readout_job
    o = (S - T) // 2
    mask = np.ones((S, S, 3), np.float32)
    mask[o : o + T, o : o + T] = 0
    np.testing.assert_array_equal(npz["mask"], mask)
    p = npz["P"]
    assert not p[o : o + T, o : o + T].any()  # P is stored already masked
    assert np.abs(p).max() < 1.0 and np.abs(p[mask == 1]).max() > 0  # tanh, and trained


def test_frames_match_the_reader_and_the_trainer(readout_job):
    trainer, npz, prog = readout_job
    rng = np.random.default_rng(1)
    same, _ = _images(rng, 5, (T, T))
    ours = recipe_frames(npz, same)
    np.testing.assert_array_equal(ours.astype(np.float32), prog.frames(same))
    theta, _ = trainer.best_program()
    x = np.stack(same).astype(np.float32) / 255.0
    seen = trainer.program.apply(trainer.program.embed(x), theta)  # what training sent
    np.testing.assert_allclose(ours, seen, atol=1e-6)
    # Other sizes, shrinking and enlarging, and grey images: bilinear to within one grey level.
    other = [img for size in [(40, 25), (7, 9), (T, 30)] for img in _images(rng, 2, size)[0]]
    other.append(rng.integers(0, 256, (20, 20), dtype=np.uint8))
    np.testing.assert_allclose(
        recipe_frames(npz, other), prog.frames(other), atol=1.0 / 255 + 1e-6, rtol=0
    )


def test_readout_scores_are_the_trainers_logits_and_classify_alike(readout_job):
    trainer, npz, prog = readout_job
    rng = np.random.default_rng(2)
    images, _ = _images(rng, 30, (T, T))
    probs = oracle(recipe_frames(npz, images))
    _, readout = trainer.best_program()
    w, b = (
        torch.as_tensor(np.asarray(a, dtype=np.float64)) for a in (readout.weight, readout.bias)
    )
    internal = readout.logits_t(torch.as_tensor(probs), w, b).numpy()
    scores = recipe_scores(npz, probs)
    np.testing.assert_allclose(scores, internal, rtol=1e-4, atol=1e-3)  # float32 weights
    assert recipe_classify(npz, probs) == [CLASSES[j] for j in readout.predict(probs)]
    assert recipe_classify(npz, probs) == prog.predict(images, oracle)
    # The many-to-one mapping kept beside the read-out is the blank-program frequency mapping.
    fallback = probs[:, npz["mapping"]].mean(axis=2).argmax(axis=1)
    np.testing.assert_array_equal(fallback, trainer.baselines["frequency"].predict(probs))


def test_mapping_files_average_the_mapped_labels(mapping_job):
    trainer, npz, prog = mapping_job
    rng = np.random.default_rng(3)
    images, _ = _images(rng, 30, (T, T))
    probs = oracle(recipe_frames(npz, images))
    _, mapping = trainer.best_program()
    scores = recipe_scores(npz, probs)  # h_j = mean of class j's labels, before renormalising
    np.testing.assert_allclose(
        scores / scores.sum(axis=1, keepdims=True), mapping.target_probs(probs)
    )
    assert recipe_classify(npz, probs) == [CLASSES[j] for j in mapping.predict(probs)]
    assert recipe_classify(npz, probs) == prog.predict(images, oracle)
