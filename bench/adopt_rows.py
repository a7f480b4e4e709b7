"""Adopt a measured configuration's rows as the default's, when that configuration becomes
the default: each of its rows in ``--source`` (a variant file, ``--out`` of bench/user_grid)
is appended to ``--into`` (the grid's main file, which bench/user_report reads) as a
``default`` row, with ``adopted_from`` naming the configuration.

Why copy instead of rerunning: the configuration's resolved spec is what the new default
resolves to, so rerunning its cells would repeat the same jobs (every draw is seeded) at
hours of CPU. The rows keep their own code fingerprint and date, so the report's
provenance table still says which code made them, and the change's BENCHMARKS entry
reruns a sample of cells on the new default to show they are the same.

    python -m bench.adopt_rows --config patience10_looks --budgets 5000 15000 20000
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.rows import load_rows
from bench.user_grid import OUT

SOURCE = Path("bench/results/user_grid_holdout.jsonl")


def adopt(config: str, source: Path, into: Path, budgets: set[int] | None = None) -> int:
    """Append ``config``'s rows from ``source`` (at ``budgets``, default all) to ``into`` as
    the default's; rows already adopted (same cell and date) are not appended twice. Returns
    how many were appended."""
    have = {
        (r["pair"], r["seed"], r["budget"], r["date"])
        for r in load_rows(into)
        if r.get("adopted_from") == config
    }
    new = [
        {**r, "config": "default", "adopted_from": config}
        for r in load_rows(source)
        if r["config"] == config
        and (budgets is None or r["budget"] in budgets)
        and (r["pair"], r["seed"], r["budget"], r["date"]) not in have
    ]
    if not new:
        return 0
    with into.open("a") as fh:
        for r in new:
            fh.write(json.dumps(r) + "\n")
    return len(new)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="the configuration that became the default")
    p.add_argument("--source", type=Path, default=SOURCE)
    p.add_argument("--into", type=Path, default=OUT)
    p.add_argument("--budgets", nargs="+", type=int, help="only these budgets")
    a = p.parse_args()
    n = adopt(a.config, a.source, a.into, set(a.budgets) if a.budgets else None)
    print(f"{n} rows of {a.config} adopted into {a.into}")


if __name__ == "__main__":
    main()
