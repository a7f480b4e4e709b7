"""A job whose read-out may also see each image's full view (``mapping.views``), through
``reprogram train``: what it spends and books, what result.json and the choices say, and a
program file that classifies the test images as the job did, at the cost it states.

The two jobs run the engine (``engine.trainer``'s views); the refusal does not."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from adapters.torch_local import TorchOracle
from app.data.loading import load_dataset
from app.jobs.artifacts import ProgramFile
from tests.helpers import cli_train, split_digits_npz, write_spec

FRAME = {"input_size": 64, "target_size": 24}
N_TRAIN, N_TEST = 12, 8  # per class


def texture_npz(size: int = FRAME["input_size"]) -> bytes:
    """Two classes of grey noise, one with a one-pixel checkerboard on top: shrunk to the
    24-pixel target the checks average away (the programmed frame tells the classes apart no
    better than chance), while the full view at the frame's size shows them."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    checks = 90.0 * ((yy + xx) % 2 * 2 - 1)
    xs, ys, split = [], [], []
    for c in range(2):
        for k in range(N_TRAIN + N_TEST):
            img = 128 + rng.normal(0, 6, (size, size)) + c * checks
            xs.append(np.clip(img, 0, 255).astype(np.uint8))
            ys.append(c)
            split.append("train" if k < N_TRAIN else "test")
    buf = io.BytesIO()
    np.savez(buf, x=np.stack(xs)[..., None], y=np.array(ys), split=np.array(split))
    return buf.getvalue()


def noise_npz(size: int = FRAME["input_size"]) -> bytes:
    """Three classes of colour noise with nothing to tell them apart, at any size: neither
    read-out can do better than chance, so the view has nothing to show."""
    rng = np.random.default_rng(1)
    n = 3 * (N_TRAIN + N_TEST)
    x = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    y = np.arange(n) % 3
    split = np.where(np.arange(n) < 3 * N_TRAIN, "train", "test")
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y, split=split)
    return buf.getvalue()


def train(tmp_path, data: bytes, **mapping) -> tuple[dict, str, ProgramFile, object]:
    path = tmp_path / "data.npz"
    path.write_bytes(data)
    spec = {
        "oracle": {"kind": "torch"},
        "program": FRAME,
        "mapping": mapping,
        "optimizer": {"iterations": 0},  # the blank program: the probe against the view
        "budget": {"max_queries": 3000},
    }
    out = tmp_path / "out"
    res = cli_train(write_spec(tmp_path, spec), path, out)
    assert res.exit_code == 0, res.output
    result = json.loads((out / "result.json").read_text())
    return result, res.output, ProgramFile.load(out / "program.npz"), load_dataset(path)


@pytest.mark.parametrize(
    ("data", "views"),
    [(texture_npz, ["full"]), (noise_npz, [])],
    ids=["the view wins", "the probe stays"],
)
def test_a_job_with_the_full_view_reports_and_returns_what_validation_chose(tmp_path, data, views):
    """Checkerboards: the full view beats the probe and the read-out keeps it. Noise: the
    view shows nothing either, so it cannot be shown better and the read-out goes without
    it. Either way the job says so, books the views' passes under
    ``mapping`` and ``test``, and its program file costs what result.json says."""
    result, output, prog, dataset = train(tmp_path, data(), views=["full"])
    assert result["spec"]["mapping"]["views"] == ["full"]
    assert result["views"] == views and result["queries_per_prediction"] == 1 + len(views)
    n_labelled, n_test = result["sizes"]["train"], result["sizes"]["test"]
    sent = {k: v["queries"] for k, v in result["breakdown"].items()}
    # cross-fitted blank program: half the labelled images are booked as mapping, half as
    # validation; the views of every labelled image once, under mapping
    assert sent["mapping"] == n_labelled // 2 + n_labelled
    assert sent["test"] == n_test * result["queries_per_prediction"]
    # the plan holds the test images' views back until validation has chosen the read-out
    planned = {k: v for k, v in result["planned_queries"].items() if v}
    assert planned == sent | {"test": 2 * n_test}
    said = " ".join(result["choices"])
    if views:
        assert "a prediction costs 2 queries per image" in said
        assert "The read-out also uses the full view: a prediction costs 2 queries" in output
        assert "the probe is returned" not in output
        assert result["test_accuracy"] > result["baselines"]["linear_probe"]["accuracy"]
    else:
        # cross-fitted: the note names the test that judged the view, over every image
        assert "did not beat the linear probe's single view" in said
        assert f"cross-validation over all {n_labelled} labelled images" in said
        assert "(1 query per prediction)" in said

    assert prog.views == tuple(views) and prog.queries_per_image == 1 + len(views)
    k = result["n_source_labels"]
    assert prog.arrays["readout_weight"].shape == (len(dataset.classes), k * (1 + len(views)))
    oracle, sent_frames = TorchOracle(input_size=FRAME["input_size"]), []

    def ask(frames: np.ndarray) -> np.ndarray:
        sent_frames.append(len(frames))
        return oracle.predict(frames).probs

    test = np.flatnonzero(dataset.split == "test")
    labels = prog.predict([dataset.images[i] for i in test], ask)
    assert sum(sent_frames) == len(test) * result["queries_per_prediction"]
    right = [label == dataset.classes[dataset.y[i]] for label, i in zip(labels, test, strict=True)]
    assert np.mean(right) == pytest.approx(result["test_accuracy"])


def test_views_without_the_learned_readout_are_refused_naming_the_field(tmp_path):
    path = tmp_path / "data.npz"
    path.write_bytes(split_digits_npz([N_TRAIN] * 3, N_TEST))
    spec = {"oracle": {"kind": "torch"}, "mapping": {"method": "frequency", "views": ["full"]}}
    res = cli_train(write_spec(tmp_path, spec), path, tmp_path / "out")
    assert res.exit_code == 2
    assert "mapping.views" in res.output and "'learned'" in res.output
