"""The user benchmark's default rows against variants of its validation, per pair and seed
(issue 9): the margin over the probe that each job measured on its own split.

    python -m bench.holdout_compare        # bench/results/user_grid.jsonl (the default's rows)
                                           # + bench/results/user_grid_holdout.jsonl (variants)

A variant's rows carry ``variant`` (or are the grid's ``cross_fit`` configuration,
cross-fitted programs); the default's rows are user_grid.jsonl's ``default`` config. Only
(pair, seed, budget) cells every version ran are compared.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from statistics import mean

from bench.rows import load_rows
from bench.user_tasks import PAIR_BY_NAME

DEFAULT = Path("bench/results/user_grid.jsonl")
VARIANTS = Path("bench/results/user_grid_holdout.jsonl")


def margins() -> dict[str, dict[tuple, float]]:
    """version → (pair, seed, budget) → test accuracy − probe."""
    out: dict[str, dict[tuple, float]] = defaultdict(dict)
    rows = [r | {"variant": "default (holdout 0.2)"} for r in load_rows(DEFAULT)]
    for r in rows + load_rows(VARIANTS):
        if r["config"] == "cross_fit":
            r = r | {"variant": "cross-fitted programs"}
        elif r["config"] != "default":
            continue
        if r["status"] == "succeeded":
            out[r["variant"]][(r["pair"], r["seed"], r["budget"])] = r["test_accuracy"] - r["probe"]
    return out


def main() -> None:
    by = margins()
    names = list(by)
    cells = sorted(set.intersection(*(set(m) for m in by.values())))
    print("Cells every version ran: margin over the probe, mean over seeds (worst seed).\n")
    print("| pair | held out | budget | seeds | " + " | ".join(names) + " |")
    print("|---|---|---:|---:|" + "---:|" * len(names))
    groups: dict[tuple, list[tuple]] = defaultdict(list)
    for pair, seed, budget in cells:
        groups[(pair, budget)].append((pair, seed, budget))
    for (pair, budget), cs in sorted(groups.items()):
        held = "yes" if PAIR_BY_NAME[pair].held_out else ""
        vals = []
        for n in names:
            xs = [by[n][c] * 100 for c in cs]
            vals.append(f"{mean(xs):+.1f} (worst {min(xs):+.1f})")
        print(f"| {pair} | {held} | {budget // 1000}k | {len(cs)} | " + " | ".join(vals) + " |")
    print("\nEach version over every cell it shares with the default:\n")
    base = names[0]
    for n in names:
        common = sorted(set(by[n]) & set(by[base]))
        xs = [by[n][c] * 100 for c in common]
        ds = [by[base][c] * 100 for c in common]
        below = [f"{c[0]} seed {c[1]} @{c[2] // 1000}k {by[n][c] * 100:+.1f}" for c in common
                 if by[n][c] < -0.005]  # fmt: skip
        print(
            f"- {n}: {len(xs)} jobs, mean margin {mean(xs):+.2f} points (the default on the "
            f"same jobs {mean(ds):+.2f}), worst {min(xs):+.1f}, below −0.5: {len(below)}"
            + (f" ({'; '.join(below)})" if below else "")
        )


if __name__ == "__main__":
    main()
