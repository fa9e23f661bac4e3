"""Thumbnails: an image, shrunk, with a mask tinted and its outline drawn on it.

A shot's thumbnail (PNG) is written next to its reference blob when the shot is encoded
(`worker.correction.references`) and a discovery member's crop (JPEG) with the member
(`worker.discovery.candidates`), so the API serves a few KiB of image without any image or
array code of its own.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

from gfsam.image import as_rgb

THUMB_PX = 160  # longest side
OUTLINE_RGB = (255, 64, 160)
FILL_ALPHA = 0.25  # the mask is also tinted, so a thin shape stays visible
# Discovery's crops: JPEG at this quality, colour at full resolution (4:4:4 keeps the 2 px
# outline's colour crisp): ~40 % of the PNG's bytes on COCO photos, a quarter of its encoding time.
JPEG_QUALITY = 90


def thumbnail_png(image: np.ndarray, mask: np.ndarray, size: int = THUMB_PX) -> bytes:
    """A PNG of `image` at most `size` px on its longest side, `mask` tinted and outlined
    (a shot's thumbnail on the status page: lossless).

    Args:
        image: uint8 [H, W, 3] RGB.
        mask: bool [H, W].
        size: longest side of the thumbnail in pixels.

    Returns:
        PNG bytes (a few KiB).
    """
    buf = io.BytesIO()
    Image.fromarray(thumbnail_pixels(image, mask, size)).save(buf, format="PNG")
    return buf.getvalue()


def thumbnail_jpeg(image: np.ndarray, mask: np.ndarray, size: int) -> bytes:
    """`thumbnail_png`'s picture as a JPEG (discovery's member crops: one per candidate, kept
    in Redis by the thousand, pasted on contact sheets)."""
    buf = io.BytesIO()
    Image.fromarray(thumbnail_pixels(image, mask, size)).save(
        buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0
    )
    return buf.getvalue()


def thumbnail_pixels(image: np.ndarray, mask: np.ndarray, size: int) -> np.ndarray:
    """The thumbnail's pixels: `image` shrunk by area averaging (OpenCV's INTER_AREA: each
    pixel the mean of the pixels it covers), the mask tinted and its outline drawn.

    Args:
        image: uint8 [H, W, 3] RGB, or grey / RGBA (`gfsam.image.as_rgb`); a strided crop view
            is fine. mask: bool [H, W].
        size: longest side of the thumbnail in pixels.

    Returns:
        uint8 [h, w, 3], max(h, w) <= size.
    """
    h, w = mask.shape
    scale = min(1.0, size / max(h, w))
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    pixels = as_rgb(np.asarray(image))  # (H, W, 3) contiguous (grey replicated, alpha dropped)
    small = cv2.resize(pixels, (tw, th), interpolation=cv2.INTER_AREA)  # (th, tw, 3)
    share = cv2.resize(mask.astype(np.uint8) * 255, (tw, th), interpolation=cv2.INTER_AREA)
    inside = share >= 128  # (th, tw): pixels at least half under the mask
    edge = inside & ~_eroded(inside)
    out = small.astype(np.float32)
    tint = np.array(OUTLINE_RGB, dtype=np.float32)
    out[inside] = out[inside] * (1 - FILL_ALPHA) + tint * FILL_ALPHA
    out[_dilated(edge)] = tint
    return out.astype(np.uint8)


def _eroded(m: np.ndarray) -> np.ndarray:
    """4-neighbour erosion; pixels outside the image count as background."""
    p = np.pad(m, 1)
    return m & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]


def _dilated(m: np.ndarray) -> np.ndarray:
    """4-neighbour dilation (a 2 px outline reads better at thumbnail size)."""
    p = np.pad(m, 1)
    return m | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
