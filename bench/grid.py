"""The whole accuracy-per-query grid of BENCHMARKS.md, as independent jobs in a process pool.

    python -m bench.grid --workers 1                       # this 2-core machine: hours
    python -m bench.grid --workers 14 --micro-batch 128    # a 16-core GPU machine: minutes

Every (task, oracle, method, seed, budget) is one job (``white_box`` is one run per seed with
snapshots, see bench/quality.py), seed by seed so that a partial grid holds whole seeds, the
longest first. Each finished job appends its rows to ``--out`` at once, and jobs already
there are skipped, so an interrupted grid resumes where it stopped. On a GPU every process
shares the card and runs its CPU side (program arithmetic, read-out refits) on one thread.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from bench.rows import done

PAIRS = ("mnist10:imagenet", "optdigits10:imagenet", "mnist5:moderation", "cancer:nsfw")
BUDGETS = {  # 15k for the 4x target (default at 15k against bar at 60k)
    "default": (5_000, 15_000, 20_000, 60_000),
    "bar": (5_000, 20_000, 60_000),
    "white_box": (5_000, 15_000, 20_000, 60_000),
}


def jobs(
    pairs: list[str], methods: list[str], seeds: list[int], budgets: dict[str, tuple] = BUDGETS
) -> list[tuple]:
    out = []
    for seed in seeds:
        for pair in pairs:
            task, oracle = pair.split(":")
            for method in methods:
                if method == "white_box":  # one run, snapshots at every budget
                    out.append((task, oracle, method, seed, budgets[method]))
                else:  # one job per budget, as a user would run it
                    out += [(task, oracle, method, seed, (b,)) for b in budgets[method]]
    return sorted(out, key=lambda j: (j[3], -max(j[4])))  # whole seeds first, longest first


def _init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _run(job: tuple, size: int, micro_batch: int) -> list[dict]:
    from bench.quality import run

    task, oracle, method, seed, budgets = job
    return run(task, oracle, method, seed, list(budgets), size, micro_batch=micro_batch)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", nargs="+", default=list(PAIRS))
    p.add_argument("--methods", nargs="+", default=list(BUDGETS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: share)")
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--budgets", help="comma-separated budgets for every method (a quick look)")
    p.add_argument("--out", type=Path, default=Path("bench/out/quality.jsonl"))
    a = p.parse_args()
    have = done(a.out, ("task", "oracle", "method", "seed", "budget"))
    budgets = BUDGETS
    if a.budgets:
        budgets = {m: tuple(int(b) for b in a.budgets.split(",")) for m in BUDGETS}
    todo = [
        j
        for j in jobs(a.pairs, a.methods, a.seeds, budgets)
        if any((*j[:4], b) not in have for b in j[4])
    ]
    threads = a.threads or max(1, (os.cpu_count() or 1) // a.workers)
    print(f"{len(todo)} jobs, {a.workers} workers × {threads} threads", flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    ctx = mp.get_context("spawn")  # CUDA cannot be forked
    with ProcessPoolExecutor(
        a.workers, mp_context=ctx, initializer=_init, initargs=(threads,)
    ) as ex:
        pending = {ex.submit(_run, j, a.size, a.micro_batch): j for j in todo}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for f in finished:
                job = pending.pop(f)
                try:
                    rows = f.result()
                except Exception as err:  # one broken job must not lose the others' results
                    print(f"FAILED {job}: {err!r}", flush=True)
                    continue
                with a.out.open("a") as fh:
                    fh.writelines(json.dumps(r) + "\n" for r in rows)
                print(f"[{time.monotonic() - start:.0f}s] done {job[:4]} {job[4]}", flush=True)


if __name__ == "__main__":
    main()
