"""Accuracy per query: one (task, oracle, method, seed) run, with test accuracy at several
query budgets. Not a test; results go to BENCHMARKS.md via bench/report.py.

    python -m bench.quality --task mnist10 --oracle imagenet --method default --seed 0

``default`` and ``bar`` run one job per budget, exactly as a user would (the plan fits
mapping, training, validation and the final test passes into the budget). ``white_box``, the
reference, trains once with the largest budget and, at each smaller budget B, evaluates on the
test set the best program (by validation) known when it had spent B minus what its final test
passes cost; these snapshot evaluations are measurement and are not counted. Methods:

* ``default``: the spec defaults (what ``reprogram train`` chooses);
* ``bar``: the paper's BAR at the paper's settings (pixel program, frequency mapping, q = 25,
  β = 0.01, η = 0.05, exponentially decaying SGD);
* ``white_box``: white-box AR with the default's program and mapping, true gradients, the
  same number of forward passes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from adapters.torch_local import TorchOracle
from app.config.spec import JobSpec
from app.jobs import runner
from bench.tasks import TASKS, load_task
from engine.trainer import Phase

ORACLES = {"imagenet": None, "moderation": "moderation", "nsfw": "nsfw"}
METHODS = ("default", "bar", "white_box")


def balanced_accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    """Mean per-class recall: what a class-balanced loss optimises, and the fair score when
    the test set is imbalanced but training was not (the cancer task)."""
    return float(np.mean([(pred[y == c] == c).mean() for c in np.unique(y)]))


def method_spec(method: str, oracle: str, budget: int, seed: int, size: int) -> JobSpec:
    view = ORACLES[oracle]
    spec: dict[str, Any] = {
        "oracle": {"kind": "torch", **({"view": view} if view else {})},
        "program": {"input_size": size},
        "optimizer": {},
        "budget": {"max_queries": budget},
        "seed": seed,
    }
    if method == "bar":
        spec["optimizer"]["estimator"] = "bar"
        spec["mapping"] = {"method": "frequency"}
    elif method == "white_box":
        spec["optimizer"] |= {"estimator": "white_box", "lr": 0.01, "batch_size": 20}
    return JobSpec.model_validate(spec)


def run(
    task: str,
    oracle_name: str,
    method: str,
    seed: int,
    budgets: list[int],
    size: int = 128,
    micro_batch: int = 16,
) -> list[dict[str, Any]]:
    data = load_task(task, seed=seed)
    spec = method_spec(method, oracle_name, max(budgets), seed, size)
    oracle = TorchOracle(input_size=size, view=ORACLES[oracle_name], micro_batch=micro_batch)
    job = runner.prepare(spec, data, oracle, query_cap=max(budgets))
    t = job.trainer
    if method == "white_box":  # white box keeps the default's program and mapping
        ref = runner.prepare(
            method_spec("default", oracle_name, max(budgets), seed, size),
            data,
            oracle,
            query_cap=max(budgets),
        ).spec
        assert ref.program == job.spec.program and ref.mapping.method == job.spec.mapping.method
    reserve = t.planned_queries()["test"] + t.planned_queries()["baseline"]
    pending = sorted(budgets)
    spent, rows, start = 0, [], time.monotonic()

    def test_answers(theta: np.ndarray) -> np.ndarray:  # measurement, not counted
        frames = t.program.apply(t.program.embed(t.test.x), theta)
        return np.concatenate(
            [oracle.predict(frames[i : i + 256]).probs for i in range(0, len(frames), 256)]
        )

    def snapshot(budget: int) -> None:
        theta, mapping = t.best_program()
        pred = mapping.predict(test_answers(theta))
        acc = float((pred == t.test.y).mean())
        rows.append(
            {
                "budget": budget,
                "test_accuracy": acc,
                "balanced_accuracy": balanced_accuracy(pred, t.test.y),
                "spent": spent,
                "iteration": t.iteration,
                "best_iteration": t.best.iteration,
            }
        )
        print(
            f"  {task}/{oracle_name}/{method}/seed{seed} @{budget}: {acc:.3f} "
            f"(it {t.iteration}, {time.monotonic() - start:.0f}s)",
            flush=True,
        )

    while not t.done:
        while pending and spent >= pending[0] - reserve and t.phase != Phase.BLANK_TRAIN:
            snapshot(pending.pop(0))
        ask = t.ask()
        if ask.loss_grad is not None:
            probs, grad = oracle.predict_with_input_grad(ask.frames, ask.loss_grad)
            t.tell(probs, input_grad=grad)
        else:
            probs = np.concatenate(
                [
                    oracle.predict(ask.frames[i : i + 256]).probs
                    for i in range(0, len(ask.frames), 256)
                ]
            )
            t.tell(probs)
        spent += len(ask.frames)
    for budget in pending:  # budgets the plan never reached (evaluation included)
        snapshot(budget)
    res = t.results
    blank = test_answers(np.zeros_like(t.theta))
    balanced = {  # the trainer's own baselines, scored per class on the same test answers
        f"{'blank' if name == 'frequency' else name}_balanced": balanced_accuracy(
            m.predict(blank), t.test.y
        )
        for name, m in t.baselines.items()
    }
    common = {
        "task": task,
        "oracle": oracle_name,
        "method": method,
        "seed": seed,
        "n_train": len(t.train),
        "n_test": len(t.test),
        "classes": len(job.classes),
        "labels": len(oracle.labels),
        "probe": res.get("baseline_probe"),
        "blank": res.get("baseline_frequency"),
        "chance": 1.0 / len(job.classes),
        "majority": float(np.bincount(t.test.y).max() / len(t.test.y)),
        "final_test_accuracy": res.get("test_accuracy"),
        "total_spent": spent,
        "seconds": round(time.monotonic() - start, 1),
        "device": str(oracle.device),
        "choices": job.notes,
    } | balanced
    return [common | r for r in rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument("--oracle", choices=list(ORACLES), default="imagenet")
    p.add_argument("--method", choices=METHODS, default="default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budgets", default="5000,20000,60000")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--out", type=Path, default=Path("bench/out/quality.jsonl"))
    a = p.parse_args()
    budgets = [int(b) for b in a.budgets.split(",")]
    if a.method == "white_box":  # the reference: one run, snapshots at each budget
        rows = run(a.task, a.oracle, a.method, a.seed, budgets, a.size)
    else:  # a job per budget, exactly as a user would run it (its plan fits the budget)
        rows = [r for b in budgets for r in run(a.task, a.oracle, a.method, a.seed, [b], a.size)]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with a.out.open("a") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
