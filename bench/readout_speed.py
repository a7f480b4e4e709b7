"""Where a small job's CPU goes, and what a cheaper read-out fit would change.

A profile of a 16-iteration cross-fitted job on the bundled model (36 digits, 64-pixel frame)
put 22 of its 25 seconds in ``engine.mapping._fit_readout_once``: torch's L-BFGS, whose
two-loop recursion makes ~2,000 Python-level ``dot`` calls per fit with its default memory of
100 steps. This measures, on the user benchmark's pairs (seed 0), the read-outs the service
fits from the oracle's answers (the blank program, and a program θ ~ N(0, 0.3²) refitted from
the blank read-outs, as every evaluation does) with the L-BFGS memory the engine uses (100)
and smaller ones: the time of each ``cross_fit_readout``, and whether anything a job decides
on changes against the engine's fit (the L2 strength chosen, each training image's
out-of-fold verdict, the full read-out's test predictions), and the largest change in a
test probability.

A row "100, 1,000 it." fits to the optimum (a gradient of 1e-9), to tell a fit that stops at
the engine's 100 iterations from a converged one.

    python -m bench.readout_speed [--pairs mnist10:lite0 ...] [--history 20 10 5]
"""

from __future__ import annotations

import argparse
import time
from contextlib import contextmanager
from functools import partial

import numpy as np
import torch

from adapters.dispatch import Dispatcher
from adapters.torch_local import TorchOracle
from app.data.loading import to_target
from bench.user_tasks import ORACLES, PAIR_BY_NAME, PAIRS, load_task
from engine.mapping import CrossFitReadout, cross_fit_readout
from engine.program import Program

_LBFGS = torch.optim.LBFGS


ENGINE = (100, 0)  # torch's default memory, the engine's own iteration limit


def _lbfgs(params, *, history: int, iterations: int, **kw):  # type: ignore[no-untyped-def]
    if iterations:  # past the engine's limit, to a 1e-9 gradient: the optimum itself
        kw |= {"max_iter": iterations, "tolerance_grad": 1e-9, "tolerance_change": 1e-12}
    return _LBFGS(params, **kw, history_size=history)


@contextmanager
def lbfgs(history: int, iterations: int = 0):
    """Every L-BFGS the engine builds keeps ``history`` steps (torch's default: 100) and, when
    ``iterations`` is given, runs up to that many to a gradient of 1e-9."""
    torch.optim.LBFGS = partial(_lbfgs, history=history, iterations=iterations)  # type: ignore[misc]
    try:
        yield
    finally:
        torch.optim.LBFGS = _LBFGS  # type: ignore[misc]


def answers(pair: str) -> dict[str, np.ndarray]:
    """The oracle's answers to the training and test images, blank and programmed."""
    p = PAIR_BY_NAME[pair]
    spec = ORACLES[p.oracle]
    # the dispatcher splits into requests the oracle accepts (256 images at most)
    oracle = Dispatcher(TorchOracle(spec["model"], view=spec.get("view"), threads=1))
    data = load_task(p.task, seed=0)
    program = Program(128, 48, "bilinear", 8)
    theta = np.random.default_rng(0).normal(0, 0.3, program.dim)
    out: dict[str, np.ndarray] = {}
    for part in ("train", "test"):
        idx = np.flatnonzero(data.split == part)
        base = program.embed(to_target(data.images, 48, idx))
        out[f"y_{part}"] = data.y[idx]
        for name, t in (("blank", np.zeros(program.dim)), ("program", theta)):
            out[f"{name}_{part}"] = oracle.query(program.apply(base, t), "test")
    out["n_classes"] = np.array(len(data.classes))
    return out


def fits(
    a: dict[str, np.ndarray], history: int, iterations: int = 0
) -> tuple[list[CrossFitReadout], float]:
    """The blank read-outs and the programmed refit from them, and their seconds."""
    n = int(a["n_classes"])
    with lbfgs(history, iterations):
        start = time.perf_counter()
        blank = cross_fit_readout(a["blank_train"], a["y_train"], n)
        refit = cross_fit_readout(a["program_train"], a["y_train"], n, previous=blank)
        return [blank, refit], time.perf_counter() - start


def main() -> None:
    a = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a.add_argument("--pairs", nargs="+", default=[p.name for p in PAIRS])
    a.add_argument("--history", nargs="+", type=int, default=[20, 10, 5])
    a.add_argument("--optimum", type=int, default=1000, help="iterations to the optimum row")
    args = a.parse_args()
    torch.set_num_threads(1)
    variants = [ENGINE, (100, args.optimum)] + [(h, 0) for h in args.history]
    print(
        "| pair | labels | train | memory | seconds (blank + refit) | L2 same | "
        "out-of-fold verdicts changed | test predictions changed | max Δ test prob | "
        "test accuracy (blank / program) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for pair in args.pairs:
        ans = answers(pair)
        # the engine's fit once untimed: the reference, and a warm-up (the first fit of a
        # process paid ~1 s more, which the engine's timed row would otherwise carry)
        ref, _ = fits(ans, *ENGINE)
        for h, iterations in variants:
            got, seconds = fits(ans, h, iterations)
            l2_same = all(g.full.l2 == r.full.l2 for g, r in zip(got, ref, strict=True))
            oof = sum(
                int((g.oof_correct != r.oof_correct).sum()) for g, r in zip(got, ref, strict=True)
            )
            pred, dprob, acc = 0, 0.0, []
            for g, r, part in zip(got, ref, ("blank_test", "program_test"), strict=True):
                pg, pr = g.full.predict(ans[part]), r.full.predict(ans[part])
                acc.append(f"{100 * float((pg == ans['y_test']).mean()):.1f}")
                pred += int((pg != pr).sum())
                hg = g.full.target_probs_t(torch.as_tensor(ans[part])).numpy()
                hr = r.full.target_probs_t(torch.as_tensor(ans[part])).numpy()
                dprob = max(dprob, float(np.abs(hg - hr).max()))
            print(
                f"| {pair} | {ans['blank_train'].shape[1]} | {len(ans['y_train'])} | "
                f"{h}{f', {iterations:,} it.' if iterations else ''} | "
                f"{seconds:.2f} | {'yes' if l2_same else 'NO'} | {oof} | {pred} of "
                f"{2 * len(ans['y_test'])} | {dprob:.1e} | {' / '.join(acc)} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
