"""Turn bench/out/quality.jsonl into the accuracy-per-query tables and plots of BENCHMARKS.md.

    python -m bench.report [--input bench/results/quality.jsonl] [--plots bench/results]

Prints markdown: one table per (task, oracle) with mean ± standard deviation over seeds
(and the number of seeds), then the three targets of issue 5 checked against the numbers.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from statistics import mean, pstdev

from bench.rows import load_rows

METHOD_NAMES = {
    "default": "default (this service)",
    "bar": "BAR, paper settings",
    "white_box": "white-box AR (true gradients)",
}


def fmt(values: list[float]) -> str:
    if not values:
        return "–"
    spread = f" ± {pstdev(values) * 100:.1f}" if len(values) > 1 else ""
    return f"{mean(values) * 100:.1f}{spread} (n={len(values)})"


def imbalanced(rs: list[dict]) -> bool:
    return rs[0]["majority"] > rs[0]["chance"] + 1e-9


def tables(rows: list[dict], metric: str = "test_accuracy") -> tuple[str, dict]:
    """One table per (task, oracle). ``balanced_accuracy`` tables only for imbalanced test
    sets (elsewhere the two agree), with the baselines' balanced scores."""
    suffix = "_balanced" if metric == "balanced_accuracy" else ""
    by_pair: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        by_pair[(r["task"], r["oracle"])].append(r)
    out, summary = [], {}
    for (task, oracle), rs in sorted(by_pair.items()):
        if suffix and not (imbalanced(rs) and all(metric in r for r in rs)):
            continue
        budgets = sorted({r["budget"] for r in rs})
        first = rs[0]
        out.append(
            f"\n### {task} on the {oracle} oracle ({first['labels']} labels, "
            f"{first['classes']} classes, {first['n_train']} training / "
            f"{first['n_test']} test images){' – balanced accuracy' if suffix else ''}\n"
        )
        out.append("| method | " + " | ".join(f"{b // 1000}k queries" for b in budgets) + " |")
        out.append("| --- |" + " ---: |" * len(budgets))
        runs = {(r["method"], r["seed"]) for r in rs}
        seeds_of = defaultdict(set)
        for m, s in runs:
            seeds_of[m].add(s)
        base = {}
        for key, label, cost in (
            ("chance", "chance", 0),
            ("majority", "majority class", 0),
            ("blank", "blank program + frequency mapping", None),
            ("probe", "linear probe", None),
        ):
            if suffix and key == "majority":  # a constant answer scores chance here
                continue
            col = key + suffix if key in ("blank", "probe") else key
            per_run = {(r["method"], r["seed"]): r[col] for r in rs if r.get(col) is not None}
            vals = list(per_run.values())
            base[key] = mean(vals) if vals else None
            n = first["n_train"] + first["n_test"]
            note = f" ({n:,} queries)" if cost is None else ""
            out.append(f"| {label}{note} | " + " | ".join(fmt(vals) for _ in budgets) + " |")
        means: dict[str, dict[int, float]] = {}
        for method in ("bar", "default", "white_box"):
            if method not in seeds_of:
                continue
            cells, means[method] = [], {}
            for b in budgets:
                vals = [r[metric] for r in rs if r["method"] == method and r["budget"] == b]
                cells.append(fmt(vals))
                if vals:
                    means[method][b] = mean(vals)
            out.append(f"| {METHOD_NAMES[method]} | " + " | ".join(cells) + " |")
        summary[(task, oracle)] = {"base": base, "means": means, "budgets": budgets}
    return "\n".join(out), summary


def targets(summary: dict, title: str = "Targets of issue 5") -> str:
    lines = [
        f"\n### {title}\n",
        "| task / oracle | default ≥ probe at every budget | default @15k ≥ BAR @60k "
        "| half the probe→white-box gap closed @60k |",
        "| --- | --- | --- | --- |",
    ]
    for (task, oracle), s in sorted(summary.items()):
        d, b, w = (s["means"].get(m, {}) for m in ("default", "bar", "white_box"))
        probe = s["base"]["probe"]
        start = probe if probe is not None else s["base"]["blank"]
        t1 = (
            "–"
            if not d or probe is None
            else (
                "met"
                if all(v >= probe - 1e-9 for v in d.values())
                else "NOT met ("
                + ", ".join(
                    f"{k // 1000}k: {v * 100:.1f} < {probe * 100:.1f}"
                    for k, v in d.items()
                    if v < probe
                )
                + ")"
            )
        )
        t2 = (
            "–"
            if 15000 not in d or 60000 not in b
            else (
                f"{'met' if d[15000] >= b[60000] else 'NOT met'} ({d[15000] * 100:.1f} @15k "
                f"vs {b[60000] * 100:.1f} @60k)"
            )
        )
        t3 = "–"
        if 60000 in d and 60000 in w and start is not None:
            gap = w[60000] - start
            closed = (d[60000] - start) / gap if gap > 0 else float("inf")
            t3 = (
                f"{'met' if closed >= 0.5 else 'NOT met'}: start {start * 100:.1f}, "
                f"default {d[60000] * 100:.1f}, white box {w[60000] * 100:.1f} "
                f"({closed:.0%} of the gap)"
                if gap > 0
                else f"white box ({w[60000] * 100:.1f}) does not beat the start "
                f"({start * 100:.1f}); default {d[60000] * 100:.1f}"
            )
        lines.append(f"| {task} / {oracle} | {t1} | {t2} | {t3} |")
    return "\n".join(lines)


def plots(rows: list[dict], folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    by_pair: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        by_pair[(r["task"], r["oracle"])].append(r)
    for (task, oracle), rs in by_pair.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        for method in ("default", "bar", "white_box"):
            pts = defaultdict(list)
            for r in rs:
                if r["method"] == method:
                    pts[r["budget"]].append(r["test_accuracy"])
            if pts:
                xs = sorted(pts)
                ax.errorbar(
                    xs,
                    [mean(pts[x]) for x in xs],
                    yerr=[pstdev(pts[x]) for x in xs],
                    marker="o",
                    capsize=3,
                    label=METHOD_NAMES[method],
                )
        for key, style in (("probe", "--"), ("blank", ":"), ("chance", "-.")):
            vals = [r[key] for r in rs if r.get(key) is not None]
            if vals:
                ax.axhline(mean(vals), ls=style, color="grey", label=f"{key} {mean(vals):.1%}")
        ax.set(xscale="log", xlabel="queries", ylabel="test accuracy", title=f"{task} / {oracle}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(folder / f"quality_{task}_{oracle}.png", dpi=90)
        plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--input", type=Path, default=Path("bench/results/quality.jsonl"))
    p.add_argument("--plots", type=Path, default=Path("bench/results"))
    a = p.parse_args()
    rows = load_rows(a.input)
    text, summary = tables(rows)
    print(text)
    print(targets(summary))
    text, summary = tables(rows, "balanced_accuracy")
    if summary:
        print(text)
        print(targets(summary, "The same targets in balanced accuracy (imbalanced test sets)"))
    plots(rows, a.plots)


if __name__ == "__main__":
    main()
