"""Losses on the mapped, renormalised target-class probabilities h (N×C).

Focal loss (Tsai et al. 2020, eq. 4; Lin et al. 2017):
    L = −(1/N) Σ_i w_{y_i} (1 − h_{i,y_i})^γ log h_{i,y_i},   w_j ∝ 1/n_j.
Cross-entropy is the γ = 0 case. Written in torch so the learned read-out and the white-box
baseline get exact gradients from the same code the black-box estimators evaluate.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

LossKind = Literal["focal", "ce"]
_EPS = 1e-12


def class_weights(y: np.ndarray, n_classes: int, balanced: bool = True) -> np.ndarray:
    """w_j = N / (C · n_j): the paper's 1/n_j, scaled so that a balanced set has w_j = 1."""
    if not balanced:
        return np.ones(n_classes)
    counts = np.bincount(np.asarray(y), minlength=n_classes).astype(np.float64)
    w = np.zeros(n_classes)
    present = counts > 0
    w[present] = counts.sum() / (present.sum() * counts[present])
    return w


def per_sample_loss(
    h: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, kind: LossKind, gamma: float
) -> torch.Tensor:
    """Loss of each sample (shape N) for target probabilities h (N×C) and labels y (N)."""
    p_true = h.gather(1, y.view(-1, 1)).squeeze(1).clamp_min(_EPS)
    loss = -torch.log(p_true)
    if kind == "focal" and gamma:
        loss = loss * (1.0 - p_true).clamp_min(0.0) ** gamma
    return loss * weights[y]


def mean_loss(
    h: np.ndarray, y: np.ndarray, weights: np.ndarray, kind: LossKind, gamma: float
) -> float:
    """Mean loss as a float (numpy in, numpy out) for the zeroth-order estimators."""
    t = per_sample_loss(
        torch.as_tensor(h, dtype=torch.float64),
        torch.as_tensor(y, dtype=torch.long),
        torch.as_tensor(weights, dtype=torch.float64),
        kind,
        gamma,
    )
    return float(t.mean())
