"""Output mappings: from the oracle's source-label probabilities F (N×K) to target-class
probabilities h (N×C).

* ``ManyToOneMapping`` — the paper's multi-label mapping (MLM): class j owns m distinct source
  labels S_j and h_j = (1/m) Σ_{s∈S_j} F_s, renormalised over classes (Tsai et al. §3.2).
  Built by ``frequency_mapping`` (greedy, from the blank-program predictions) or
  ``random_mapping``.
* ``LinearReadout`` — a learned linear read-out h = softmax(W φ(F) + b) with
  φ(F) = log(F + ε), living on our side of the black box: its gradient is exact and costs no
  queries (a black-box form of AutoVP's fully connected mapping). Fitted at P = 0 it *is* the
  linear-probe baseline, so joint training starts from the probe.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

READOUT_EPS = 1e-6


class OutputMapping(ABC):
    """h = mapping(F). Subclasses are small value objects that serialise to arrays."""

    kind: str

    @abstractmethod
    def target_probs_t(self, source: torch.Tensor) -> torch.Tensor:
        """Differentiable h (N×C) from F (N×K), float64."""

    def target_probs(self, source: np.ndarray) -> np.ndarray:
        """h (N×C) from F (N×K), as numpy, without a gradient."""
        with torch.no_grad():
            return self.target_probs_t(torch.as_tensor(source, dtype=torch.float64)).numpy()

    def predict(self, source: np.ndarray) -> np.ndarray:
        """The target class of each row of F: argmax h."""
        return self.target_probs(source).argmax(axis=1)

    @abstractmethod
    def state(self) -> dict[str, np.ndarray]:
        """Arrays that recreate this mapping with ``mapping_from_state``."""


@dataclass
class ManyToOneMapping(OutputMapping):
    """Class j owns the source labels ``indices[j]``; h_j is their mean probability,
    renormalised over classes."""

    indices: np.ndarray  # C×m source-label indices, all distinct
    kind: str = "many_to_one"

    def __post_init__(self) -> None:
        """Refuse a source label shared by two classes."""
        self.indices = np.asarray(self.indices, dtype=np.int64)
        if len(np.unique(self.indices)) != self.indices.size:
            raise ValueError("a source label may belong to one target class only")

    def target_probs_t(self, source: torch.Tensor) -> torch.Tensor:
        """Mean probability of each class's labels, renormalised over classes."""
        idx = torch.as_tensor(self.indices)
        h = source[:, idx].mean(dim=2)
        return h / h.sum(dim=1, keepdim=True).clamp_min(1e-30)

    def state(self) -> dict[str, np.ndarray]:
        """Kind and indices."""
        return {"kind": np.array(self.kind), "indices": self.indices}


@dataclass
class LinearReadout(OutputMapping):
    """h = softmax(((log(F+ε) − μ)/σ) Wᵀ + b); μ, σ standardise the features on the data the
    read-out was first fitted on and stay fixed afterwards."""

    weight: np.ndarray  # C×K
    bias: np.ndarray  # C
    mu: np.ndarray  # K
    sigma: np.ndarray  # K
    l2: float = 1e-2
    kind: str = "linear_readout"
    _w: torch.Tensor = field(init=False, repr=False)
    _b: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        """Hold the weights as float64 tensors."""
        self._w = torch.tensor(np.asarray(self.weight, dtype=np.float64))
        self._b = torch.tensor(np.asarray(self.bias, dtype=np.float64))

    @staticmethod
    def features(source: torch.Tensor) -> torch.Tensor:
        """φ(F) = log(F + ε), before standardisation."""
        return torch.log(source + READOUT_EPS)

    def logits_t(self, source: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Standardised features times (w, b): the read-out's logits for given weights."""
        mu = torch.as_tensor(self.mu, dtype=torch.float64)
        sigma = torch.as_tensor(self.sigma, dtype=torch.float64)
        return ((self.features(source) - mu) / sigma) @ w.T + b

    def target_probs_t(self, source: torch.Tensor) -> torch.Tensor:
        """Softmax of the read-out's logits."""
        return torch.softmax(self.logits_t(source, self._w, self._b), dim=1)

    def exported(self) -> tuple[np.ndarray, np.ndarray]:
        """(weight, bias) acting on log(F + ε) directly, standardisation folded in, for a
        program file that is usable without this code."""
        w = self._w.numpy() / self.sigma[None, :]
        b = self._b.numpy() - w @ self.mu
        return w.astype(np.float32), b.astype(np.float32)

    def state(self) -> dict[str, np.ndarray]:
        """Kind, weights, standardisation and L2 strength."""
        return {
            "kind": np.array(self.kind),
            "weight": self._w.numpy(),
            "bias": self._b.numpy(),
            "mu": self.mu,
            "sigma": self.sigma,
            "l2": np.array(self.l2),
        }


def mapping_from_state(state: dict[str, np.ndarray]) -> OutputMapping:
    """The mapping whose ``state()`` this is."""
    kind = str(state["kind"])
    if kind == "many_to_one":
        return ManyToOneMapping(indices=state["indices"])
    if kind == "linear_readout":
        return LinearReadout(
            weight=state["weight"],
            bias=state["bias"],
            mu=state["mu"],
            sigma=state["sigma"],
            l2=float(state["l2"]),
        )
    raise ValueError(f"unknown mapping kind {kind!r}")


def labels_per_class(n_source: int, n_classes: int, wanted: int) -> int:
    """How many source labels each class owns in a disjoint many-to-one mapping: ``wanted``,
    fewer when the oracle's ``n_source`` labels cannot give every class that many, never
    fewer than one."""
    return max(1, min(wanted, n_source // n_classes))


def frequency_mapping(
    source: np.ndarray, y: np.ndarray, n_classes: int, labels_per_class: int
) -> ManyToOneMapping:
    """Greedy disjoint frequency mapping (Tsai et al. §3.2).

    score[j, s] = fraction of class-j images whose top-1 source label is s (ties broken by the
    mean probability of s on class j). Repeatedly take the highest-scoring (class, label) pair
    whose class still needs labels and whose label is still free, until every class has m.
    """
    source = np.asarray(source, dtype=np.float64)
    y = np.asarray(y)
    k = source.shape[1]
    if n_classes * labels_per_class > k:
        raise ValueError(
            f"{n_classes} classes × {labels_per_class} labels exceed the oracle's {k} labels"
        )
    top1 = source.argmax(axis=1)
    freq = np.zeros((n_classes, k))
    mean_p = np.zeros((n_classes, k))
    for j in range(n_classes):
        sel = y == j
        if sel.any():
            freq[j] = np.bincount(top1[sel], minlength=k) / sel.sum()
            mean_p[j] = source[sel].mean(axis=0)
    # Lexicographic (frequency, mean probability): mean_p < 1 so it only breaks ties when
    # scaled below the smallest non-zero frequency step.
    score = freq + mean_p / (len(y) + 1.0)
    order = np.argsort(-score, axis=None, kind="stable")
    chosen: list[list[int]] = [[] for _ in range(n_classes)]
    used = np.zeros(k, dtype=bool)
    for flat in order:
        j, s = divmod(int(flat), k)
        if used[s] or len(chosen[j]) >= labels_per_class:
            continue
        chosen[j].append(s)
        used[s] = True
        if all(len(c) == labels_per_class for c in chosen):
            break
    return ManyToOneMapping(indices=np.array(chosen, dtype=np.int64))


def random_mapping(
    rng: np.random.Generator, n_source: int, n_classes: int, labels_per_class: int
) -> ManyToOneMapping:
    """Random disjoint multi-label mapping; costs no queries."""
    if n_classes * labels_per_class > n_source:
        raise ValueError("not enough source labels for a disjoint mapping")
    pick = rng.permutation(n_source)[: n_classes * labels_per_class]
    return ManyToOneMapping(indices=pick.reshape(n_classes, labels_per_class))


def _fit_readout_once(
    feats: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    l2: float,
    init: LinearReadout | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L-BFGS on cross-entropy + (l2/2)‖W‖², from ``init``'s weights when given (a refit of a
    read-out whose features moved a little converges in a fraction of the iterations)."""
    k = feats.shape[1]
    if init is not None:
        w = torch.tensor(init.weight, dtype=torch.float64).requires_grad_(True)
        b = torch.tensor(init.bias, dtype=torch.float64).requires_grad_(True)
    else:
        w = torch.zeros(n_classes, k, dtype=torch.float64, requires_grad=True)
        b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    # 100 iterations to a gradient of 1e-6: the same predictions as 200 to 1e-9 on the
    # benchmark tasks, at 40 % of the time.
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=100, tolerance_grad=1e-6, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(feats @ w.T + b, y) + 0.5 * l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


@dataclass
class CrossFitReadout:
    """A read-out fitted on all training answers (``full``, used to predict) and k read-outs
    each fitted without one fold (``folds``). Training the program against the out-of-fold
    read-outs scores each training image by a read-out that never saw it, so the loss keeps
    measuring generalisation even when the full read-out fits the training set perfectly."""

    full: LinearReadout
    folds: list[LinearReadout]
    fold_of: np.ndarray  # fold index of each training image
    # Whether each training image's out-of-fold read-out classified it correctly: the
    # k-fold cross-validation score of the answers these read-outs were fitted on.
    oof_correct: np.ndarray
    # Each training image's out-of-fold probability of its own class: a finer score than
    # right or wrong, for comparing read-outs on images that both classify correctly. Read
    # only in the tell that fitted these read-outs, so it is not part of ``state``.
    oof_true_prob: np.ndarray | None = None

    def state(self) -> dict[str, object]:
        """Arrays that recreate these read-outs with ``from_state``."""
        return {
            "full": self.full.state(),
            "folds": [m.state() for m in self.folds],
            "fold_of": self.fold_of,
            "oof_correct": self.oof_correct,
        }

    @classmethod
    def from_state(cls, s: dict) -> CrossFitReadout:
        """Inverse of ``state`` (a checkpoint from before ``oof_correct`` existed loads with
        every image counted wrong; only the cross-validation mode, which is newer, reads it)."""
        fold_of = np.asarray(s["fold_of"])
        return cls(
            full=mapping_from_state(s["full"]),  # type: ignore[arg-type]
            folds=[mapping_from_state(m) for m in s["folds"]],  # type: ignore[misc]
            fold_of=fold_of,
            oof_correct=np.asarray(s.get("oof_correct", np.zeros(len(fold_of), dtype=bool))),
        )


def stratified_folds(y: np.ndarray, folds: int) -> np.ndarray:
    """Fold of each sample, by rank within its class: deterministic, no random draw."""
    y = np.asarray(y)
    fold = np.zeros(len(y), dtype=np.int64)
    for j in np.unique(y):
        idx = np.flatnonzero(y == j)
        fold[idx] = np.arange(len(idx)) % folds
    return fold


def cross_fit_readout(
    source: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    l2_grid: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0),
    folds: int = 4,
    previous: CrossFitReadout | None = None,
) -> CrossFitReadout:
    """Multinomial logistic regression on standardised log-probabilities (the linear probe),
    with the L2 strength chosen by stratified k-fold cross-validation on the same answers —
    out-of-fold accuracy first, out-of-fold log-loss to break ties; no extra queries.

    A refit (``previous`` given, same training images) keeps the L2 strength chosen before
    and starts every model from its previous weights."""
    src = torch.as_tensor(np.asarray(source, dtype=np.float64))
    feats = LinearReadout.features(src)
    mu, sigma = feats.mean(dim=0), feats.std(dim=0).clamp_min(1e-3)
    z = (feats - mu) / sigma
    yt = torch.as_tensor(np.asarray(y), dtype=torch.long)
    n_folds = max(2, min(folds, int(np.bincount(np.asarray(y)).min())))
    fold = stratified_folds(y, n_folds)
    if previous is not None:
        l2_grid = (previous.full.l2,)

    def readout(w: torch.Tensor, b: torch.Tensor, l2: float) -> LinearReadout:
        return LinearReadout(
            weight=w.numpy(), bias=b.numpy(), mu=mu.numpy(), sigma=sigma.numpy(), l2=l2
        )

    best: tuple[float, float] | None = None
    best_l2, best_folds = l2_grid[0], []
    best_hits, best_prob = np.zeros(len(y), dtype=bool), np.zeros(len(y))
    for l2 in l2_grid:
        fold_models, hits, prob, nll = [], np.zeros(len(y), dtype=bool), np.zeros(len(y)), 0.0
        for f in range(n_folds):
            tr, te = torch.as_tensor(fold != f), torch.as_tensor(fold == f)
            init = previous.folds[f] if previous is not None else None
            w, b = _fit_readout_once(z[tr], yt[tr], n_classes, l2, init)
            logits = z[te] @ w.T + b
            hits[fold == f] = (logits.argmax(1) == yt[te]).numpy()
            prob[fold == f] = logits.softmax(1).gather(1, yt[te, None])[:, 0].numpy()
            nll += float(F.cross_entropy(logits, yt[te], reduction="sum"))
            fold_models.append(readout(w, b, l2))
        score = (float(hits.mean()), -nll / len(y))
        if best is None or score > best:
            best, best_l2, best_folds, best_hits, best_prob = score, l2, fold_models, hits, prob
    init = previous.full if previous is not None else None
    w, b = _fit_readout_once(z, yt, n_classes, best_l2, init)
    return CrossFitReadout(
        full=readout(w, b, best_l2),
        folds=best_folds,
        fold_of=fold,
        oof_correct=best_hits,
        oof_true_prob=best_prob,
    )


def fit_readout(
    source: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    l2: float,
    init: LinearReadout | None = None,
) -> LinearReadout:
    """One read-out on all of ``source`` (its own standardisation) at a given L2 strength,
    started from ``init``'s weights when given: the final read-out of a program, refitted on
    training and validation answers together once validation has done its job."""
    feats = LinearReadout.features(torch.as_tensor(np.asarray(source, dtype=np.float64)))
    mu, sigma = feats.mean(dim=0), feats.std(dim=0).clamp_min(1e-3)
    yt = torch.as_tensor(np.asarray(y), dtype=torch.long)
    w, b = _fit_readout_once((feats - mu) / sigma, yt, n_classes, l2, init)
    return LinearReadout(
        weight=w.numpy(), bias=b.numpy(), mu=mu.numpy(), sigma=sigma.numpy(), l2=l2
    )
