"""How good the programs a job trains get, apart from which one its selection returns.

On the 5-concept views the default returns the probe where the white box gains 12-26 points
(BENCHMARKS.md §8): either zeroth-order training never makes a better program within the
budget, or it does and the cross-fitted selection cannot tell. This runs one job of the user
benchmark through its whole budget (``optimizer.patience`` 0) and keeps every half-program
as its validation pass saw it; afterwards each is scored on the test images with a read-out
fitted on its answers to all labelled images, the L2 chosen again by cross-validation
(``cross_fit_readout``). That is not quite how a job returns a chosen program: the job refits
warm at the half-program's own L2, and on scenes5/moderation seed 0 (q = 2) the two differed
by 6-10 points; over the default's 54 cells neither is better (``bench/readout_trace.py``,
BENCHMARKS.md §8). Scoring is free (not in the job's queries): it is the benchmark looking,
not the job. Cross-fitted jobs without views only
(the few-concept views' default), since the scoring reads the programmed frame alone.

    python -m bench.zo_progress mnist5:moderation --seed 0 --budget 60000 \
        --spec '{"optimizer": {"q": 2}}'

Prints one line per validation pass (queries, iteration, half, its cross-fitted validation
accuracy, its test accuracy) and a summary row for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch

from adapters.dispatch import Dispatcher
from adapters.torch_local import TorchOracle
from app.config.spec import JobSpec
from app.jobs.local import run_local
from bench.user_grid import merge
from bench.user_tasks import ORACLES, PAIR_BY_NAME, load_task
from engine.cross_fit import CrossFitTrainer
from engine.mapping import cross_fit_readout


def run(
    pair: str, seed: int, budget: int, extra: dict[str, Any], every: int = 1, threads: int = 1
) -> dict[str, Any]:
    p = PAIR_BY_NAME[pair]
    raw = {"oracle": dict(ORACLES[p.oracle]), "budget": {"max_queries": budget}, "seed": seed}
    raw = merge(merge(raw, {"optimizer": {"patience": 0}}), extra)
    seen: list[dict[str, Any]] = []
    jobs: list[Any] = []

    def check(job: Any) -> None:
        # the scoring below reads the programmed frame only, and takes the half-programs
        if not isinstance(job.trainer, CrossFitTrainer) or job.trainer.config.views:
            raise SystemExit("zo_progress scores cross-fitted jobs without views only")
        jobs.append(job)

    passes = 0

    def keep(job: Any, row: dict[str, Any]) -> None:
        nonlocal passes
        if row["kind"] != "validation":  # the joint selection, after both halves' passes
            return
        passes += 1
        if (passes - 1) % every:  # the blank pass, then every ``every``-th
            return
        trainer = job.trainer
        for half, fold in enumerate(trainer.folds[2 * trainer.racer : 2 * trainer.racer + 2]):
            seen.append({**row, "half": half, "theta": fold.theta.copy()})

    start = time.monotonic()
    data = load_task(p.task, seed=seed)
    res = run_local(JobSpec.model_validate(raw), data, on_prepared=check, on_row=keep).result
    seconds = time.monotonic() - start
    trainer = jobs[0].trainer
    program, train, test = trainer.program, trainer.train, trainer.test
    spec = ORACLES[p.oracle]
    oracle = Dispatcher(TorchOracle(spec["model"], view=spec.get("view"), threads=threads))
    frames = {s: program.embed(split.x) for s, split in (("train", train), ("test", test))}
    n = trainer.n_classes
    for row in seen:
        ans = {s: oracle.query(program.apply(f, row["theta"]), "test") for s, f in frames.items()}
        readout = cross_fit_readout(ans["train"], train.y, n).full
        row["test_acc"] = float((readout.predict(ans["test"]) == test.y).mean())
    probe = res["baselines"]["linear_probe"]["accuracy"]
    return {"result": res, "seen": seen, "probe": probe, "seconds": seconds}


def main() -> None:
    a = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a.add_argument("pair")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--budget", type=int, default=60_000)
    a.add_argument("--spec", default="{}", help="JSON merged into the job's spec")
    a.add_argument("--threads", type=int, default=1)
    a.add_argument("--every", type=int, default=1, help="score every n-th validation pass")
    a.add_argument("--out", help="append the summary as a JSON line to this file")
    a.add_argument("--thetas", help="save every scored program (θ, queries, half) to this .npz")
    args = a.parse_args()
    torch.set_num_threads(args.threads)
    extra = json.loads(args.spec)
    got = run(args.pair, args.seed, args.budget, extra, args.every, args.threads)
    probe, seen, res = got["probe"], got["seen"], got["result"]
    for r in seen:
        print(
            f"{r['queries']:>7} it {r['iteration']:>4} half {r['half']} "
            f"val {r.get('val_acc', float('nan')):.3f} test {r['test_acc']:.3f} "
            f"|θ| {np.linalg.norm(r['theta']):.3f}"
        )
    best = max(seen, key=lambda r: r["test_acc"]) if seen else None
    summary = {
        "pair": args.pair,
        "seed": args.seed,
        "budget": args.budget,
        "spec": extra,
        "every": args.every,
        "probe": probe,
        "returned": res.get("test_accuracy"),
        "best_iteration": res.get("best_iteration"),
        "queries": res.get("queries"),
        "passes": len(seen),
        "best_test": best["test_acc"] if best else None,
        "best_test_at": [best["queries"], best["iteration"], best["half"]] if best else None,
        "mean_test_last_third": float(np.mean([r["test_acc"] for r in seen[len(seen) * 2 // 3 :]]))
        if seen
        else None,
        "seconds": round(got["seconds"]),
    }
    print(json.dumps(summary))
    if args.thetas and seen:
        np.savez(
            args.thetas,
            theta=np.stack([r["theta"] for r in seen]),
            queries=np.array([r["queries"] for r in seen]),
            half=np.array([r["half"] for r in seen]),
            test_acc=np.array([r["test_acc"] for r in seen]),
        )
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
