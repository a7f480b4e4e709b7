"""Would a transfer-based prior help? (issue 9, item 5: "transfer-based priors from a
*different* local model"). Before building a prior-guided estimator (P-RGF, Cheng et al. 2019),
this measures what it would rest on: how well the gradient of the task loss through a
*different* local model (the surrogate) points along the true gradient through the oracle,
against what the default SPSA estimate (q = 10: 20 candidates on the minibatch) achieves.

For each pair (seed 0): the service's geometry (128-pixel frame, 48-pixel image, 8×8×3
bilinear program, d = 192), a read-out fitted on each model's blank answers to the labelled
images (``cross_fit_readout``'s full read-out, as the service fits its probe), and, at θ = 0 and
at random θ ~ N(0, 0.3²), on 10-image minibatches:

* g_o, the true gradient of the focal loss through the oracle and its read-out (white box);
* g_s, the same through the surrogate (lite2 for the lite0-based oracles, lite0 for lite2)
  and *its* read-out: free, no oracle query;
* g_v, the same through the surrogate seen as the oracle is (the same concept view, so the
  same labels) and the *oracle's* read-out: the closest stand-in for the oracle's loss that a
  different model gives;
* g_z, the SPSA estimate from the oracle's answers (2q·10 = 200 queries).

It prints cos(g_s, g_o), cos(g_v, g_o) and cos(g_z, g_o). A prior whose cosine is near the
noise level of a random direction (±1/√d ≈ 0.07) cannot help, whatever the estimator built on it.

    python -m bench.transfer_prior [--pairs mnist10:lite0 ...] [--thetas 3] [--batches 5]
"""

from __future__ import annotations

import argparse
from statistics import mean

import numpy as np
import torch

from adapters.torch_local import TorchOracle
from app.data.loading import to_target
from bench.user_tasks import ORACLES, PAIR_BY_NAME, load_task
from engine.estimators import SpsaEstimator
from engine.losses import class_weights, per_sample_loss
from engine.mapping import LinearReadout, cross_fit_readout
from engine.program import Program

SURROGATE = {"efficientnet-lite0": "efficientnet-lite2", "efficientnet-lite2": "efficientnet-lite0"}
PAIRS = (
    "mnist10:lite0",
    "textures3:lite0",
    "objects5:lite2",
    "mnist5:moderation",
    "cancer2:nsfw",
    "faces2:nsfw",
)


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-300))


def loss_grad(readout: LinearReadout, y: np.ndarray, w: np.ndarray):
    """∂(mean focal loss)/∂probabilities for ``y``, as the white-box oracle call wants it."""

    def f(probs: np.ndarray) -> tuple[float, np.ndarray]:
        src = torch.tensor(probs, dtype=torch.float64, requires_grad=True)
        h = readout.target_probs_t(src)
        loss = per_sample_loss(h, torch.as_tensor(y), torch.as_tensor(w), "focal", 2.0).mean()
        loss.backward()
        assert src.grad is not None
        return float(loss.detach()), src.grad.numpy()

    return f


def true_grad(oracle, program, base, theta, readout, y, w) -> np.ndarray:
    frames = program.apply(base, theta)
    _, g_in = oracle.predict_with_input_grad(frames, loss_grad(readout, y, w))
    return program.backprop(base, theta, g_in)


def measure(pair: str, n_thetas: int, n_batches: int) -> dict[str, list[float]]:
    p = PAIR_BY_NAME[pair]
    spec = ORACLES[p.oracle]
    oracle = TorchOracle(spec["model"], view=spec.get("view"), threads=1)
    surrogate = TorchOracle(SURROGATE[spec["model"]], threads=1)
    twin = TorchOracle(SURROGATE[spec["model"]], view=spec.get("view"), threads=1)
    data = load_task(p.task, seed=0)
    idx = np.flatnonzero(data.split == "train")
    y = data.y[idx]
    n_classes = len(data.classes)
    program = Program(128, 48, "bilinear", 8)
    base_all = program.embed(to_target(data.images, 48, idx))
    blank = program.apply(base_all, np.zeros(program.dim))
    ro = cross_fit_readout(oracle.predict(blank).probs, y, n_classes).full
    rs = cross_fit_readout(surrogate.predict(blank).probs, y, n_classes).full
    w = class_weights(y, n_classes)
    rng = np.random.default_rng(0)
    spsa = SpsaEstimator(program.dim, 10, 0.01)
    out: dict[str, list[float]] = {"prior": [], "twin": [], "spsa": []}
    for t in range(n_thetas):
        theta = np.zeros(program.dim) if t == 0 else rng.normal(0, 0.3, program.dim)
        for _ in range(n_batches):
            b = rng.choice(len(y), size=10, replace=False)
            base, yb = base_all[b], y[b]
            g_o = true_grad(oracle, program, base, theta, ro, yb, w)
            g_s = true_grad(surrogate, program, base, theta, rs, yb, w)
            g_v = true_grad(twin, program, base, theta, ro, yb, w)
            cands = spsa.ask(theta, rng)
            losses = []
            for c in cands:
                probs = oracle.predict(program.apply(base, c)).probs
                h = ro.target_probs_t(torch.as_tensor(probs))
                losses.append(
                    float(
                        per_sample_loss(
                            h, torch.as_tensor(yb), torch.as_tensor(w), "focal", 2.0
                        ).mean()
                    )
                )
            g_z = spsa.tell(np.array(losses))
            out["prior"].append(cos(g_s, g_o))
            out["twin"].append(cos(g_v, g_o))
            out["spsa"].append(cos(g_z, g_o))
    return out


def main() -> None:
    a = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a.add_argument("--pairs", nargs="+", default=list(PAIRS))
    a.add_argument("--thetas", type=int, default=3)
    a.add_argument("--batches", type=int, default=5)
    args = a.parse_args()
    torch.set_num_threads(1)
    cols = ["pair", "surrogate", "n", "cos(g_s, g_o)", "cos(g_v, g_o)", "cos(SPSA, g_o)"]
    print("| " + " | ".join(cols) + " |  (mean (min, max))")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for pair in args.pairs:
        r = measure(pair, args.thetas, args.batches)
        sur = SURROGATE[ORACLES[PAIR_BY_NAME[pair].oracle]["model"]].removeprefix("efficientnet-")
        cells = [
            f"{mean(v):+.3f} ({min(v):+.2f}, {max(v):+.2f})"
            for v in (r["prior"], r["twin"], r["spsa"])
        ]
        print(f"| {pair} | {sur} | {len(r['prior'])} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
