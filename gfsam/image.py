"""Images and masks at the edge: decoding, EXIF orientation, and the squashed 1024 frame
(`matcher/data/dataset.py` transforms; spec §3).

Frame conventions (official evaluation): an image is squashed to 1024x1024 with PIL bilinear
(antialiased) from the ORIGINAL pixels, then divided by 255 (``Resize`` + ``ToTensor``); a mask is
squashed with torch nearest; a 1024 prediction goes back to (H, W) with torch nearest.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from gfsam.types import FRAME

# HSNet/Matcher FSS loaders: mask = convert("L") >= 128 (anti-aliased white-on-black PNGs).
MASK_THRESHOLD = 128
Source = str | Path | bytes


def _open(source: Source, what: str, max_pixels: int | None = None) -> Image.Image:
    """Open and fully decode an image so that corrupt data fails here, as ValueError.

    `max_pixels` is checked from the header, before any pixel is decoded (decompression bombs).
    """
    if isinstance(source, bytes | bytearray):
        stream: io.BytesIO | str | Path = io.BytesIO(source)
        label = f"{what} bytes ({len(source)} B)"
    else:
        stream, label = source, f"{what} {str(source)!r}"
    try:
        img = Image.open(stream)
        if max_pixels is not None and img.width * img.height > max_pixels:
            raise ValueError(
                f"{label}: {img.width}x{img.height} pixels is over the cap of {max_pixels}"
            )
        img.load()
    except FileNotFoundError:
        raise
    except UnidentifiedImageError:
        raise ValueError(f"cannot decode {label}: not an image format PIL reads") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        reason = str(exc).replace(repr(stream), "data") if isinstance(stream, io.BytesIO) else exc
        raise ValueError(f"cannot decode {label}: {reason}") from exc
    return img


def _to_8bit(img: Image.Image) -> Image.Image:
    """Scale 16-bit, 32-bit integer and float greyscale to 8 bits (PIL's convert clips them).

    Integer images are scaled by their type's range (16-bit: /257; 32-bit: as 16-bit when the
    values fit, else by the maximum); float images must hold values in [0, 1] or [0, 255].

    Raises:
        ValueError: a float image with values outside [0, 255], NaN or infinity.
    """
    if img.mode not in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return img
    values = np.asarray(img).astype(np.float64)
    if img.mode == "F":
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 255:
            raise ValueError("float image values must lie in [0, 1] or [0, 255]")
        scale = 255.0 if values.max() <= 1.0 else 1.0
    elif img.mode == "I" and values.max() > 65535:
        scale = 255.0 / values.max()
    elif img.mode == "I" and values.min() < 0:
        raise ValueError("32-bit image with negative values")
    else:
        scale = 255.0 / 65535.0
    return Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8), "L")


def read_tensor(array: np.ndarray) -> Tensor:
    """A tensor sharing `array`'s memory when it is writable, else over a copy: torch has no
    read-only tensors (it warns and shares), and the worker freezes its targets' tokens
    (`gfsam.assign.proposals.freeze`), which nothing may then write through.

    Args:
        array: any numpy array (e.g. [T, C] tokens).
    """
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def load_image(source: Source, *, max_pixels: int | None = None) -> np.ndarray:
    """Decode an image file to RGB pixels, EXIF orientation applied.

    Args:
        source: path or encoded bytes (JPEG, PNG, WebP, ... anything PIL reads). 16-bit and
            float greyscale are scaled to 8 bits (see `_to_8bit`).
        max_pixels: refuse images with more pixels, read from the header before decoding.

    Returns:
        uint8 [H, W, 3] RGB; (H, W) is the size after EXIF rotation. Grey and palette images
        are expanded to RGB; an alpha channel is dropped.

    Raises:
        FileNotFoundError: missing path. ValueError: corrupt or unsupported data, over
        `max_pixels`.
    """
    img = _to_8bit(ImageOps.exif_transpose(_open(source, "image", max_pixels)))
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def load_mask(source: Source) -> np.ndarray:
    """Decode a mask file to a boolean foreground map.

    Binarisation by PNG mode:
    - palette (``P``) and 16/32-bit (``I;16``, ``I``): index/value != 0 is foreground (PerSeg and
      VOC-style palette PNGs store the object as index 1, which is dark once converted to grey);
    - everything else (``1``, ``L``, ``LA``, ``RGB``, ``RGBA``): ``convert("L") >= 128`` as the
      HSNet/Matcher loaders do; an alpha channel is ignored.
    EXIF orientation is applied, as for images.

    Args:
        source: path or encoded bytes.

    Returns:
        bool [H, W].

    Raises:
        FileNotFoundError: missing path. ValueError: corrupt or unsupported data.
    """
    img = ImageOps.exif_transpose(_open(source, "mask"))
    if img.mode in ("P", "I;16", "I;16B", "I;16L", "I"):
        return np.asarray(img) != 0
    return np.asarray(img.convert("L")) >= MASK_THRESHOLD


def to_frame(image: np.ndarray) -> Tensor:
    """Squash an RGB image to the 1024 working frame as the official dataset transform does.

    Args:
        image: uint8 [H, W, 3] RGB.

    Returns:
        float32 [3, S, S] in [0, 1] on the CPU (PIL bilinear with antialias, then / 255).
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    resized = Image.fromarray(image).resize((FRAME, FRAME), Image.Resampling.BILINEAR)
    pixels = torch.from_numpy(np.asarray(resized).copy())  # (S, S, 3) uint8
    return pixels.permute(2, 0, 1).float().div(255)  # (3, S, S)


def frame_to_sam_uint8(frame: Tensor) -> Tensor:
    """The SAM input of the official code: ``(frame * 255).byte()`` - truncation, not rounding.

    Args:
        frame: float32 [3, S, S] in [0, 1].

    Returns:
        uint8 [S, S, 3] (HWC), on the frame's device.
    """
    return (frame * 255).to(torch.uint8).permute(1, 2, 0).contiguous()  # (S, S, 3)


@functools.lru_cache(maxsize=64)
def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """int64 [n_out]: the source index torch's ``nearest`` picks for each output index (taken
    from torch itself, so a gather with it is bit-identical to `F.interpolate`; 2-D nearest is
    separable: rows and columns map independently)."""
    ramp = torch.arange(n_in, dtype=torch.float32)[None, None, None]  # (1, 1, 1, n_in)
    out = F.interpolate(ramp, size=(1, n_out), mode="nearest")[0, 0, 0]  # (n_out,)
    index = out.to(torch.int64).numpy()
    index.flags.writeable = False
    return index


def _resize_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """bool [H, W] -> bool [h, w], exactly as torch ``nearest`` (a gather, no float copy).

    Rows are whole-row copies, columns one element at a time: the columns are gathered on
    whichever has fewer rows, the source or the result (an image squashed to the frame: ~2x
    faster than gathering them on the frame's 1024 rows)."""
    rows = _nearest_index(mask.shape[0], int(size[0]))
    cols = _nearest_index(mask.shape[1], int(size[1]))
    if len(rows) > mask.shape[0]:
        return np.take(np.take(mask, cols, axis=1), rows, axis=0)
    return np.take(np.take(mask, rows, axis=0), cols, axis=1)


def mask_to_frame(mask: np.ndarray) -> Tensor:
    """Squash a boolean mask to the 1024 frame with torch nearest (HSNet loaders).

    Args:
        mask: bool [H, W].

    Returns:
        bool [S, S] on the CPU.
    """
    m = np.asarray(mask)
    if m.ndim != 2:  # what F.interpolate would refuse, refused by it
        t = torch.from_numpy(np.ascontiguousarray(m, dtype=bool)).float()[None, None]
        return F.interpolate(t, size=(FRAME, FRAME), mode="nearest")[0, 0] > 0
    return torch.from_numpy(_resize_nearest(m.astype(bool, copy=False), (FRAME, FRAME)))


def mask_from_frame(mask: np.ndarray | Tensor, size: tuple[int, int]) -> np.ndarray:
    """Resize a 1024-frame mask back to an original (H, W) with torch nearest.

    Args:
        mask: bool [S, S] (numpy or torch, any device).
        size: (H, W) of the original image.

    Returns:
        bool [H, W] numpy.
    """
    if isinstance(mask, Tensor) and mask.device.type != "cpu":
        m = mask.to(torch.float32)[None, None]  # (1, 1, S, S)
        return (F.interpolate(m, size=tuple(size), mode="nearest")[0, 0] > 0).cpu().numpy()
    arr = mask.numpy() if isinstance(mask, Tensor) else np.asarray(mask)
    return _resize_nearest(arr > 0 if arr.dtype != bool else arr, size)


def as_rgb(image: np.ndarray) -> np.ndarray:
    """Validate an image array and bring it to uint8 [H, W, 3] RGB.

    Grey ([H, W] or [H, W, 1]) is replicated to three channels, as PIL's ``convert("RGB")``
    does; RGBA ([H, W, 4]) loses its alpha channel. Other dtypes are refused, not rescaled.

    Raises:
        ValueError: not a numpy uint8 array of one of those shapes, or an empty image.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        kind = getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"image must be a numpy uint8 array (0-255), got {kind}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or 0 in image.shape:
        raise ValueError(
            f"image must be [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got {image.shape}"
        )
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def as_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Validate a reference mask: bool, integer (non-zero = object) or float 0/1, of `size`.

    Raises:
        ValueError: wrong type or shape, float values other than 0/1, empty or all-foreground.
    """
    if not isinstance(mask, np.ndarray) or mask.ndim != 2:
        raise ValueError(f"mask must be a 2-D numpy array, got {getattr(mask, 'shape', mask)}")
    if mask.shape != tuple(size):
        raise ValueError(f"mask size {mask.shape} != image size {tuple(size)} (H, W)")
    if np.issubdtype(mask.dtype, np.floating) and not np.isin(mask, (0.0, 1.0)).all():
        raise ValueError("float mask must hold only 0 and 1; binarise it first")
    if not (mask.dtype == bool or np.issubdtype(mask.dtype, np.number)):
        raise ValueError(f"mask dtype must be bool, integer or float, got {mask.dtype}")
    binary = mask != 0
    if not binary.any():
        raise ValueError("reference mask is empty: it must mark the object")
    if binary.all():
        raise ValueError("reference mask is all foreground: it must leave some background")
    return binary
