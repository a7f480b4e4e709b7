"""How a job validates (docs/algorithm.md, "Validation"): every job does.

* ``holdout`` — programs are scored on validation images: the data set's own (a ``val/``
  folder, or the split drawn for a data set without one), or, when it has none (``train/``
  and ``test/`` folders only), a stratified share of its training images held out here
  (``data.val_fraction`` of each class, at least one, every class keeping one to train on).
* ``cross_fit`` — no image is held out either: two programs, each trained on one stratified
  half of the labelled images and validated on the other (engine.cross_fit).
* ``cross_validation`` — no image is held out: validation images, if any, join the training
  set, and a program is scored by k-fold cross-validation over the training images (each
  classified by the read-out fitted without its fold; engine.mapping.CrossFitReadout).

A class needs at least two labelled (training or validation) images: one to train on and
one to validate with. Smaller data cannot be validated and is refused, naming the minimum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.data.loading import DataError

MIN_LABELLED_PER_CLASS = 2  # one to train on, one to validate with
HOLDOUT_STREAM = 9  # the generator stream of the hold-out draw: [seed, 9]


@dataclass(frozen=True)
class Validation:
    """The validation a job uses, as the plan, the log and result.json report it."""

    method: str  # "holdout" | "cross_validation" | "cross_fit"
    source: str  # "data set" (its own val/), "split" (drawn from unsplit data), "held out"
    images: int  # images scored at each evaluation point
    per_class: list[int]
    folds: int | None = None  # cross-validation and cross-fit only

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "method": self.method,
            "source": self.source,
            "images": self.images,
            "per_class": self.per_class,
        }
        if self.folds is not None:
            out["folds"] = self.folds
        return out

    def sentence(self, n_train: int, val_fraction: float) -> str:
        """One plain line for the job's choices."""
        if self.method == "cross_fit":
            return (
                f"validation: cross-fitted programs: the {self.images} labelled images are "
                "split into two stratified halves, a program is trained on each half and "
                "validated on the other, so every image is scored by a program that never "
                "trained on it; the program returned is one of the two, its read-out refitted "
                "on all of them"
            )
        if self.method == "cross_validation":
            return (
                f"validation: {self.folds}-fold cross-validation over the {self.images} "
                "training images (each scored by the read-out fitted without its fold); no "
                "image is held out, so a program's score is measured on images it was trained "
                "on and is optimistic"
            )
        if self.source == "held out":
            return (
                f"validation: the data set has no validation images, so {self.images} of its "
                f"training images ({', '.join(map(str, self.per_class))} per class, "
                f"data.val_fraction = {val_fraction:g}, stratified) are held out to validate "
                f"on; {n_train} remain to train the program, and the final read-out is "
                "refitted on all of them"
            )
        whose = "the data set's own" if self.source == "data set" else "the split's"
        return f"validation: on {whose} {self.images} validation images"


def labelled_per_class(y: np.ndarray, parts: dict[str, np.ndarray], n_classes: int) -> np.ndarray:
    """Training + validation images of each class."""
    idx = np.concatenate([parts["train"], parts["val"]])
    return np.bincount(y[idx], minlength=n_classes)


def check_can_validate(counts: np.ndarray, classes: list[str]) -> None:
    """Refuse data too small to validate at all, naming the minimum."""
    for name, n in zip(classes, counts, strict=True):
        if n < MIN_LABELLED_PER_CLASS:
            raise DataError(
                f"class {name!r} has {n} labelled image{'s' if n != 1 else ''} outside the "
                f"test set; a job needs at least {MIN_LABELLED_PER_CLASS} per class (one to "
                "train on, one to validate with)"
            )


def holdout_count(n: int, fraction: float) -> int:
    """Validation images held out of a class of ``n`` training images (n ≥ 2)."""
    return min(n - 1, max(1, round(fraction * n)))


def apply_validation(
    parts: dict[str, np.ndarray],
    y: np.ndarray,
    classes: list[str],
    method: str,
    *,
    fraction: float,
    seed: int,
    own_val: bool,
) -> tuple[dict[str, np.ndarray], Validation]:
    """The job's train/val/test indices for ``method`` (see the module docstring), and the
    validation it amounts to. ``own_val``: the data set has a split of its own."""
    c = len(classes)
    check_can_validate(labelled_per_class(y, parts, c), classes)
    parts = dict(parts)
    if method in ("cross_validation", "cross_fit"):
        parts["train"] = np.sort(np.concatenate([parts["train"], parts["val"]]))
        parts["val"] = np.zeros(0, dtype=np.int64)
        per_class = np.bincount(y[parts["train"]], minlength=c)
        # engine.mapping.cross_fit_readout's k; engine.cross_fit's two halves
        folds = max(2, min(4, int(per_class.min()))) if method == "cross_validation" else 2
        return parts, Validation(
            method, "training images", len(parts["train"]), per_class.tolist(), folds
        )
    if method != "holdout":
        raise ValueError(f"unknown validation method {method!r}")
    if len(parts["val"]):
        per_class = np.bincount(y[parts["val"]], minlength=c).tolist()
        source = "data set" if own_val else "split"
        return parts, Validation("holdout", source, len(parts["val"]), per_class)
    if fraction <= 0:
        raise DataError(
            "data.val_fraction is 0 and the data set has no validation images: nothing to "
            "hold out; set data.val_fraction above 0, or data.validation to 'cross_fit' "
            "(mapping.method 'learned')"
        )
    rng = np.random.default_rng([seed, HOLDOUT_STREAM])
    train, val = [], []
    for j in range(c):
        members = rng.permutation(parts["train"][y[parts["train"]] == j])
        k = holdout_count(len(members), fraction)
        val += members[:k].tolist()
        train += members[k:].tolist()
    parts["train"] = np.sort(np.array(train, dtype=np.int64))
    parts["val"] = np.sort(np.array(val, dtype=np.int64))
    per_class = np.bincount(y[parts["val"]], minlength=c).tolist()
    return parts, Validation("holdout", "held out", len(parts["val"]), per_class)
