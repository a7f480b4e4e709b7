"""The user benchmark's grid (issue 9, item 6): every (task, oracle) pair of bench/user_tasks.py
× seeds × configurations, each cell one job run exactly as ``reprogram train`` runs it
(``app.jobs.local.run_local`` with a JobSpec naming the oracle, the budget, the seed and the
configuration's overrides, nothing else), so the grid measures whatever the service's
defaults are when it runs. Every row records a fingerprint of the training code it ran with.

    nice -n 19 python -m bench.user_grid                    # everything, in priority order
    nice -n 19 python -m bench.user_grid --phase main       # one phase (see PHASES)
    python -m bench.user_grid --quick                       # smoke test: 2 pairs, minutes
    python -m bench.user_grid --list                        # what is left, nothing run
    python -m bench.user_grid --workers 14                  # a 16-core GPU machine

Resumable: each finished job appends one row to ``--out`` (default
bench/results/user_grid.jsonl) at once, and a (pair, config, seed, budget) already there is
skipped (``--redo-stale`` reruns rows whose training code has changed since). The process
lowers its own priority (nice 19) before it starts, and ``--hours`` stops it launching jobs
after that long, so it can be left running in the background across sessions.

Configurations (``CONFIGS``): ``default`` (no overrides), ``bar`` (the paper's BAR: estimator
``bar`` with its settings and the frequency mapping), white-box AR with true gradients over
program resolutions 8, 16, 32 and the full pixel program (``wb_r8`` … ``wb_full``; the
default's program is the one whose basis and resolution the default rows resolved to; these
ceilings never stop early, ``optimizer.patience`` 0, where the spec has that field), and
ablations: the paper's levers (mapping frequency/random, focal/cross-entropy loss, q) on the
paper's BAR and on the default.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import multiprocessing as mp
import os
import platform
import socket
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from bench.rows import load_rows
from bench.user_tasks import ORACLES, PAIR_BY_NAME, PAIRS

ROOT = Path(__file__).resolve().parent.parent
OUT = Path("bench/results/user_grid.jsonl")

_BAR = {"optimizer": {"estimator": "bar"}, "mapping": {"method": "frequency"}}
_WB = {"estimator": "white_box"}
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "bar": _BAR,
    "wb_r8": {"optimizer": _WB, "program": {"basis": "bilinear", "resolution": 8}},
    "wb_r16": {"optimizer": _WB, "program": {"basis": "bilinear", "resolution": 16}},
    "wb_r32": {"optimizer": _WB, "program": {"basis": "bilinear", "resolution": 32}},
    "wb_full": {"optimizer": _WB, "program": {"basis": "pixel"}},
    # the paper's ablations, on the paper's BAR ...
    "bar_random": {**_BAR, "mapping": {"method": "random"}},
    "bar_ce": {**_BAR, "loss": {"kind": "ce"}},
    "bar_q5": {"optimizer": {"estimator": "bar", "q": 5}, "mapping": {"method": "frequency"}},
    "bar_q55": {"optimizer": {"estimator": "bar", "q": 55}, "mapping": {"method": "frequency"}},
    # ... and the same levers on the default
    "default_frequency": {"mapping": {"method": "frequency"}},
    "default_random": {"mapping": {"method": "random"}},
    "default_ce": {"loss": {"kind": "ce"}},
    "default_q5": {"optimizer": {"q": 5}},
    "default_q25": {"optimizer": {"q": 25}},
    # the validation method the defaults may change to (issue 9): cross-fitted programs
    "cross_fit": {"data": {"validation": "cross_fit"}},
    # the step-size race the defaults may add (issue 9, item 4): 0.003 raced against 0.01
    "lr_race": {"optimizer": {"lr_race": [0.003]}},
    # twice the default's patience: every 60k job stopped early at patience 5 (§8)
    "patience10": {"optimizer": {"patience": 10}},
    # the same, with the sign test's level spent beyond the default's 5 looks
    # (``TrainerConfig.free_looks``, set through TRAINER_OVERRIDES: no spec field)
    "patience10_looks": {"optimizer": {"patience": 10}},
    # no early stop at all: what the default's program reaches with the whole budget, on the
    # 5-concept views, where the white box's best programs came after 450-1,700 iterations
    "patience0": {"optimizer": {"patience": 0}},
    # the full view of each image as read-out features (issue 9, item 5): 2 queries/prediction
    "views": {"mapping": {"views": ["full"]}},
    # the same spec on the code whose view choice tests each image's out-of-fold probability
    # of its own class instead of its verdict (engine/cross_fit.py ``_views_candidate``)
    "views_prob": {"mapping": {"views": ["full"]}},
    # sep-CMA-ES instead of SPSA + Adam (engine/search.py; issue 9, item 5): ranks, not
    # finite differences, for the few-concept oracles whose losses are mostly noise
    "cma": {"optimizer": {"estimator": "cma"}},
    # cheaper SPSA steps: 2 directions (40 queries an iteration) instead of 10 (200), so five
    # times the Adam steps for the same queries; on mnist5/moderation seed 0 at 60k its
    # half-programs scored 71.8 % on test against the default's 64.9 % (bench/zo_progress.py)
    "q2": {"optimizer": {"q": 2}},
}
#: engine settings a configuration changes that no spec field reaches (bench only)
TRAINER_OVERRIDES: dict[str, dict[str, Any]] = {"patience10_looks": {"free_looks": 5}}
WHITE_BOX = ("wb_r8", "wb_r16", "wb_r32", "wb_full")
ABLATIONS = tuple(c for c in CONFIGS if c.startswith(("bar_", "default_")))
ABLATION_PAIRS = ("mnist10:lite0", "mnist5:moderation", "textures3:lite0")
ALL_PAIRS = tuple(p.name for p in PAIRS)
#: the pairs whose oracle is a 2- or 5-concept view (CMA-ES is measured on these)
FEW_CONCEPT_PAIRS = tuple(p.name for p in PAIRS if "view" in ORACLES[p.oracle])
SEEDS = (0, 1, 2)

#: Phases in priority order: (name, pairs, configs, seeds, budgets). Seed-major inside a
#: phase, so a partial phase holds whole seeds over every pair.
PHASES: list[tuple[str, tuple[str, ...], tuple[str, ...], tuple[int, ...], tuple[int, ...]]] = [
    ("main", ALL_PAIRS, ("default",), SEEDS, (5_000, 20_000)),
    ("bar", ALL_PAIRS, ("bar",), (0,), (5_000, 20_000, 60_000)),
    ("white_box", ALL_PAIRS, WHITE_BOX, (0,), (60_000,)),
    ("long", ALL_PAIRS, ("default",), SEEDS, (60_000, 15_000)),
    ("ablations", ABLATION_PAIRS, ABLATIONS, (0,), (20_000,)),
    ("bar_seeds", ALL_PAIRS, ("bar",), (1, 2), (20_000, 60_000)),  # flat rows: fewer seeds
    ("white_box_seeds", ALL_PAIRS, WHITE_BOX, (1, 2), (60_000,)),
    ("ablation_seeds", ABLATION_PAIRS, ABLATIONS, (1, 2), (20_000,)),
    # a candidate default against the default's main rows (bench/holdout_compare.py)
    ("cross_fit", ALL_PAIRS, ("cross_fit",), SEEDS, (20_000, 5_000)),
    ("lr_race", ALL_PAIRS, ("lr_race",), SEEDS, (20_000, 5_000)),
    ("patience", ALL_PAIRS, ("patience10",), SEEDS, (60_000,)),
    ("looks", ALL_PAIRS, ("patience10_looks",), SEEDS, (60_000, 20_000, 5_000, 15_000)),
    ("views", ALL_PAIRS, ("views",), SEEDS, (5_000, 20_000)),
    ("views_prob", ALL_PAIRS, ("views_prob",), SEEDS, (20_000, 5_000)),
    ("cma", FEW_CONCEPT_PAIRS, ("cma",), SEEDS, (20_000, 5_000)),
    ("full_budget", FEW_CONCEPT_PAIRS, ("patience0",), SEEDS, (60_000,)),
    ("q2", FEW_CONCEPT_PAIRS, ("q2",), SEEDS, (20_000, 5_000)),  # failed there: no 60k
]
QUICK_PAIRS = ("mnist5:moderation", "faces2:nsfw")
QUICK = [("quick", QUICK_PAIRS, ("default", "bar", "wb_r8"), (0,), (3000,))]

#: The code a job's numbers depend on: rows carry a hash of it (the defaults move).
CODE = ("engine", "app/config", "app/jobs", "app/data", "adapters/torch_local.py")


@cache
def code_fingerprint() -> str:
    """A hash of the training code on disk, taken once per process: the first job imports
    that code, and a long run keeps measuring it even if the files change under it."""
    h = hashlib.sha256()
    for rel in CODE:
        path = ROOT / rel
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            h.update(str(f.relative_to(ROOT)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


def git_head() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        return out.stdout.strip()
    except OSError:
        return "?"


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def job_spec(pair: str, config: str, seed: int, budget: int) -> dict[str, Any]:
    """The JobSpec a user would send: the oracle, the budget, the seed, the overrides."""
    from app.config.spec import OptimizerSpec

    p = PAIR_BY_NAME[pair]
    spec = {"oracle": dict(ORACLES[p.oracle]), "budget": {"max_queries": budget}, "seed": seed}
    spec = merge(spec, CONFIGS[config])
    if config in WHITE_BOX and "patience" in OptimizerSpec.model_fields:
        # the ceiling trains through the whole budget (a job may otherwise stop early)
        spec = merge(spec, {"optimizer": {"patience": 0}})
    return spec


def run_job(
    pair: str,
    config: str,
    seed: int,
    budget: int,
    prepared: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """One cell: the task's data set for ``seed`` (train/ and test/, no val/), one job
    (``prepared`` sees the job before its first query: a benchmark's own instruments)."""
    from app.config.spec import JobSpec
    from app.jobs.local import run_local
    from bench.user_tasks import load_task

    p = PAIR_BY_NAME[pair]
    fingerprint = code_fingerprint()
    data = load_task(p.task, seed=seed)
    spec = JobSpec.model_validate(job_spec(pair, config, seed, budget))
    start = time.monotonic()
    overrides = TRAINER_OVERRIDES.get(config, {})

    def on_prepared(job: Any) -> None:
        if overrides:
            job.trainer.config = dataclasses.replace(job.trainer.config, **overrides)
        if prepared is not None:
            prepared(job)

    res = run_local(spec, data, on_prepared=on_prepared).result
    base = res.get("baselines", {})
    return {
        "pair": pair,
        "task": p.task,
        "oracle": p.oracle,
        "kind": p.kind,
        "held_out": p.held_out,
        "config": config,
        "seed": seed,
        "budget": budget,
        "status": res.get("status"),
        "error": res.get("error"),
        "test_accuracy": res.get("test_accuracy"),
        "probe": base.get("linear_probe", {}).get("accuracy"),
        "blank": base.get("blank_program", {}).get("accuracy"),
        "chance": base.get("chance", {}).get("accuracy"),
        "majority": base.get("majority", {}).get("accuracy"),
        "queries": res.get("queries"),
        "breakdown": res.get("breakdown"),
        "iterations": res.get("iterations"),
        "best_iteration": res.get("best_iteration"),
        "best_val_accuracy": res.get("best_val_accuracy"),
        "sizes": res.get("sizes"),
        "classes": len(res.get("classes") or []),
        "labels": res.get("n_source_labels"),
        "spec": res.get("spec"),
        "choices": res.get("choices"),
        "trainer_overrides": overrides or None,
        "views": res.get("views"),
        "seconds": round(time.monotonic() - start, 1),
        "code": fingerprint,
        "git": git_head(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": f"{socket.gethostname()} ({os.cpu_count()} CPUs, {platform.machine()})",
        "device": _device(),
    }


def _device() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu, {torch.get_num_threads()} threads"


def key(row: dict[str, Any]) -> tuple:
    return (row["pair"], row["config"], row["seed"], row["budget"])


def plan(phases: list, only: set[str] | None = None) -> list[tuple[str, str, int, int]]:
    """Every cell of the chosen phases, in priority order, without duplicates."""
    out: list[tuple[str, str, int, int]] = []
    for name, pairs, configs, seeds, budgets in phases:
        if only and name not in only:
            continue
        for seed in seeds:
            for budget in budgets:
                for config in configs:
                    for pair in pairs:
                        cell = (pair, config, seed, budget)
                        if cell not in out:
                            out.append(cell)
    return out


def todo(cells: list[tuple], rows: list[dict], redo_stale: bool) -> list[tuple]:
    current = code_fingerprint()
    have = {key(r) for r in rows if not redo_stale or r.get("code") == current}
    return [c for c in cells if c not in have]


def lower_priority() -> None:
    """nice 19: the grid shares its machine with people and tests."""
    current = os.nice(0)
    if current < 19:
        os.nice(19 - current)


def _init(threads: int) -> None:
    import torch

    lower_priority()
    if threads:
        torch.set_num_threads(threads)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--phase", nargs="+", help=f"only these: {[ph[0] for ph in PHASES]}")
    p.add_argument("--pairs", nargs="+", help="only these pairs (task:oracle)")
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), help="only these configs")
    p.add_argument("--seeds", nargs="+", type=int, help="only these seeds")
    p.add_argument("--budgets", nargs="+", type=int, help="only these budgets")
    p.add_argument("--quick", action="store_true", help="a smoke test: 2 pairs, 3k queries")
    p.add_argument("--list", action="store_true", help="print what is left and stop")
    p.add_argument("--redo-stale", action="store_true", help="rerun rows of older code")
    p.add_argument("--hours", type=float, default=0, help="stop launching jobs after this")
    p.add_argument("--workers", type=int, default=1, help="jobs at once (1: in this process)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per job (0: all)")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    out = a.out or (Path("bench/out/user_quick.jsonl") if a.quick else OUT)
    cells = plan(QUICK if a.quick else PHASES, set(a.phase) if a.phase else None)
    cells = [
        c
        for c in cells
        if (not a.pairs or c[0] in a.pairs)
        and (not a.configs or c[1] in a.configs)
        and (a.seeds is None or c[2] in a.seeds)
        and (a.budgets is None or c[3] in a.budgets)
    ]
    code_fingerprint()  # before the first job imports the training code
    left = todo(cells, load_rows(out), a.redo_stale)
    print(f"{len(left)} of {len(cells)} jobs left; code {code_fingerprint()}", flush=True)
    if a.list:
        for c in left:
            print("  ", *c)
        return
    lower_priority()
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()

    def record(cell: tuple, row: dict | None, err: BaseException | None) -> None:
        took = time.monotonic() - start
        if err is not None:  # not recorded: the next run tries it again
            print(f"[{took:.0f}s] FAILED {cell}: {err!r}", flush=True)
            return
        assert row is not None
        with out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(
            f"[{took:.0f}s] {cell}: {row['test_accuracy']} (probe {row['probe']}, "
            f"{row['queries']} queries, {row['seconds']:.0f}s)",
            flush=True,
        )

    def out_of_time() -> bool:
        return bool(a.hours) and time.monotonic() - start > a.hours * 3600

    if a.workers <= 1:
        _init(a.threads)
        for cell in left:
            if out_of_time():
                break
            try:
                record(cell, run_job(*cell), None)
            except Exception as err:  # one broken job must not stop the grid
                record(cell, None, err)
        return
    ctx = mp.get_context("spawn")  # CUDA cannot be forked
    with ProcessPoolExecutor(
        a.workers, mp_context=ctx, initializer=_init, initargs=(a.threads or 1,)
    ) as ex:
        queue = list(left)
        pending: dict = {}
        while queue or pending:
            while queue and len(pending) < a.workers and not out_of_time():
                cell = queue.pop(0)
                pending[ex.submit(run_job, *cell)] = cell
            if not pending:
                break
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for f in finished:
                cell = pending.pop(f)
                try:
                    record(cell, f.result(), None)
                except Exception as err:
                    record(cell, None, err)


if __name__ == "__main__":
    main()
