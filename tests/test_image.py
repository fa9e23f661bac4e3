"""Decoding, EXIF orientation, mask binarisation and the squashed 1024 frame, on real files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from gfsam.image import (
    frame_to_sam_uint8,
    load_image,
    load_mask,
    mask_from_frame,
    mask_to_frame,
    to_frame,
)
from gfsam.types import FRAME
from tests.conftest import ASSETS

PERSEG = ASSETS / "perseg_subset"
CAT = PERSEG / "Images" / "cat" / "00.jpg"
CAT_MASK = PERSEG / "Annotations" / "cat" / "00.png"
FSS_MASK = ASSETS / "fss1000_subset" / "masks" / "apple" / "1.png"
COCO_MASK = ASSETS / "coco_elephant_example" / "000000286874_mask.png"
EXIF_ORIENTATION = 0x0112


def _jpeg_with_orientation(orientation: int) -> bytes:
    """A non-square crop of a real PerSeg photo, re-encoded with an EXIF orientation tag."""
    img = Image.open(CAT).crop((0, 0, 900, 500))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def _raw_pixels(blob: bytes) -> np.ndarray:
    """Stored pixels, orientation ignored."""
    return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))


@pytest.mark.parametrize(("orientation", "turns"), [(1, 0), (3, 2), (6, -1), (8, 1)])
def test_exif_orientation_applied(orientation: int, turns: int, tmp_path: Path) -> None:
    blob = _jpeg_with_orientation(orientation)
    raw = _raw_pixels(blob)
    assert raw.shape == (500, 900, 3)
    expected = np.rot90(raw, k=turns)  # 6: rotate 90 clockwise to display; 8: counter-clockwise
    (tmp_path / "rotated.jpg").write_bytes(blob)
    for source in (blob, tmp_path / "rotated.jpg", str(tmp_path / "rotated.jpg")):
        image = load_image(source)
        assert image.dtype == np.uint8 and image.shape == expected.shape
        assert np.array_equal(image, expected)


def test_load_image_real_jpeg() -> None:
    image = load_image(CAT)
    assert image.shape == (1282, 1282, 3) and image.dtype == np.uint8
    assert np.array_equal(image, np.asarray(Image.open(CAT).convert("RGB")))


def test_load_image_converts_grey_and_rgba() -> None:
    rgba = np.random.default_rng(0).integers(0, 256, (20, 30, 4), dtype=np.uint8)
    for mode, pixels in (("RGBA", rgba), ("L", rgba[..., 0])):
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        image = load_image(buf.getvalue())
        assert image.shape == (20, 30, 3)
        expected = rgba[..., :3] if mode == "RGBA" else np.repeat(pixels[..., None], 3, axis=2)
        assert np.array_equal(image, expected)


def test_corrupt_and_missing_data() -> None:
    with pytest.raises(ValueError, match="cannot decode image"):
        load_image(b"this is not an image")
    truncated = CAT.read_bytes()[:20000]
    with pytest.raises(ValueError, match="cannot decode"):
        load_image(truncated)
    with pytest.raises(ValueError, match="cannot decode mask"):
        load_mask(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(FileNotFoundError):
        load_image(Path("/nonexistent/image.jpg"))


def test_perseg_palette_mask_uses_nonzero_index() -> None:
    img = Image.open(CAT_MASK)
    assert img.mode == "P"  # index 1 = object, palette colour (128, 0, 0): dark once grey
    mask = load_mask(CAT_MASK)
    assert mask.dtype == bool and mask.shape == (1282, 1282)
    assert np.array_equal(mask, np.asarray(img) == 1)
    assert 0.05 < mask.mean() < 0.95
    assert not (np.asarray(img.convert("L")) >= 128).any()  # why grey thresholding is wrong here


def test_fss_rgba_mask_binarised_like_hsnet() -> None:
    img = Image.open(FSS_MASK)
    assert img.mode == "RGBA"
    grey = np.asarray(img.convert("L"))
    assert len(np.unique(grey)) > 2  # anti-aliased edges
    mask = load_mask(FSS_MASK.read_bytes())
    assert np.array_equal(mask, grey >= 128)
    assert 0.05 < mask.mean() < 0.95


def test_coco_grey_mask() -> None:
    mask = load_mask(COCO_MASK)
    assert mask.shape == (480, 640)
    assert np.array_equal(mask, np.asarray(Image.open(COCO_MASK)) == 255)


def test_to_frame_is_pil_bilinear_from_original() -> None:
    image = load_image(CAT)
    frame = to_frame(image)
    assert frame.shape == (3, FRAME, FRAME) and frame.dtype == torch.float32
    assert 0.0 <= float(frame.min()) and float(frame.max()) <= 1.0
    pil = np.asarray(Image.open(CAT).convert("RGB").resize((FRAME, FRAME), Image.BILINEAR))
    assert torch.equal(frame, torch.from_numpy(pil.copy()).permute(2, 0, 1).float() / 255)
    with pytest.raises(ValueError, match="uint8"):
        to_frame(image.astype(np.float32))


def test_sam_input_truncates_like_official() -> None:
    values = torch.arange(256, dtype=torch.uint8)
    frame = values.float().div(255).reshape(1, 16, 16).expand(3, 16, 16)
    sam_in = frame_to_sam_uint8(frame)  # (16, 16, 3)
    assert sam_in.shape == (16, 16, 3) and sam_in.dtype == torch.uint8
    official = (frame * 255).byte().permute(1, 2, 0)
    assert torch.equal(sam_in, official)
    assert torch.equal(sam_in[..., 0].flatten(), values)  # k / 255 * 255 is exact in float32
    below = frame_to_sam_uint8(torch.full((3, 1, 1), 9.6 / 255))  # truncation, not rounding
    assert int(below[0, 0, 0]) == 9


def test_mask_frame_resizing_is_torch_nearest() -> None:
    mask = load_mask(COCO_MASK)
    framed = mask_to_frame(mask)
    assert framed.shape == (FRAME, FRAME) and framed.dtype == torch.bool
    ref = F.interpolate(torch.from_numpy(mask).float()[None, None], (FRAME, FRAME))[0, 0] > 0
    assert torch.equal(framed, ref)
    back = mask_from_frame(framed, mask.shape)
    assert back.shape == mask.shape and back.dtype == bool
    assert (back == mask).mean() > 0.99
    assert np.array_equal(mask_from_frame(framed.numpy(), (FRAME, FRAME)), framed.numpy())


@pytest.mark.parametrize(
    "size", [(480, 640), (427, 640), (1024, 1024), (17, 23), (2000, 3000), (700, 1500)]
)
def test_frame_resizes_are_torch_nearest_bit_for_bit(size: tuple[int, int]) -> None:
    """`mask_to_frame` / `mask_from_frame` gather with torch's own nearest indices: the same
    bits as `F.interpolate` (issue 17 made them gathers), numpy, CPU torch or non-bool input."""
    rng = np.random.default_rng(size[0])
    small = rng.random(size) > 0.5
    t = torch.from_numpy(small).float()[None, None]
    ref = F.interpolate(t, size=(FRAME, FRAME), mode="nearest")[0, 0] > 0
    assert torch.equal(mask_to_frame(small), ref) and mask_to_frame(small).dtype == torch.bool
    frame = rng.random((FRAME, FRAME)) > 0.5
    back = F.interpolate(torch.from_numpy(frame).float()[None, None], size=size, mode="nearest")
    expected = (back[0, 0] > 0).numpy()
    for given in (frame, torch.from_numpy(frame), frame.astype(np.float32), frame.astype(np.uint8)):
        out = mask_from_frame(given, size)
        assert out.dtype == bool and out.shape == size and np.array_equal(out, expected)
    signed = np.where(frame, 1.0, -1.0).astype(np.float32)  # > 0, as before: negatives are off
    assert np.array_equal(mask_from_frame(signed, size), expected)
