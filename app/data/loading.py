"""Labelled image data sets: loading (ImageFolder folders and zips, ``.npz``), checking,
resizing to the program's target size, and splitting.

Layouts (docs/contract.md): ``<class>/<image>`` or ``train|val|test/<class>/<image>``, PNG or JPEG;
or an ``.npz`` with ``x`` (uint8 N×H×W×C, C ∈ {1, 3}), ``y`` (int N), optional ``classes``
and ``split``. Anything else is refused with a ``DataError`` that names the problem; zips are
read in memory with limits on entries, sizes and compression ratio, and never extracted.
"""

from __future__ import annotations

import io
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
SPLITS = ("train", "val", "test")
IGNORED = ("__MACOSX", ".DS_Store", "Thumbs.db")


class DataError(ValueError):
    """The data set cannot be used as it is."""


@dataclass(frozen=True)
class Limits:
    max_files: int = 100_000
    max_file_bytes: int = 20 * 1024**2
    max_total_bytes: int = 2 * 1024**3  # uncompressed
    max_ratio: float = 200.0  # uncompressed/compressed; beyond this an entry is a bomb
    max_pixels: int = 40_000_000


@dataclass
class Dataset:
    images: list[np.ndarray]  # uint8 H×W×3, sizes may differ
    y: np.ndarray  # int64 N
    classes: list[str]
    split: np.ndarray | None = None  # "train" / "val" / "test" per image, when the data says

    def __post_init__(self) -> None:
        if len(self.images) != len(self.y):
            raise DataError("images and labels differ in number")
        if len(self.images) == 0:
            raise DataError("the data set holds no images")
        counts = np.bincount(self.y, minlength=len(self.classes))
        empty = [c for c, n in zip(self.classes, counts, strict=True) if n == 0]
        if empty:
            raise DataError(f"class {empty[0]!r} has no images")

    @property
    def image_shape(self) -> list[int] | None:
        shapes = {img.shape for img in self.images}
        return list(next(iter(shapes))) if len(shapes) == 1 else None


def decode_image(data: bytes, name: str, limits: Limits = Limits()) -> np.ndarray:
    """Bytes of a PNG/JPEG to uint8 H×W×3 (grey and palette images become RGB)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > limits.max_pixels:
                raise DataError(f"{name}: {img.width}×{img.height} pixels is too large")
            if img.format not in ("PNG", "JPEG"):
                raise DataError(f"{name}: {img.format} images are not accepted (PNG or JPEG)")
            img.load()
    except DataError:
        raise
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as err:
        raise DataError(f"{name}: not a readable image ({err})") from err
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _ignored(parts: tuple[str, ...]) -> bool:
    """System litter (``__MACOSX/``, ``.DS_Store``, dot files): never data."""
    return any(part in IGNORED or part.startswith(".") for part in parts)


def _assemble(entries: list[tuple[PurePosixPath, bytes]], source: str, limits: Limits) -> Dataset:
    """Build a data set from (relative path, bytes) of every file in a folder layout."""
    files = [(p, b) for p, b in entries if not _ignored(p.parts)]
    litter = [p.parts for p, _ in entries if _ignored(p.parts[-1:]) and not _ignored(p.parts[:-1])]
    if not files:
        raise DataError(f"{source}: no files")
    # A single top-level folder wrapping everything (common in zips) is not a class.
    while len({p.parts[0] for p, _ in files}) == 1 and all(len(p.parts) > 2 for p, _ in files):
        top = files[0][0].parts[0]
        files = [(PurePosixPath(*p.parts[1:]), b) for p, b in files]
        litter = [parts[1:] for parts in litter if parts[0] == top]
    has_split = {p.parts[0] for p, _ in files} <= set(SPLITS)
    depth = 3 if has_split else 2
    rows: list[tuple[str | None, str, PurePosixPath, bytes]] = []
    for path, data in files:
        if len(path.parts) != depth:
            layout = "<split>/<class>/<image>" if has_split else "<class>/<image>"
            raise DataError(f"{source}: {path} does not follow the layout {layout}")
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"{source}: {path} is not a PNG or JPEG image")
        split = path.parts[0] if has_split else None
        rows.append((split, path.parts[-2], path, data))
    classes = sorted({cls for _, cls, _, _ in rows})
    # A class folder holding nothing but litter (say, a .DS_Store) is an empty class.
    for parts in litter:
        if len(parts) == depth and parts[-2] not in classes:
            raise DataError(f"{source}: class {parts[-2]!r} has no images")
    if has_split and "train" not in {s for s, _, _, _ in rows}:
        raise DataError(f"{source}: a split layout needs a train/ folder")
    index = {c: i for i, c in enumerate(classes)}
    images = [decode_image(data, str(path), limits) for _, _, path, data in rows]
    y = np.array([index[cls] for _, cls, _, _ in rows], dtype=np.int64)
    split_arr = np.array([s for s, _, _, _ in rows]) if has_split else None
    if split_arr is not None:
        train_classes = set(y[split_arr == "train"].tolist())
        missing = [c for c in classes if index[c] not in train_classes]
        if missing:
            raise DataError(f"{source}: class {missing[0]!r} has no training images")
    return Dataset(images=images, y=y, classes=classes, split=split_arr)


def _from_folder(root: Path, limits: Limits) -> Dataset:
    entries = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = PurePosixPath(path.relative_to(root).as_posix())
        if path.stat().st_size > limits.max_file_bytes:
            raise DataError(f"{rel}: larger than {limits.max_file_bytes} bytes")
        entries.append((rel, path.read_bytes()))
        if len(entries) > limits.max_files:
            raise DataError(f"{root}: more than {limits.max_files} files")
    for class_dir in sorted(p for p in root.glob("*/") if p.is_dir()):
        if not any(class_dir.iterdir()):
            raise DataError(f"class {class_dir.name!r} has no images")
    return _assemble(entries, str(root), limits)


def read_zip(data: bytes | Path, limits: Limits = Limits()) -> list[tuple[PurePosixPath, bytes]]:
    """Every file of a zip as (safe relative path, bytes), enforcing ``limits``."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data) if isinstance(data, bytes) else data)
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(f"not a readable zip archive ({err})") from err
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        if len(infos) > limits.max_files:
            raise DataError(f"the archive holds more than {limits.max_files} files")
        total = 0
        entries, empty_dirs = [], {i.filename.rstrip("/") for i in zf.infolist() if i.is_dir()}
        for info in infos:
            path = PurePosixPath(info.filename)
            if path.is_absolute() or ".." in path.parts or "\\" in info.filename:
                raise DataError(f"unsafe path in archive: {info.filename!r}")
            if info.file_size > limits.max_file_bytes:
                raise DataError(f"{info.filename}: larger than {limits.max_file_bytes} bytes")
            if info.compress_size and info.file_size / info.compress_size > limits.max_ratio:
                raise DataError(f"{info.filename}: compression ratio suggests a zip bomb")
            total += info.file_size
            if total > limits.max_total_bytes:
                raise DataError(f"the archive expands beyond {limits.max_total_bytes} bytes")
            try:
                # Read at most the declared size + 1: a lying header cannot expand further.
                with zf.open(info) as fh:
                    blob = fh.read(limits.max_file_bytes + 1)
            except (zipfile.BadZipFile, OSError, EOFError, zipfile.LargeZipFile) as err:
                raise DataError(f"{info.filename}: corrupt archive entry ({err})") from err
            if len(blob) > limits.max_file_bytes:
                raise DataError(f"{info.filename}: larger than {limits.max_file_bytes} bytes")
            entries.append((path, blob))
            empty_dirs.discard(str(path.parent))
        for d in sorted(empty_dirs):
            folder = PurePosixPath(d)
            if not d or _ignored(folder.parts):
                continue
            if not any(str(p).startswith(d + "/") for p, _ in entries):
                if folder.name in SPLITS:
                    raise DataError(f"split folder {d + '/'!r} holds no images")
                raise DataError(f"class {folder.name!r} has no images")
    return entries


def _check_npz(source: bytes | Path, name: str, limits: Limits) -> None:
    """An ``.npz`` is a zip: refuse one that would expand beyond the limits before numpy
    decompresses it (numpy reads at most the sizes the archive declares)."""
    try:
        with zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise DataError(f"{name}: not a readable .npz file ({err})") from err
    total = 0
    for info in infos:
        if info.compress_size and info.file_size / info.compress_size > limits.max_ratio:
            raise DataError(f"{name}: {info.filename}: compression ratio suggests a zip bomb")
        total += info.file_size
        if total > limits.max_total_bytes:
            raise DataError(f"{name}: the arrays expand beyond {limits.max_total_bytes} bytes")


def _from_npz(source: bytes | Path, name: str, limits: Limits = Limits()) -> Dataset:
    _check_npz(source, name, limits)
    try:
        with np.load(
            io.BytesIO(source) if isinstance(source, bytes) else source, allow_pickle=False
        ) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"{name}: not a readable .npz file ({err})") from err
    for key in ("x", "y"):
        if key not in arrays:
            raise DataError(f"{name}: the .npz has no {key!r} array")
    x, y = arrays["x"], arrays["y"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DataError(
            f"{name}: x must be uint8 N×H×W×C with C in {{1, 3}}, got {x.dtype} {x.shape}"
        )
    if len(x) > limits.max_files:
        raise DataError(f"{name}: more than {limits.max_files} images")
    if not 0 < x.shape[1] * x.shape[2] <= limits.max_pixels:
        raise DataError(f"{name}: {x.shape[1]}×{x.shape[2]} pixels is not a usable image size")
    if not np.issubdtype(y.dtype, np.integer) or y.shape != (len(x),):
        raise DataError(f"{name}: y must be {len(x)} integers")
    if len(y) and y.min() < 0:
        raise DataError(f"{name}: labels must be non-negative")
    n_classes = int(y.max()) + 1 if len(y) else 0
    classes = None
    if "classes" in arrays:
        if arrays["classes"].ndim != 1:
            raise DataError(f"{name}: classes must be a 1-D array of names")
        classes = [str(c) for c in arrays["classes"]]
        if len(set(classes)) != len(classes):
            raise DataError(f"{name}: class names must be unique")
    if classes is not None and len(classes) < n_classes:
        raise DataError(f"{name}: {len(classes)} class names for labels up to {n_classes - 1}")
    split = None
    if "split" in arrays:
        split = arrays["split"].astype(str)
        if split.shape != (len(x),) or not set(split.tolist()) <= set(SPLITS):
            raise DataError(f"{name}: split must hold train/val/test for every image")
    images = [np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img for img in x]
    return Dataset(
        images=images,
        y=y.astype(np.int64),
        classes=classes or [str(i) for i in range(n_classes)],
        split=split,
    )


def load_dataset(path: str | Path, limits: Limits = Limits()) -> Dataset:
    """Load a folder, ``.zip`` or ``.npz`` data set, or raise ``DataError``."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_dir():
        return _from_folder(path, limits)
    return load_bytes(path.read_bytes(), path.name, limits)


def load_bytes(data: bytes, name: str, limits: Limits = Limits()) -> Dataset:
    """Load an uploaded ``.zip`` or ``.npz`` held in memory."""
    if name.lower().endswith(".npz"):
        return _from_npz(data, name, limits)
    if name.lower().endswith(".zip") or data[:2] == b"PK":
        return _assemble(read_zip(data, limits), name, limits)
    raise DataError(f"{name}: expected a folder, a .zip or a .npz")


def to_target(images: list[np.ndarray], size: int) -> np.ndarray:
    """Resize to size×size (bilinear, docs/contract.md) as float32 N×t×t×3 in [0, 1]."""
    out = np.empty((len(images), size, size, 3), dtype=np.float32)
    for i, img in enumerate(images):
        pil = Image.fromarray(img)
        if pil.size != (size, size):
            pil = pil.resize((size, size), Image.BILINEAR)
        out[i] = np.asarray(pil, dtype=np.float32) / 255.0
    return out


def split_indices(
    dataset: Dataset,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    max_train: int | None = None,
    max_test: int | None = None,
) -> dict[str, np.ndarray]:
    """Indices of train/val/test: the data's own split, or a stratified one drawn from seed.
    ``max_train``/``max_test`` subsample (stratified, from the same seed)."""
    rng = np.random.default_rng(seed)
    y = dataset.y
    if dataset.split is not None:
        parts = {s: np.flatnonzero(dataset.split == s) for s in SPLITS}
        if not len(parts["test"]):  # no test folder: carve one from train
            parts = _stratified(parts["train"], y, rng, 0.0, test_fraction) | {"val": parts["val"]}
    else:
        parts = _stratified(np.arange(len(y)), y, rng, val_fraction, test_fraction)
    if max_train is not None:
        parts["train"] = _subsample(parts["train"], y, max_train, rng)
    if max_test is not None:
        parts["test"] = _subsample(parts["test"], y, max_test, rng)
    present = set(y[parts["train"]].tolist())
    missing = [dataset.classes[j] for j in range(len(dataset.classes)) if j not in present]
    if missing:
        raise DataError(f"class {missing[0]!r} has no training images after the split")
    return parts


def _stratified(
    idx: np.ndarray, y: np.ndarray, rng: np.random.Generator, val: float, test: float
) -> dict[str, np.ndarray]:
    out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for j in np.unique(y[idx]):
        members = rng.permutation(idx[y[idx] == j])
        n_test = round(test * len(members))
        n_val = round(val * len(members))
        if len(members) - n_test - n_val < 1:  # every class keeps a training image
            n_test = min(n_test, max(0, len(members) - 1))
            n_val = min(n_val, max(0, len(members) - 1 - n_test))
        out["test"] += members[:n_test].tolist()
        out["val"] += members[n_test : n_test + n_val].tolist()
        out["train"] += members[n_test + n_val :].tolist()
    return {k: np.sort(np.array(v, dtype=np.int64)) for k, v in out.items()}


def _subsample(idx: np.ndarray, y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """At most n of idx, stratified: every class keeps its share (and at least one)."""
    if len(idx) <= n:
        return idx
    classes = np.unique(y[idx])
    keep: list[int] = []
    for j in classes:
        members = rng.permutation(idx[y[idx] == j])
        share = max(1, round(n * len(members) / len(idx)))
        keep += members[:share].tolist()
    return np.sort(np.array(keep, dtype=np.int64))
