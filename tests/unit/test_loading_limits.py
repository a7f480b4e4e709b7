"""Loading a data set holds at most one decoded image at a time, sums the pixels from the
headers before decoding any, and decodes to the same pixels as decoding everything at once.
"""

from __future__ import annotations

import io
import tracemalloc
import zipfile

import numpy as np
import pytest
from PIL import Image

from app.data.loading import (
    ArrayImages,
    DataTooLarge,
    EncodedImages,
    Limits,
    TooLittleData,
    decode_image,
    load_bytes,
    to_target,
)

SIDE = 1000  # one decoded image: 3 MB
N = 16  # all of them decoded: 48 MB
# A few image-sized buffers live at once while one image is decoded (the file's bytes, PIL's
# copy out, the array): a bound that does not grow with the number of images.
BOUND = 4 * SIDE * SIDE * 3


def photo_zip(n: int, side: int = SIDE) -> bytes:
    """n noisy side×side PNGs in two classes, stored (no deflate: they would not shrink)."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for i in range(n):
            img = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
            png = io.BytesIO()
            Image.fromarray(img).save(png, format="PNG", compress_level=0)
            zf.writestr(f"{'ab'[i % 2]}/{i}.png", png.getvalue())
    return buf.getvalue()


def test_checking_an_upload_holds_one_decoded_image_at_a_time():
    content = photo_zip(N)
    tracemalloc.start()
    try:
        data = load_bytes(content, "d.zip")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(data.images, EncodedImages)
    assert data.image_shape == [SIDE, SIDE, 3]
    assert peak < BOUND, f"peak {peak / 1e6:.1f} MB: images were kept"


def test_resizing_for_training_holds_one_decoded_image_at_a_time():
    data = load_bytes(photo_zip(N), "d.zip", verify=False)
    tracemalloc.start()
    try:
        out = to_target(data.images, 32)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == (N, 32, 32, 3)
    assert peak < BOUND + out.nbytes, f"peak {peak / 1e6:.1f} MB: images were kept"


def test_lazy_images_decode_to_what_eager_decoding_gives():
    content = photo_zip(6, side=40)
    data = load_bytes(content, "d.zip")
    with zipfile.ZipFile(io.BytesIO(content)) as zf:
        eager = [decode_image(zf.read(n), n) for n in sorted(zf.namelist())]
    order = sorted(range(6), key=lambda i: data.images.names[i])  # type: ignore[attr-defined]
    for i, img in zip(order, eager, strict=True):
        assert np.array_equal(data.images[i], img)
    # resized at once (predict) is what to_target makes of the full image
    small = decode_image(zipfile.ZipFile(io.BytesIO(content)).read("a/0.png"), "x", size=16)
    full = decode_image(zipfile.ZipFile(io.BytesIO(content)).read("a/0.png"), "x")
    assert np.array_equal(to_target([small], 16), to_target([full], 16))


def test_the_pixels_in_all_are_refused_from_the_headers():
    content = photo_zip(6, side=100)  # 60,000 pixels
    with pytest.raises(DataTooLarge, match="59,999 pixels"):
        load_bytes(content, "d.zip", Limits(max_total_pixels=59_999))
    assert len(load_bytes(content, "d.zip", Limits(max_total_pixels=60_000)).y) == 6


def test_an_npz_is_checked_without_loading_its_images():
    x = np.zeros((6, 20, 20, 1), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, x=x, y=np.array([0, 1, 0, 1, 0, 1]))
    data = load_bytes(buf.getvalue(), "d.npz")
    assert isinstance(data.images, ArrayImages) and data.images._x is None
    assert data.image_shape == [20, 20, 3]
    assert data.images[0].shape == (20, 20, 3)  # grey comes out as RGB, loaded on first use
    with pytest.raises(DataTooLarge):
        load_bytes(buf.getvalue(), "d.npz", Limits(max_total_pixels=2_399))


def test_one_class_and_one_image_classes_are_too_little():
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((3, 8, 8, 3), np.uint8), y=np.array([0, 0, 0]))
    with pytest.raises(TooLittleData, match="at least 2"):
        load_bytes(buf.getvalue(), "d.npz")
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((5, 8, 8, 3), np.uint8), y=np.array([0, 0, 0, 1, 1]))
    with pytest.raises(TooLittleData, match=r"class '1' has 2 images; .* at least 3"):
        load_bytes(buf.getvalue(), "d.npz")
