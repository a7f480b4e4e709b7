"""What the final read-out of a chosen program costs: the job's against L2 chosen again.

A cross-fitted job that chooses a program returns the half-program that won more images
net, with its read-out refitted on its answers to every labelled image at the L2 strength
its half chose once, on the blank program's answers to half the images, warm-started from
its half's read-out (``CrossFitTrainer._chosen``). ``bench/zo_progress.py`` scored
programs with the L2 chosen again by cross-validation on all labelled images, and on
scenes5/moderation seed 0 at 20k the returned program scored 6-10 points lower the job's
way. The final read-out changes nothing before it (training, selection and stopping read
the half-programs' own read-outs), so one job can score both ways on the same answers:

* ``job``: the job's read-out (the returned accuracy; checked against the result);
* ``cold``: the same L2, fitted from zero (what the warm start changes);
* ``cv``: ``cross_fit_readout`` on the same answers, the L2 chosen again by 4-fold
  cross-validation over every labelled image (as the probe's is).

Each alternative is scored on the job's own test answers (views included, when the job
reads them). A job that returns the blank program has nothing to trace (``chosen`` false).

The rule, written before the rows: the final read-out becomes ``cv`` for every job if, over
the default's 54 cells (9 pairs, seeds 0-2, 5k and 20k), no cell's ``cv`` accuracy is more
than 0.5 points below its probe, the mean over the cells is at least the job's, and ``cv``
is better in at least as many cells as it is worse. The 30 few-concept cells of ``q2`` are
reported apart (its own rule is not judged again on them).

    python -m bench.readout_trace --configs default q2 --workers 2 \
        --out bench/results/readout_trace.jsonl
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench.rows import load_rows
from bench.user_grid import ALL_PAIRS, CONFIGS, SEEDS, _init, key, run_job

OUT = Path("bench/results/readout_trace.jsonl")


def _instrument(job: Any) -> dict[str, Any]:
    """Wrap the trainer's ``_chosen`` (keep the alternatives of each chosen program) and its
    test pass (score them on the answers the returned read-out is scored on)."""
    from engine.cross_fit import CrossFitTrainer
    from engine.mapping import cross_fit_readout, fit_readout

    trainer = job.trainer
    if not isinstance(trainer, CrossFitTrainer):
        raise SystemExit("readout_trace traces cross-fitted jobs only")
    seen: dict[int, dict[str, Any]] = {}  # id(returned mapping) -> its alternatives
    out: dict[str, Any] = {}
    chosen, finish_test = trainer._chosen, trainer._finish_test

    def traced_chosen(acc: float, verdicts: list[np.ndarray]) -> Any:
        best = chosen(acc, verdicts)
        k = trainer.best_half
        source, y = trainer._joined(k)
        fold = trainer._pair(trainer.racer)[k]
        l2 = fold.crossfit.full.l2
        cv = cross_fit_readout(source, y, trainer.n_classes)
        seen[id(best.mapping)] = {
            "mapping": best.mapping,  # alive, so that its id names it alone
            "iteration": best.iteration,
            "half": k,
            "kept_l2": l2,
            "cv_l2": cv.full.l2,
            "cv_oof": float(cv.oof_correct.mean()),
            "readouts": {"cold": fit_readout(source, y, trainer.n_classes, l2), "cv": cv.full},
        }
        return best

    def traced_test(answers: np.ndarray) -> Any:
        mapping = trainer.best_program()[1]
        alts = seen.get(id(mapping))
        if alts is not None and alts["mapping"] is mapping:
            y = trainer.test.y
            out.update({k: v for k, v in alts.items() if k not in ("readouts", "mapping")})
            out["acc"] = {"job": float((mapping.predict(answers) == y).mean())} | {
                name: float((m.predict(answers) == y).mean())
                for name, m in alts["readouts"].items()
            }
        return finish_test(answers)

    trainer._chosen, trainer._finish_test = traced_chosen, traced_test
    return out


def trace_job(pair: str, config: str, seed: int, budget: int) -> dict[str, Any]:
    traced: list[dict[str, Any]] = []
    row = run_job(pair, config, seed, budget, prepared=lambda job: traced.append(_instrument(job)))
    got = traced[0]
    row["trace"] = got or None
    row["chosen"] = bool(got)
    if got and abs(got["acc"]["job"] - (row["test_accuracy"] or -1)) > 1e-9:
        raise RuntimeError(f"traced {got['acc']['job']} but the job returned {row}")
    return row


def summarise(rows: list[dict[str, Any]], config: str) -> str:
    """The rule's counts for one configuration: margins over the probe in points, the job's
    read-out against ``cold`` and ``cv`` (a cell that returned the blank program counts the
    same for all three)."""
    rows = [r for r in rows if r["config"] == config]
    if not rows:
        return f"{config}: no rows"
    margins: dict[str, list[float]] = {"job": [], "cold": [], "cv": []}
    for r in rows:
        for name, got in margins.items():
            acc = r["trace"]["acc"][name] if r["chosen"] else r["test_accuracy"]
            got.append(100 * (acc - r["probe"]))
    lines = [f"{config}: {len(rows)} cells, {sum(r['chosen'] for r in rows)} chose a program"]
    for name, m in margins.items():
        d = np.array(m) - np.array(margins["job"])
        lines.append(
            f"  {name:>4}: mean margin {np.mean(m):+.2f}, worst {min(m):+.1f}, "
            f"below -0.5: {sum(x < -0.5 for x in m)}, better than the job's in "
            f"{int((d > 1e-9).sum())}, worse in {int((d < -1e-9).sum())}"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", nargs="+", default=list(ALL_PAIRS))
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=["default"])
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    p.add_argument("--budgets", nargs="+", type=int, default=[20_000, 5_000])
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads per job")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--summary", action="store_true", help="summarise --out's rows and stop")
    a = p.parse_args()
    if a.summary:
        print("\n".join(summarise(load_rows(a.out), c) for c in a.configs))
        return
    cells = [
        (pair, config, seed, budget)
        for budget in a.budgets
        for config in a.configs
        for seed in a.seeds
        for pair in a.pairs
    ]
    have = {key(r) for r in load_rows(a.out)}
    left = [c for c in cells if c not in have]
    print(f"{len(left)} of {len(cells)} jobs left", flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(
        a.workers, mp_context=ctx, initializer=_init, initargs=(a.threads,)
    ) as ex:
        for cell, fut in [(c, ex.submit(trace_job, *c)) for c in left]:
            try:
                row = fut.result()
            except Exception as err:  # one broken job must not stop the rest
                print(f"FAILED {cell}: {err!r}", flush=True)
                continue
            with a.out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            t = row["trace"]
            acc = t["acc"] if t else {}
            print(
                f"[{time.monotonic() - start:.0f}s] {cell} probe {row['probe']:.3f} "
                f"returned {row['test_accuracy']:.3f} "
                + (
                    f"it {t['iteration']} L2 {t['kept_l2']:g}->{t['cv_l2']:g} "
                    f"cold {acc['cold']:.3f} cv {acc['cv']:.3f}"
                    if t
                    else "(blank)"
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
