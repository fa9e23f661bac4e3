"""Shot thumbnails for the status page: the image, shrunk, with the mask's outline drawn on it.

Written next to the reference blob when a shot is encoded (`worker.correction.references`), so the
API
serves a few KiB of PNG without any image or array code of its own.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

THUMB_PX = 160  # longest side
OUTLINE_RGB = (255, 64, 160)
FILL_ALPHA = 0.25  # the mask is also tinted, so a thin shape stays visible


def thumbnail_png(image: np.ndarray, mask: np.ndarray, size: int = THUMB_PX) -> bytes:
    """A PNG of `image` at most `size` px on its longest side, `mask` tinted and outlined.

    Args:
        image: uint8 [H, W, 3] RGB.
        mask: bool [H, W].
        size: longest side of the thumbnail in pixels.

    Returns:
        PNG bytes (a few KiB).
    """
    h, w = mask.shape
    scale = min(1.0, size / max(h, w))
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    # a crop is a strided view: PIL copies one pixel at a time from those (~2 ms for 400 x 400),
    # numpy's copy to a contiguous block first takes ~0.02 ms (the same pixels)
    pixels = Image.fromarray(np.ascontiguousarray(image)).convert("RGB")
    small = np.asarray(pixels.resize((tw, th), Image.Resampling.BILINEAR))
    inside = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((tw, th))) >= 128
    edge = inside & ~_eroded(inside)
    out = small.astype(np.float32)
    tint = np.array(OUTLINE_RGB, dtype=np.float32)
    out[inside] = out[inside] * (1 - FILL_ALPHA) + tint * FILL_ALPHA
    out[_dilated(edge)] = tint
    buf = io.BytesIO()
    Image.fromarray(out.astype(np.uint8)).save(buf, format="PNG")  # optimize: 2x the time
    return buf.getvalue()


def _eroded(m: np.ndarray) -> np.ndarray:
    """4-neighbour erosion; pixels outside the image count as background."""
    p = np.pad(m, 1)
    return m & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]


def _dilated(m: np.ndarray) -> np.ndarray:
    """4-neighbour dilation (a 2 px outline reads better at thumbnail size)."""
    p = np.pad(m, 1)
    return m | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
