"""Labelled image data sets: loading (ImageFolder folders and zips, ``.npz``), checking,
resizing to the program's target size, and splitting.

Layouts (docs/contract.md): ``<class>/<image>`` or ``train|val|test/<class>/<image>``, PNG or JPEG;
or an ``.npz`` with ``x`` (uint8 N×H×W×C, C ∈ {1, 3}), ``y`` (int N), optional ``classes``
and ``split``. Anything else is refused with a ``DataError`` that names the problem; zips are
read in memory with limits on entries, sizes and compression ratio, and never extracted.

Memory stays bounded whatever the upload: every image's size is read from its header and the
pixels are summed (``Limits.max_total_pixels``) before any image is decoded; images are then
decoded one at a time when asked for (``EncodedImages``), and an ``.npz``'s ``x`` is read
from the file only when its pixels are needed (never to check an upload).
"""

from __future__ import annotations

import io
import operator
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
from numpy.lib import format as npy_format
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
SPLITS = ("train", "val", "test")
IGNORED = ("__MACOSX", ".DS_Store", "Thumbs.db")
MIN_CLASSES = 2  # a task with one class has nothing to learn
MIN_PER_CLASS = 3  # without a split of its own: one to train on, one to validate, one to test


class DataError(ValueError):
    """The data set cannot be used as it is."""


class DataTooLarge(DataError):
    """Beyond a size limit (the API answers 413)."""


class TooLittleData(DataError):
    """Well-formed, but too little to train on and test (the API answers 422)."""


@dataclass(frozen=True)
class Limits:
    max_files: int = 100_000
    max_file_bytes: int = 20 * 1024**2
    max_total_bytes: int = 2 * 1024**3  # uncompressed
    max_ratio: float = 200.0  # uncompressed/compressed; beyond this an entry is a bomb
    max_pixels: int = 40_000_000  # one image (width × height)
    max_total_pixels: int | None = None  # all images together; None: no limit
    total_pixels_setting: str = "max_total_pixels"  # named when the sum is refused

    def check_total_pixels(self, total: int, source: str) -> None:
        if self.max_total_pixels is not None and total > self.max_total_pixels:
            raise DataTooLarge(
                f"{source}: the images hold more than {self.max_total_pixels:,} pixels "
                f"(width × height, summed over the images; the limit, {self.total_pixels_setting})"
            )


def check_labels(y: np.ndarray, classes: list[str], split: np.ndarray | None) -> None:
    """Every class has images, there are at least two classes, and (without a split of the
    data's own) every class has enough images to train on and to test."""
    counts = np.bincount(y, minlength=len(classes))
    empty = [c for c, n in zip(classes, counts, strict=True) if n == 0]
    if empty:
        raise DataError(f"class {empty[0]!r} has no images")
    if len(classes) < MIN_CLASSES:
        raise TooLittleData(
            f"the data set has {len(classes)} class ({', '.join(map(repr, classes))}); "
            f"reprogramming needs at least {MIN_CLASSES}"
        )
    if split is None:
        few = [(c, int(n)) for c, n in zip(classes, counts, strict=True) if n < MIN_PER_CLASS]
        if few:
            name, n = few[0]
            raise TooLittleData(
                f"class {name!r} has {n} image{'s' if n != 1 else ''}; every class needs at "
                f"least {MIN_PER_CLASS} (one to train on, one to validate with, one to test on)"
            )


@dataclass
class Dataset:
    images: Sequence[np.ndarray]  # uint8 H×W×3 each, sizes may differ; decoded when indexed
    y: np.ndarray  # int64 N
    classes: list[str]
    split: np.ndarray | None = None  # "train" / "val" / "test" per image, when the data says

    def __post_init__(self) -> None:
        if len(self.images) != len(self.y):
            raise DataError("images and labels differ in number")
        if len(self.images) == 0:
            raise DataError("the data set holds no images")
        check_labels(self.y, self.classes, self.split)

    @property
    def image_shape(self) -> list[int] | None:
        known = getattr(self.images, "shapes", None)
        shapes = set(known) if known is not None else {img.shape for img in self.images}
        return list(next(iter(shapes))) if len(shapes) == 1 else None


class EncodedImages(Sequence[np.ndarray]):
    """PNG/JPEG files, decoded one at a time when indexed: the data set holds the files' bytes
    (or the means to read them), never all its images decoded at once."""

    def __init__(
        self,
        read: Callable[[int], bytes],
        names: list[str],
        sizes: list[tuple[int, int]],
        limits: Limits,
    ) -> None:
        self._read, self.names, self.sizes, self.limits = read, names, sizes, limits

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: Any) -> Any:
        name = self.names[operator.index(i)]  # IndexError past the end, as a Sequence must
        return decode_image(self._read(operator.index(i) % len(self)), name, self.limits)

    @property
    def shapes(self) -> list[tuple[int, int, int]]:
        return [(h, w, 3) for w, h in self.sizes]


class ArrayImages(Sequence[np.ndarray]):
    """The images of an ``.npz``'s ``x`` (N×H×W×C uint8), read from the file the first time
    one is asked for; grey images come out as RGB."""

    def __init__(self, load: Callable[[], np.ndarray], shape: tuple[int, ...]) -> None:
        self._load, self._x, self.shape = load, None, shape

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i: Any) -> Any:
        i = operator.index(i)
        if self._x is None:
            self._x = self._load()
        img = self._x[i]
        return np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img

    @property
    def shapes(self) -> list[tuple[int, int, int]]:
        return [(self.shape[1], self.shape[2], 3)] * self.shape[0]


_UNREADABLE = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


def _open(data: bytes, name: str, limits: Limits) -> Image.Image:
    """The image's header (PIL reads nothing else until ``load``), checked: PNG or JPEG, and
    within ``limits.max_pixels``."""
    img = Image.open(io.BytesIO(data))
    if img.width * img.height > limits.max_pixels:
        raise DataTooLarge(
            f"{name}: {img.width}×{img.height} pixels is too large "
            f"(at most {limits.max_pixels:,} per image)"
        )
    if img.format not in ("PNG", "JPEG"):
        raise DataError(f"{name}: {img.format} images are not accepted (PNG or JPEG)")
    return img


def image_size(data: bytes, name: str, limits: Limits = Limits()) -> tuple[int, int]:
    """(width, height) of a PNG/JPEG from its header alone, without decoding its pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = _open(data, name, limits)
    except DataError:
        raise
    except _UNREADABLE as err:
        raise DataError(f"{name}: not a readable image ({err})") from err
    return img.size


def _decoded(data: bytes, name: str, limits: Limits) -> Image.Image:
    """The image with its pixels decoded (in PIL's memory, in the file's own mode)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = _open(data, name, limits)
            img.load()
    except DataError:
        raise
    except _UNREADABLE as err:
        raise DataError(f"{name}: not a readable image ({err})") from err
    return img


def check_image(data: bytes, name: str, limits: Limits = Limits()) -> None:
    """Decode a PNG/JPEG to see that it decodes, keeping nothing."""
    _decoded(data, name, limits).close()


def decode_image(
    data: bytes, name: str, limits: Limits = Limits(), size: int | None = None
) -> np.ndarray:
    """Bytes of a PNG/JPEG to uint8 H×W×3 (grey and palette images become RGB); with
    ``size``, resized at once to size×size (bilinear, as ``to_target`` and the contract's
    recipe do), so that only the small copy outlives the call."""
    rgb = _rgb(data, name, limits)
    return np.asarray(rgb if size is None else _fit(rgb, size), dtype=np.uint8)


def decode_resized(
    data: bytes, name: str, limits: Limits, sizes: Sequence[int]
) -> list[np.ndarray]:
    """Bytes of a PNG/JPEG decoded once into a uint8 RGB copy at each of ``sizes`` (as
    ``decode_image``): a program with a view needs the image at the target size for its
    programmed frame and at the frame's size for the view, and only these copies outlive
    the call."""
    rgb = _rgb(data, name, limits)
    return [np.asarray(_fit(rgb, size), dtype=np.uint8) for size in sizes]


def _rgb(data: bytes, name: str, limits: Limits) -> Image.Image:
    img = _decoded(data, name, limits)
    # A converted image's original goes on return, before any resized copy is made.
    return img if img.mode == "RGB" else img.convert("RGB")


def _ignored(parts: tuple[str, ...]) -> bool:
    """System litter (``__MACOSX/``, ``.DS_Store``, dot files): never data."""
    return any(part in IGNORED or part.startswith(".") for part in parts)


Reader = Callable[[], bytes]
Source = bytes | Path  # an upload in memory, or a file (read only as far as needed)
#: How far a data set is checked: the labels alone (from the layout or the .npz's small
#: arrays), also every image's header and the pixels in all, or also every image decoded.
Check = Literal["labels", "headers", "decode"]


def _open_source(source: Source) -> Any:
    return io.BytesIO(source) if isinstance(source, bytes) else source


def _assemble(
    entries: list[tuple[PurePosixPath, Reader]], source: str, limits: Limits, check: Check
) -> Dataset:
    """Build a data set from (relative path, reader of its bytes) of every file in a folder
    layout. Checks the layout, then (``check``) every image's header and the pixels in all,
    then the labels, and decodes every image once, one at a time."""
    files = [(p, r) for p, r in entries if not _ignored(p.parts)]
    litter = [p.parts for p, _ in entries if _ignored(p.parts[-1:]) and not _ignored(p.parts[:-1])]
    if not files:
        raise DataError(f"{source}: no files")
    # A single top-level folder wrapping everything (common in zips) is not a class.
    while len({p.parts[0] for p, _ in files}) == 1 and all(len(p.parts) > 2 for p, _ in files):
        top = files[0][0].parts[0]
        files = [(PurePosixPath(*p.parts[1:]), r) for p, r in files]
        litter = [parts[1:] for parts in litter if parts[0] == top]
    has_split = {p.parts[0] for p, _ in files} <= set(SPLITS)
    depth = 3 if has_split else 2
    rows: list[tuple[str | None, str, PurePosixPath, Reader]] = []
    for path, read in files:
        if len(path.parts) != depth:
            layout = "<split>/<class>/<image>" if has_split else "<class>/<image>"
            raise DataError(f"{source}: {path} does not follow the layout {layout}")
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"{source}: {path} is not a PNG or JPEG image")
        split = path.parts[0] if has_split else None
        rows.append((split, path.parts[-2], path, read))
    classes = sorted({cls for _, cls, _, _ in rows})
    # A class folder holding nothing but litter (say, a .DS_Store) is an empty class.
    for parts in litter:
        if len(parts) == depth and parts[-2] not in classes:
            raise DataError(f"{source}: class {parts[-2]!r} has no images")
    if has_split and "train" not in {s for s, _, _, _ in rows}:
        raise DataError(f"{source}: a split layout needs a train/ folder")
    # Headers only: the sizes, and the pixels in all, before any image is decoded.
    sizes, total = [], 0
    for _, _, path, read in rows if check != "labels" else ():
        width, height = image_size(read(), str(path), limits)
        sizes.append((width, height))
        total += width * height
        limits.check_total_pixels(total, source)
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[cls] for _, cls, _, _ in rows], dtype=np.int64)
    split_arr = np.array([s for s, _, _, _ in rows]) if has_split else None
    if split_arr is not None:
        train_classes = set(y[split_arr == "train"].tolist())
        missing = [c for c in classes if index[c] not in train_classes]
        if missing:
            raise DataError(f"{source}: class {missing[0]!r} has no training images")
    check_labels(y, classes, split_arr)
    readers = [read for _, _, _, read in rows]
    images = EncodedImages(
        lambda i: readers[i](), [str(path) for _, _, path, _ in rows], sizes, limits
    )
    if check == "decode":  # a file that does not decode never lands; one at a time
        for _, _, path, read in rows:
            check_image(read(), str(path), limits)
    return Dataset(images=images, y=y, classes=classes, split=split_arr)


def _from_folder(root: Path, limits: Limits, check: Check) -> Dataset:
    entries: list[tuple[PurePosixPath, Reader]] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = PurePosixPath(path.relative_to(root).as_posix())
        if path.stat().st_size > limits.max_file_bytes:
            raise DataError(f"{rel}: larger than {limits.max_file_bytes} bytes")
        entries.append((rel, path.read_bytes))
        if len(entries) > limits.max_files:
            raise DataError(f"{root}: more than {limits.max_files} files")
    for class_dir in sorted(p for p in root.glob("*/") if p.is_dir()):
        if not any(class_dir.iterdir()):
            raise DataError(f"class {class_dir.name!r} has no images")
    return _assemble(entries, str(root), limits, check)


def zip_entries(data: Source, limits: Limits = Limits()) -> list[tuple[PurePosixPath, Reader]]:
    """Every file of a zip as (safe relative path, reader of its bytes), enforcing ``limits``
    on the archive's directory; each reader reads at most the declared size (+1 to catch a
    lying header), so no entry expands beyond its limit."""
    try:
        zf = zipfile.ZipFile(_open_source(data))
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(f"not a readable zip archive ({err})") from err
    infos = [i for i in zf.infolist() if not i.is_dir()]
    if len(infos) > limits.max_files:
        raise DataError(f"the archive holds more than {limits.max_files} files")
    total = 0
    entries: list[tuple[PurePosixPath, Reader]] = []
    empty_dirs = {i.filename.rstrip("/") for i in zf.infolist() if i.is_dir()}
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
        entries.append((path, _entry_reader(zf, info, limits)))
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


def _entry_reader(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limits: Limits) -> Reader:
    def read() -> bytes:
        try:
            with zf.open(info) as fh:
                blob = fh.read(limits.max_file_bytes + 1)
        except (zipfile.BadZipFile, OSError, EOFError, zipfile.LargeZipFile) as err:
            raise DataError(f"{info.filename}: corrupt archive entry ({err})") from err
        if len(blob) > limits.max_file_bytes:
            raise DataError(f"{info.filename}: larger than {limits.max_file_bytes} bytes")
        return blob

    return read


def _npz_headers(source: Source, name: str, limits: Limits) -> dict[str, tuple[tuple, np.dtype]]:
    """The shape and dtype of every array of an ``.npz``, from the .npy headers alone (no
    array is decompressed), after refusing an archive that would expand beyond the limits."""
    try:
        zf = zipfile.ZipFile(_open_source(source))
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise DataError(f"{name}: not a readable .npz file ({err})") from err
    headers = {}
    with zf:
        total = 0
        for info in zf.infolist():
            if info.compress_size and info.file_size / info.compress_size > limits.max_ratio:
                raise DataError(f"{name}: {info.filename}: compression ratio suggests a zip bomb")
            total += info.file_size
            if total > limits.max_total_bytes:
                raise DataError(f"{name}: the arrays expand beyond {limits.max_total_bytes} bytes")
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            try:
                with zf.open(info) as fh:
                    version = npy_format.read_magic(fh)
                    read_header = {
                        (1, 0): npy_format.read_array_header_1_0,
                        (2, 0): npy_format.read_array_header_2_0,
                    }.get(version)
                    if read_header is None:
                        raise ValueError(f".npy format version {version} is not accepted")
                    shape, _, dtype = read_header(fh)
            except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
                raise DataError(f"{name}: not a readable .npz file ({err})") from err
            headers[info.filename.removesuffix(".npy")] = (shape, dtype)
    return headers


def _npz_array(source: Source, name: str, key: str) -> np.ndarray:
    try:
        with np.load(_open_source(source), allow_pickle=False) as npz:
            return npz[key]
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"{name}: not a readable .npz file ({err})") from err


def _check_npz_payload(source: Source, name: str, key: str) -> None:
    """Read an array's bytes through once, in pieces (the archive's CRC is checked at the
    end), without holding the array."""
    try:
        with zipfile.ZipFile(_open_source(source)) as zf, zf.open(f"{key}.npy") as fh:
            while fh.read(1024 * 1024):
                pass
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"{name}: not a readable .npz file ({err})") from err


def _from_npz(source: Source, name: str, limits: Limits, check: Check) -> Dataset:
    headers = _npz_headers(source, name, limits)
    for key in ("x", "y"):
        if key not in headers:
            raise DataError(f"{name}: the .npz has no {key!r} array")
    shape = _npz_image_shape(headers, name, limits, check)
    y, classes, split = _npz_labels(source, name, headers, shape[0], limits)
    if check == "decode":
        _check_npz_payload(source, name, "x")
    return Dataset(
        images=ArrayImages(lambda: _npz_array(source, name, "x"), shape),
        y=y.astype(np.int64),
        classes=classes,
        split=split,
    )


def _npz_image_shape(
    headers: dict[str, tuple[tuple, np.dtype]], name: str, limits: Limits, check: Check
) -> tuple[int, ...]:
    """``x``'s shape, checked from its header alone (nothing is loaded)."""
    shape, dtype = headers["x"]
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] not in (1, 3):
        raise DataError(f"{name}: x must be uint8 N×H×W×C with C in {{1, 3}}, got {dtype} {shape}")
    n = shape[0]
    if n > limits.max_files:
        raise DataError(f"{name}: more than {limits.max_files} images")
    if not 0 < shape[1] * shape[2] <= limits.max_pixels:
        raise DataError(f"{name}: {shape[1]}×{shape[2]} pixels is not a usable image size")
    if check != "labels":
        limits.check_total_pixels(n * shape[1] * shape[2], name)
    return shape


def _npz_labels(
    source: Source,
    name: str,
    headers: dict[str, tuple[tuple, np.dtype]],
    n: int,
    limits: Limits,
) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    """``y``, the class names and the split; the small arrays are loaded only once their
    headers say they are as small as they must be."""
    if headers["y"][0] != (n,):
        raise DataError(f"{name}: y must be {n} integers")
    if "split" in headers and headers["split"][0] != (n,):
        raise DataError(f"{name}: split must hold train/val/test for every image")
    y = _npz_array(source, name, "y")
    if not np.issubdtype(y.dtype, np.integer) or y.shape != (n,):
        raise DataError(f"{name}: y must be {n} integers")
    if len(y) and y.min() < 0:
        raise DataError(f"{name}: labels must be non-negative")
    n_classes = int(y.max()) + 1 if len(y) else 0
    classes = None
    if "classes" in headers:
        if len(headers["classes"][0]) != 1 or headers["classes"][0][0] > limits.max_files:
            raise DataError(f"{name}: classes must be a 1-D array of names")
        classes = [str(c) for c in _npz_array(source, name, "classes")]
        if len(set(classes)) != len(classes):
            raise DataError(f"{name}: class names must be unique")
    if classes is not None and len(classes) < n_classes:
        raise DataError(f"{name}: {len(classes)} class names for labels up to {n_classes - 1}")
    split = None
    if "split" in headers:
        split = _npz_array(source, name, "split").astype(str)
        if split.shape != (n,) or not set(split.tolist()) <= set(SPLITS):
            raise DataError(f"{name}: split must hold train/val/test for every image")
    return y, classes or [str(i) for i in range(n_classes)], split


def load_dataset(path: str | Path, limits: Limits = Limits()) -> Dataset:
    """Load a folder, ``.zip`` or ``.npz`` data set, or raise ``DataError``; every image is
    decoded once to check it (one at a time), then again whenever it is used."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_dir():
        return _from_folder(path, limits, "decode")
    return load_bytes(path.read_bytes(), path.name, limits)


def load_bytes(data: bytes, name: str, limits: Limits = Limits(), verify: bool = True) -> Dataset:
    """Load an uploaded ``.zip`` or ``.npz`` held in memory. ``verify``: decode every image
    once (one at a time) so that a file that does not decode is refused now; without it only
    the headers are read (a stored upload, checked when it came), and images are decoded
    when the data set is used."""
    return _load(data, name, limits, "decode" if verify else "headers")


def read_labels(path: Path, name: str) -> Dataset:
    """The labels of a stored ``.zip`` or ``.npz`` (``y``, ``classes``, ``split``) from the
    archive's directory or the .npz's small arrays alone: no image is read or decoded.
    Its ``images`` are there to index, but nobody should: this is for planning."""
    return _load(path, name, Limits(), "labels")


def _load(source: Source, name: str, limits: Limits, check: Check) -> Dataset:
    if name.lower().endswith(".npz"):
        return _from_npz(source, name, limits, check)
    if name.lower().endswith(".zip") or (isinstance(source, bytes) and source[:2] == b"PK"):
        return _assemble(zip_entries(source, limits), name, limits, check)
    raise DataError(f"{name}: expected a folder, a .zip or a .npz")


def _fit(img: Image.Image, size: int) -> Image.Image:
    """The one resize rule of images (docs/contract.md, the recipe): bilinear to size×size;
    an image of that size is left as it is."""
    return img if img.size == (size, size) else img.resize((size, size), Image.BILINEAR)


def resize_rgb(image: np.ndarray, size: int) -> np.ndarray:
    """One uint8 image (grey H×W, RGB or RGBA) as RGB resized to size×size: uint8."""
    rgb = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    return np.asarray(_fit(rgb, size))


def to_target(
    images: Sequence[np.ndarray], size: int, indices: Sequence[int] | None = None
) -> np.ndarray:
    """Resize ``images`` (those at ``indices``, when given) to size×size (bilinear,
    docs/contract.md) as float32 N×t×t×3 in [0, 1]; one image is decoded at a time."""
    order = range(len(images)) if indices is None else indices
    out = np.empty((len(order), size, size, 3), dtype=np.float32)
    for k, i in enumerate(order):
        out[k] = resize_rgb(images[i], size) / np.float32(255.0)
    return out


def to_full(
    images: Sequence[np.ndarray], size: int, indices: Sequence[int] | None = None
) -> np.ndarray:
    """The "full" view of ``images`` (those at ``indices``, when given): each original
    resized to fill the whole size×size frame (bilinear), no program; uint8 N×S×S×3 (the
    engine's ``Split.full``: bytes, a quarter of float32's memory at the frame's size). One
    image is decoded at a time."""
    order = range(len(images)) if indices is None else indices
    out = np.empty((len(order), size, size, 3), dtype=np.uint8)
    for k, i in enumerate(order):
        out[k] = resize_rgb(images[i], size)
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
    if not len(parts["test"]):
        raise TooLittleData(
            "data.test_fraction: the split leaves no test images: "
            + _test_minimum(y if dataset.split is None else y[parts["train"]], test_fraction)
        )
    return parts


def _test_minimum(y: np.ndarray, test_fraction: float) -> str:
    """Why no class gave the test split an image, and how many it would take."""
    largest = int(np.bincount(y).max())
    for n in range(2, 100_001):
        if min(round(test_fraction * n), n - 1) >= 1:
            return (
                f"with a test fraction of {test_fraction:g} a class needs at least {n} images "
                f"to lend one to it (the largest class here has {largest})"
            )
    return f"a test fraction of {test_fraction:g} takes no image from any class"


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
