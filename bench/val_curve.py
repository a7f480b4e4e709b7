"""One small task's job with early stopping off, printed as its validation curve: where
the programs' validation accuracy peaks, against the probe (BENCHMARKS.md §10).

    python -m bench.val_curve photos4 imagenet 1 cross_fit
    python -m bench.val_curve digits3 moderation 0 cross_fit '{"optimizer": {"lr": 0.003}}'
    python -m bench.val_curve photos4 imagenet 1 holdout '{"data": {"val_fraction": 0.5}}'

Arguments: task, oracle view (bench/small_tasks.py), seed, ``data.validation``, and JSON
merged into the spec's sections. The budget is 20,000 queries.
"""

from __future__ import annotations

import json
import sys

import torch

from app.config.spec import JobSpec
from app.jobs.local import run_local
from bench.small_tasks import SIZE, VIEWS, load


def main(argv: list[str]) -> None:
    task, oracle, seed, validation = argv[0], argv[1], int(argv[2]), argv[3]
    torch.set_num_threads(1)
    view = VIEWS[oracle]
    raw: dict = {
        "oracle": {"kind": "torch", "device": "cpu", **({"view": view} if view else {})},
        "program": {"input_size": SIZE},
        "budget": {"max_queries": 20_000},
        "seed": seed,
        "data": {"validation": validation},
        "optimizer": {"patience": 0},
    }
    for section, fields in (json.loads(argv[4]) if len(argv) > 4 else {}).items():
        raw[section] = raw.get(section, {}) | fields
    run = run_local(JobSpec.model_validate(raw), load(task, seed))
    r = run.result
    probe = r["baselines"]["linear_probe"]["accuracy"]
    print(
        f"test {r['test_accuracy']:.3f}, probe {probe:.3f}, {r['iterations']} iterations, "
        f"best at {r['best_iteration']}"
    )
    curve = [(row["iteration"], round(row["val_acc"], 3)) for row in run.rows
             if row["kind"] == "validation"]  # fmt: skip
    print("validation accuracy by iteration:", curve)


if __name__ == "__main__":
    main(sys.argv[1:])
