"""Issue 9: a job on a small data set without val/ validates, never returns less than the
probe it starts from (returning the probe itself, and stopping, when no program beats it),
never pays for the same frame twice, and refuses data too small to validate."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from adapters.base import Answer, Oracle
from adapters.dispatch import Dispatcher
from adapters.torch_local import TorchOracle
from app.config.spec import JobSpec
from app.data.loading import load_bytes
from app.jobs import runner
from app.jobs.accounting import MemoryLedger
from app.jobs.artifacts import ProgramFile
from tests.helpers import cli_train, split_digits_npz, write_spec

GEOMETRY = {"input_size": 64, "target_size": 24}
#: a short run on the tiny set: 4 iterations, validated after iterations 0, 2 and 4; the
#: programmed frame alone (the full view, a default here, is tests/integration/test_views_job.py's)
SHORT = {
    "program": GEOMETRY,
    "mapping": {"views": []},
    "optimizer": {"iterations": 4, "q": 2, "batch_size": 6, "eval_every": 2},
    "budget": {"max_queries": 3000},
}


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.npz"
    path.write_bytes(split_digits_npz([10, 10, 10]))
    return path


def train(tmp_path, data, spec: dict) -> tuple[int, dict, str]:
    out = tmp_path / "out"
    res = cli_train(write_spec(tmp_path, {"oracle": {"kind": "torch"}, **spec}), data, out)
    result = json.loads((out / "result.json").read_text()) if res.exit_code in (0, 1) else {}
    return res.exit_code, result, res.output


def test_a_tiny_data_set_without_val_validates_on_images_held_out(tmp_path, tiny):
    code, result, output = train(tmp_path, tiny, SHORT | {"data": {"validation": "holdout"}})
    assert code == 0, output
    v = result["validation"]
    assert v == {"method": "holdout", "source": "held out", "images": 6, "per_class": [2, 2, 2]}
    assert result["sizes"] == {"train": 24, "val": 6, "test": 24}
    assert result["breakdown"]["validation"]["queries"] == 3 * 6  # iterations 0, 2 and 4
    assert result["best_val_accuracy"] is not None
    said = " ".join(result["choices"])
    assert "6 of its training images (2, 2, 2 per class" in said
    assert "validation: " in output  # the log says it too


def without_holdout(tmp_path, data, method: str | None, folds: int) -> tuple[dict, str]:
    """A job that holds no image out (``method``, None: the default): its result and log,
    checked for that."""
    spec = SHORT | {"data": {"validation": method}} if method else SHORT
    code, result, output = train(tmp_path, data, spec)
    assert code == 0, output
    assert result["validation"] == {
        "method": method or "cross_fit",
        "source": "training images",
        "images": 30,
        "per_class": [10, 10, 10],
        "folds": folds,
    }
    assert result["sizes"] == {"train": 30, "val": 0, "test": 24}
    assert result["best_val_accuracy"] is not None
    return result, output


def test_cross_validation_holds_nothing_out_and_sends_no_validation_query(tmp_path, tiny):
    result, _ = without_holdout(tmp_path, tiny, "cross_validation", 4)
    assert "validation" not in result["breakdown"]
    assert "4-fold cross-validation over the 30 training images" in " ".join(result["choices"])


def test_cross_fitted_programs_validate_on_every_labelled_image(tmp_path, tiny):
    """The default for a data set without val/ (train/ and test/ only)."""
    result, output = without_holdout(tmp_path, tiny, None, 2)
    sent = {k: v["queries"] for k, v in result["breakdown"].items()}
    # the blank program: every labelled image once; then at iterations 2 and 4 each
    # program refits on its 15 images and validates on the other 15
    assert sent["mapping"] == 15 and sent["validation"] == 15 + 2 * 30
    assert sent["training"] == 2 * 4 * 6 * 4 + 2 * 2 * 15  # 2 programs × 4 it × 6 × 2q
    assert result["planned_queries"] == {k: v for k, v in sent.items()} | {"baseline": 24}
    said = " ".join(result["choices"])
    assert "a program is trained on each half and validated on the other" in said
    assert "data.validation = 'cross_fit': the data set has no validation images of its own" in said
    assert "Cross-fitted programs validated on 30 images" in output


def test_a_cma_es_job_sends_its_population_per_image_and_plans_what_it_sends(tmp_path, tiny):
    """``optimizer.estimator: "cma"`` through ``reprogram train``: every iteration sends the
    population (q programs) on the minibatch, the plan counts exactly that, and the choices
    say which of the gradient step's fields it leaves unused."""
    spec = SHORT | {"optimizer": {**SHORT["optimizer"], "estimator": "cma", "q": 4}}
    code, result, output = train(tmp_path, tiny, spec)
    assert code == 0, output
    sent = {k: v["queries"] for k, v in result["breakdown"].items()}
    assert sent["training"] == 2 * 4 * 6 * 4 + 2 * 2 * 15  # 2 programs × 4 it × 6 × q
    assert result["planned_queries"] == sent | {"baseline": 24}
    assert result["spec"]["optimizer"]["estimator"] == "cma"
    assert "optimizer.lr = 0.01: not used: CMA-ES" in " ".join(result["choices"])


def test_a_step_size_race_is_planned_reported_and_logged(tmp_path, tiny):
    """``optimizer.lr_race``: each step size trains its pair of half-programs up to the rung
    (iteration 2 of 6), then one goes on; the plan counts it, result.json says which step
    size was kept and why, and metrics.jsonl's iteration rows name their step size."""
    race = SHORT | {
        "optimizer": {**SHORT["optimizer"], "iterations": 6, "lr_race": [0.003], "patience": 0}
    }
    code, result, output = train(tmp_path, tiny, race)
    assert code == 0, output
    sent = {k: v["queries"] for k, v in result["breakdown"].items()}
    # blank once; both step sizes evaluated at 2 (the rung), the survivor at 4 and 6
    assert sent["mapping"] == 15 and sent["validation"] == 15 + 4 * 30
    assert sent["training"] == (6 + 2) * 2 * 6 * 4 + 4 * 2 * 15
    assert result["planned_queries"] == sent | {"baseline": 24}
    r = result["step_size_race"]
    assert r["step_sizes"] == [0.01, 0.003] and r["kept"] in (0.01, 0.003)
    assert all(0 <= p <= 1 for p in r["peak_val_accuracy"])
    assert f"The step-size race kept lr {r['kept']:g}" in " ".join(result["choices"])
    assert f"The step-size race kept lr {r['kept']:g} (of [0.01, 0.003])" in output
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    its = [x for x in rows if x["kind"] == "iteration"]
    for lr, last in ((r["kept"], 6), ({0.01: 0.003, 0.003: 0.01}[r["kept"]], 2)):
        assert [x["iteration"] for x in its if x["lr"] == lr and x["half"] == 0] == list(
            range(1, last + 1)
        )


def test_a_job_that_cannot_beat_the_probe_returns_it_and_stops(tmp_path, tiny):
    """Digits 0-2: the probe is right on (nearly) every validation image, so no program
    could be shown to beat it. The job returns the probe, spends only what the probe costs,
    says so, and reports the rest of its budget as unspent."""
    code, result, output = train(
        tmp_path, tiny, {"program": GEOMETRY, "budget": {"max_queries": 20_000}}
    )
    assert code == 0, output
    assert result["status"] == "succeeded"
    assert result["returned"] == "linear_probe" and result["iterations"] == 0
    assert result["stopped_early"] is not None
    assert result["validation"]["method"] == "cross_fit"  # the default without val/
    # every labelled image (with its full view: the default on the 1,000-label model, not
    # kept here) and the test set once
    assert result["queries"] == 2 * 30 + 24
    assert result["unspent_queries"] == 20_000 - result["queries"]
    assert result["test_accuracy"] == result["baselines"]["linear_probe"]["accuracy"]
    said = " ".join(result["choices"])
    assert "Stopped early after iteration 0" in said
    assert f"{20_000 - result['queries']:,} of the budget of 20,000 queries were not spent" in said
    assert "the job returns the probe" in said
    # the full view was asked for every labelled image and judged over all of them
    assert result["spec"]["mapping"]["views"] == ["full"] and result["views"] == []
    assert result["queries_per_prediction"] == 1
    assert "cross-validation over all 30 labelled images" in said
    prog = ProgramFile.load(tmp_path / "out" / "program.npz")
    assert not prog.arrays["P"].any() and str(prog.arrays["classifier"]) == "readout"


def test_data_too_small_to_validate_is_refused_naming_the_minimum(tmp_path):
    path = tmp_path / "one.npz"
    path.write_bytes(split_digits_npz([6, 1, 6]))
    code, _, output = train(tmp_path, path, {"program": GEOMETRY})
    assert code == 2
    assert "class '1' has 1 labelled image" in output and "at least 2 per class" in output


def test_nothing_to_hold_out_is_refused_naming_the_way_out(tmp_path, tiny):
    spec = {"program": GEOMETRY, "data": {"validation": "holdout", "val_fraction": 0.0}}
    code, _, output = train(tmp_path, tiny, spec)
    assert code == 2
    assert "nothing to hold out" in output and "data.validation to 'cross_fit'" in output


def test_fewer_oracle_labels_than_classes_with_the_learned_readout(tmp_path, tiny):
    """3 classes through the 2-concept view: the learned read-out (the default there) runs;
    there is no frequency-mapping baseline to report."""
    code, result, output = train(
        tmp_path,
        tiny,
        {
            "oracle": {"kind": "torch", "view": "nsfw"},
            "program": GEOMETRY,
            "optimizer": {"iterations": 2, "q": 2, "batch_size": 6, "eval_every": 2},
            "budget": {"max_queries": 3000},
        },
    )
    assert code == 0, output
    assert result["status"] == "succeeded" and result["n_source_labels"] == 2
    assert "linear_probe" in result["baselines"] and "blank_program" not in result["baselines"]


class Recording(Oracle):
    """The bundled model, remembering a digest of every frame it is sent."""

    provider = "torch"

    def __init__(self) -> None:
        self.inner = TorchOracle(input_size=64)
        self.max_images_per_request = self.inner.max_images_per_request
        self.seen: list[bytes] = []

    @property
    def labels(self) -> tuple[str, ...]:
        return self.inner.labels

    def predict(self, images: np.ndarray) -> Answer:
        self.seen += [hashlib.sha256(np.ascontiguousarray(f).tobytes()).digest() for f in images]
        return self.inner.predict(images)


# validation passes after the blank one that the cache answers: hold-out, 2 passes × 6
# images; cross-fit, 2 half-programs × 2 passes × 15 (half 1's blank pass is replayed)
@pytest.mark.parametrize(("validation", "val_hits"), [("holdout", 2 * 6), ("cross_fit", 60)])
def test_the_answer_cache_never_sends_a_frame_twice_within_a_job(validation, val_hits):
    """BAR's first iteration asks f(θ) at θ = 0 on training images the blank pass already
    sent, and an unchanging program is validated again: the oracle sees each frame once."""
    spec = JobSpec.model_validate(
        {
            "oracle": {"kind": "torch"},
            "program": {**GEOMETRY, "basis": "bilinear", "resolution": 4},
            "mapping": {"method": "learned"},
            "data": {"validation": validation},
            "optimizer": {
                "estimator": "bar",
                "q": 2,
                "batch_size": 6,
                "iterations": 4,
                "eval_every": 2,
                "lr": 1e-300,  # frames stay blank (float32): every validation pass repeats
            },
        }
    )
    data = load_bytes(split_digits_npz([10, 10, 10]), "tiny.npz")
    oracle, ledger = Recording(), MemoryLedger(price=0.0)
    dispatcher = Dispatcher(oracle, ledger=ledger)
    job = runner.prepare(spec, data, oracle, query_cap=None)

    class Hooks:
        def after_tell(self, trainer, event):
            pass

        def cancelled(self) -> bool:
            return False

    runner.run(job.trainer, dispatcher, Hooks())
    assert len(oracle.seen) == len(set(oracle.seen))  # no frame sent twice
    assert ledger.totals.queries == len(oracle.seen)  # the ledger counts what was sent
    hits = dispatcher.cache_hits
    assert hits["training"] >= 6 and hits["validation"] == val_hits
    job.cache_hits = dict(hits)
    result = runner.summarize(job, ledger.totals.as_dict(), "succeeded", 1.0)
    assert result["cache_hits"] == sum(hits.values())
    assert result["breakdown"]["validation"]["cache_hits"] == val_hits
