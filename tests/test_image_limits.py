"""Issue 7, findings 8 and 9: high-bit-depth images scaled to 8 bits (or refused clearly), and a
pixel cap checked from the header before decoding."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from gfsam.image import load_image


def encoded(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def test_16bit_grey_png_is_scaled_not_clipped() -> None:
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    img = load_image(encoded(ramp, "PNG"))
    assert img.dtype == np.uint8 and img.min() == 0 and img.max() == 255
    assert len(np.unique(img[..., 0])) > 200  # a ramp, not all 255


def test_float_tiff_in_unit_range_is_scaled() -> None:
    ramp = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    img = load_image(encoded(ramp, "TIFF"))
    assert img.max() == 255 and len(np.unique(img[..., 0])) > 200  # not all 0


def test_float_tiff_out_of_range_fails_clearly() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\] or \[0, 255\]"):
        load_image(encoded(np.full((8, 8), 1e6, np.float32), "TIFF"))


def test_pixel_cap_is_checked_before_decoding() -> None:
    bomb = encoded(np.zeros((2000, 3000), np.uint8), "PNG")  # a few KB, 6 Mpx
    with pytest.raises(ValueError, match="over the cap of 1000000"):
        load_image(bomb, max_pixels=1_000_000)
    assert load_image(bomb, max_pixels=6_000_000).shape == (2000, 3000, 3)
