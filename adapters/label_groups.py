"""The bundled ImageNet model's 1,000 classes, and restricted "concept" views of them.

The paper reprogrammed cloud APIs that expose only a few concepts (Clarifai NSFW: 2,
Moderation: 5). To reproduce that setting locally, and to give the fake cloud servers a real
model's opinion, a concept's probability is the *sum* of the model's probabilities over a
fixed group of ImageNet classes; the first concept of each view takes every class no other
concept claims, so each view's probabilities sum to one. The groups are semantic stand-ins
(ImageNet has no explicit content): what matters for the benchmark is that the oracle
exposes only 2 or 5 numbers per image.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import numpy as np

SUGGESTIVE = (
    "bikini", "maillot (n03710637)", "maillot (n03710721)", "swimming trunks", "miniskirt",
    "brassiere", "lipstick", "perfume", "feather boa", "hoopskirt", "overskirt", "sarong",
    "gown", "bathing cap", "fur coat", "wig", "stole", "kimono", "apron", "pajama",
)  # fmt: skip
EXPLICIT = (
    "nipple", "diaper", "shower cap", "bath towel", "bathtub", "tub", "shower curtain",
    "sunscreen", "lotion", "face powder", "hair spray", "bubble",
)  # fmt: skip
DRUG = (
    "pill bottle", "syringe", "beer bottle", "beer glass", "wine bottle", "red wine",
    "whiskey jug", "cocktail shaker", "pop bottle", "corkscrew", "eggnog", "lighter",
    "matchstick", "medicine chest", "Petri dish", "beaker",
)  # fmt: skip
GORE = (
    "cleaver", "guillotine", "hatchet", "assault rifle", "revolver", "rifle", "butcher shop",
    "chain saw", "cannon", "missile", "projectile", "tank", "warplane", "scabbard",
    "bulletproof vest", "gasmask", "stretcher", "meat loaf", "ambulance", "mask",
)  # fmt: skip

#: view name -> (concept name, ImageNet class names); the first concept takes the rest.
VIEWS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "nsfw": (("sfw", ()), ("nsfw", SUGGESTIVE + EXPLICIT + DRUG + GORE)),
    "moderation": (
        ("safe", ()),
        ("suggestive", SUGGESTIVE),
        ("explicit", EXPLICIT),
        ("drug", DRUG),
        ("gore", GORE),
    ),
}


@cache
def imagenet_labels() -> tuple[str, ...]:
    """The 1,000 ImageNet class names in the bundled model's output order."""
    text = resources.files("adapters").joinpath("data/imagenet_classes.tsv").read_text()
    rows = [line.split("\t") for line in text.splitlines() if line and not line.startswith("#")]
    return tuple(name for _, name in rows)


@cache
def fold_matrix(view: str) -> tuple[tuple[str, ...], np.ndarray]:
    """(concept names, G) with G a 1000×k 0/1 matrix: concept probs = ImageNet probs @ G."""
    if view not in VIEWS:
        raise ValueError(f"unknown label view {view!r}; known: {sorted(VIEWS)}")
    index = {name: i for i, name in enumerate(imagenet_labels())}
    concepts = VIEWS[view]
    g = np.zeros((len(index), len(concepts)))
    for j, (_, members) in enumerate(concepts):
        for name in members:
            g[index[name], j] = 1.0
    g[g.sum(axis=1) == 0, 0] = 1.0
    return tuple(c for c, _ in concepts), g


def fold(probs: np.ndarray, view: str) -> np.ndarray:
    """Sum ImageNet probabilities (N×1000) into the view's concepts (N×k)."""
    return np.asarray(probs, dtype=np.float64) @ fold_matrix(view)[1]
