"""`reprogram train` end to end, and its answers to bad input (exit 2, no traceback)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import cli_train, write_spec

SMALL = {
    "program": {"input_size": 64, "target_size": 24},
    "optimizer": {"iterations": 8, "q": 2, "batch_size": 6, "eval_every": 4},
    "budget": {"max_queries": 4000},
}


def test_train_writes_every_output_and_beats_chance(tmp_path, small_npz_path):
    spec = write_spec(tmp_path, {"oracle": {"kind": "torch"}, **SMALL})
    out = tmp_path / "out"
    res = cli_train(spec, small_npz_path, out)
    assert res.exit_code == 0, res.output
    result = json.loads((out / "result.json").read_text())
    for key in ("test_accuracy", "queries", "requests", "cost_usd", "breakdown", "baselines"):
        assert key in result
    assert result["status"] == "succeeded"
    assert result["test_accuracy"] > result["baselines"]["chance"]["accuracy"] + 0.2
    assert set(result["breakdown"]) >= {"mapping", "training", "validation", "test"}
    # The blank program's test pass serves the baselines when the probe is what is returned.
    assert ("baseline" in result["breakdown"]) == (result["returned"] == "trained_program")
    assert result["validation"]["method"] == "cross_fit" and result["validation"]["images"] > 0
    assert result["queries"] == sum(v["queries"] for v in result["breakdown"].values())
    assert result["queries"] <= 4000
    for name in ("linear_probe", "blank_program", "chance"):
        assert "queries" in result["baselines"][name]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    its = [r for r in rows if r["kind"] == "iteration"]
    for half in (0, 1):  # cross-fitted: each half-program counts its own iterations
        assert [r["iteration"] for r in its if r["half"] == half] == list(range(1, 9))
    assert all({"queries", "loss", "train_acc", "val_acc"} <= set(r) for r in its)
    assert np.diff([r["queries"] for r in rows]).min() >= 0
    with np.load(out / "program.npz") as npz:
        assert npz["P"].shape == (64, 64, 3) and npz["mask"].shape == (64, 64, 3)
        assert npz["target_classes"].tolist() == ["digit0", "digit1", "digit2"]
        assert int(npz["input_size"]) == 64 and int(npz["target_size"]) == 24
        assert json.loads(str(npz["spec"]))["oracle"]["kind"] == "torch"
    for png in ("curve.png", "program.png"):
        with Image.open(out / png) as img:
            assert img.format == "PNG"


def test_a_program_file_classifies_without_the_service(tmp_path, small_npz_path):
    """docs/contract.md's recipe, applied by hand to the oracle's answers, agrees with the job's
    own test accuracy on the same images."""
    from adapters.torch_local import TorchOracle
    from app.data.loading import load_dataset
    from app.jobs.artifacts import ProgramFile

    spec = write_spec(
        tmp_path, {"oracle": {"kind": "torch"}, **SMALL, "mapping": {"method": "frequency"}}
    )
    out = tmp_path / "out"
    assert cli_train(spec, small_npz_path, out).exit_code == 0
    prog = ProgramFile.load(out / "program.npz")
    data = load_dataset(small_npz_path)
    oracle = TorchOracle(input_size=64)
    labels = prog.predict(data.images, lambda x: oracle.predict(x).probs)
    acc = np.mean([lab == data.classes[y] for lab, y in zip(labels, data.y, strict=True)])
    assert acc > 1 / 3


def bad_zip(kind: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        png = io.BytesIO()
        Image.new("RGB", (8, 8)).save(png, format="PNG")
        zf.writestr("cats/a.png", png.getvalue())
        if kind == "corrupt_image":
            zf.writestr("dogs/b.png", b"\x89PNG not really")
        elif kind == "empty_class":
            zf.writestr("dogs/", b"")
    return buf.getvalue() if kind != "corrupt_archive" else b"PK\x03\x04 truncated"


@pytest.mark.parametrize(
    "case,message",
    [
        ({"oracle": {"kind": "torch"}, "colour": 1}, "colour"),
        ({"oracle": {"kind": "torch"}, "optimizer": {"q": 0}}, "optimizer.q"),
        (
            {"oracle": {"kind": "torch"}, "program": {"input_size": 64, "target_size": 80}},
            "target_size",
        ),
        ({"oracle": {"kind": "nope"}}, "oracle"),
        ({"optimizer": {}}, "oracle"),
    ],
)
def test_invalid_specs_exit_2_naming_the_field(tmp_path, small_npz_path, case, message):
    res = cli_train(write_spec(tmp_path, case), small_npz_path, tmp_path / "o")
    assert res.exit_code == 2
    assert message in res.output and "Traceback" not in res.output


@pytest.mark.parametrize(
    "kind,message",
    [
        ("corrupt_image", "dogs/b.png"),
        ("corrupt_archive", "zip"),
        ("empty_class", "'dogs' has no images"),
    ],
)
def test_bad_data_exits_2_naming_the_problem(tmp_path, kind, message):
    data = tmp_path / "data.zip"
    data.write_bytes(bad_zip(kind))
    spec = write_spec(tmp_path, {"oracle": {"kind": "torch"}, **SMALL})
    res = cli_train(spec, data, tmp_path / "o")
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output


def test_missing_paths_and_broken_models_exit_2(tmp_path, small_npz_path):
    spec = write_spec(tmp_path, {"oracle": {"kind": "torch"}, **SMALL})
    res = cli_train(spec, tmp_path / "nowhere", tmp_path / "o")
    assert res.exit_code == 2 and "no such file" in res.output
    res = cli_train(tmp_path / "none.json", small_npz_path, tmp_path / "o")
    assert res.exit_code == 2 and "none.json" in res.output
    broken = tmp_path / "model.pt"
    broken.write_bytes(b"garbage")
    spec = write_spec(tmp_path, {"oracle": {"kind": "torch", "model": str(broken)}, **SMALL})
    res = cli_train(spec, small_npz_path, tmp_path / "o")
    assert res.exit_code == 2 and "does not load" in res.output
    # A budget below what mapping and evaluation need is refused up front, with the minimum.
    tiny = write_spec(
        tmp_path, {"oracle": {"kind": "torch"}, **SMALL, "budget": {"max_queries": 10}}
    )
    res = cli_train(tiny, small_npz_path, tmp_path / "o")
    assert res.exit_code == 2 and "budget of 10 queries" in res.output


def test_cli_errors_carry_no_traceback_in_a_real_process(tmp_path, small_npz_path):
    spec = write_spec(tmp_path, {"oracle": {"kind": "torch"}, "seed": -1})
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli.main",
            "train",
            "--config",
            str(spec),
            "--data",
            str(small_npz_path),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "seed" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout


def test_torchscript_oracle_end_to_end(tmp_path, small_npz_path):
    """Any TorchScript file that maps N×3×H×W in [0, 1] to scores can be reprogrammed."""

    class Pool(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1) * 20.0

    path = tmp_path / "pool.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(Pool()).save(str(path))
    spec = write_spec(tmp_path, {"oracle": {"kind": "torch", "model": str(path)}, **SMALL})
    out = tmp_path / "out"
    res = cli_train(spec, small_npz_path, out)
    assert res.exit_code == 0, res.output
    result = json.loads((out / "result.json").read_text())
    assert result["n_source_labels"] == 48
    assert result["test_accuracy"] is not None
