"""The user benchmark's default rows against variants of its validation, per pair and seed
(issue 9): the margin over the probe that each job measured on its own split.

    python -m bench.holdout_compare        # bench/results/user_grid.jsonl (the default's rows)
                                           # + bench/results/user_grid_holdout.jsonl (variants)

A variant's rows carry ``variant`` (or are the grid's ``cross_fit`` configuration); the
grid's ``default`` rows are named by the validation their defaults resolved to (hold-out of
a fifth until cross-fitted programs became the default). The per-pair table compares the
(pair, seed, budget) cells every version shown ran (``--versions`` picks the columns).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from statistics import mean

from bench.rows import load_rows
from bench.user_tasks import PAIR_BY_NAME

DEFAULT = Path("bench/results/user_grid.jsonl")
VARIANTS = Path("bench/results/user_grid_holdout.jsonl")


HOLDOUT = "holdout 0.2 (the default before)"
CROSS_FIT = "cross-fitted (the default)"
#: The grid's configurations compared with the default (bench/user_grid.py CONFIGS).
CONFIG_VERSIONS = {
    "cross_fit": "cross-fitted (asked for)",
    "lr_race": "cross-fitted, lr 0.01 raced against 0.003",
    "patience10": "cross-fitted, patience 10",
    "views": "cross-fitted, with the full view",
    "views_prob": "cross-fitted, the full view chosen by probabilities",
    "cma": "cross-fitted, CMA-ES",
    "q2": "cross-fitted, q 2",
}

#: The default with the probability-chosen full view on the oracles of 1,000 labels only
#: (BENCHMARKS.md §8's rule 2): those pairs' ``views_prob`` rows, the default's elsewhere.
WIDE_VIEWS = "the full view on 1,000-label oracles only"
WIDE_ORACLES = ("lite0", "lite2")


def version(row: dict) -> str | None:
    """Which validation a row measured: the grid's ``default`` config is named by what its
    defaults resolved to (they changed), a variant by its ``variant``; None: not compared."""
    validation = (row.get("spec") or {}).get("data", {}).get("validation")
    if row["config"] in CONFIG_VERSIONS:
        return CONFIG_VERSIONS[row["config"]]
    if row["config"] != "default":
        return None
    if "variant" in row:
        return row["variant"]
    return CROSS_FIT if validation == "cross_fit" else HOLDOUT


def margins() -> dict[str, dict[tuple, float]]:
    """version → (pair, seed, budget) → test accuracy − probe (a cell's newest row)."""
    out: dict[str, dict[tuple, float]] = defaultdict(dict)
    out[HOLDOUT] = {}  # the reference: first
    for r in load_rows(DEFAULT) + load_rows(VARIANTS):
        name = version(r)
        if name and r["status"] == "succeeded":
            out[name][(r["pair"], r["seed"], r["budget"])] = r["test_accuracy"] - r["probe"]
    wide = out.get(CONFIG_VERSIONS["views_prob"], {})
    default = out.get(CROSS_FIT, {})
    out[WIDE_VIEWS] = {
        c: wide[c] if PAIR_BY_NAME[c[0]].oracle in WIDE_ORACLES else m
        for c, m in default.items()
        if c in wide
    }
    return {n: m for n, m in out.items() if m}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--versions", nargs="+", help="only these columns (the first is kept)")
    a = p.parse_args()
    by = margins()
    names = [n for i, n in enumerate(by) if i == 0 or not a.versions or n in a.versions]
    cells = sorted(set.intersection(*(set(by[n]) for n in names)))
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
    default = by.get(CROSS_FIT, {})
    for n in by:
        common = sorted(set(by[n]) & set(by[base]))
        if not common:  # e.g. a 60k-only variant: the hold-out default never ran 60k
            continue
        xs = [by[n][c] * 100 for c in common]
        ds = [by[base][c] * 100 for c in common]
        cf = [default[c] * 100 for c in common if c in default]
        below = [f"{c[0]} seed {c[1]} @{c[2] // 1000}k {by[n][c] * 100:+.1f}" for c in common
                 if by[n][c] < -0.005]  # fmt: skip
        print(
            f"- {n}: {len(xs)} jobs, mean margin {mean(xs):+.2f} points (a fifth held out on "
            f"the same jobs {mean(ds):+.2f}"
            + (f", the cross-fitted default on {len(cf)} of them {mean(cf):+.2f}" if cf else "")
            + f"), worst {min(xs):+.1f}, below −0.5: {len(below)}"
            + (f" ({'; '.join(below)})" if below else "")
        )
    asked = by.get("cross-fitted (asked for)", {})
    if shared := set(asked) & set(default):
        same = sum(abs(asked[c] - default[c]) < 1e-9 for c in shared)
        print(
            f"\nThe default's cross-fitted rows and the rows that asked for cross-fitting (older "
            f"code, same seeds): the same margin on {same} of {len(shared)} shared cells."
        )


if __name__ == "__main__":
    main()
