"""worker.labelstudio.brush_rle: byte-for-byte parity with the SDK brush codec, on real and
synthetic masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, encode_rle, mask2rle
from label_studio_sdk.label_interface import LabelInterface
from PIL import Image

from worker.labelstudio.brush_rle import (
    BrushError,
    _decode,
    _encode_values,
    annotation_masks,
    mask_to_rle,
    masks_to_result,
    regions_to_result,
    rle_to_mask,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "assets" / "data"
CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="tag" toName="image">'
    '<Label value="Elephant"/><Label value="Background-thing"/></BrushLabels></View>'
)


def _real_masks() -> list[tuple[str, np.ndarray]]:
    """PerSeg, FSS-1000 and per-class coco128 masks from shared/assets (bool [H, W])."""
    if not DATA.is_dir():
        pytest.skip(f"shared assets not found at {DATA}")
    out = []
    for path in sorted((DATA / "perseg_subset" / "Annotations").glob("*/*.png")):
        out.append((f"perseg/{path.parent.name}/{path.name}", np.array(Image.open(path)) != 0))
    for path in sorted((DATA / "fss1000_subset" / "masks").glob("*/*.png")):
        mask = np.array(Image.open(path).convert("L")) >= 128
        out.append((f"fss/{path.parent.name}/{path.name}", mask))
    for path in sorted((DATA / "coco128_seg" / "masks").glob("*.png"))[:24]:
        classes = np.array(Image.open(path))
        for cls in np.unique(classes)[1:]:
            out.append((f"coco/{path.stem}/{cls}", classes == cls))
    elephant = DATA / "coco_elephant_example" / "000000286874_mask.png"
    out.append(("elephant", np.array(Image.open(elephant)) > 0))
    return out


@pytest.fixture(scope="module")
def real_masks() -> list[tuple[str, np.ndarray]]:
    return _real_masks()


def _sdk(mask: np.ndarray) -> list[int]:
    return mask2rle(mask.astype(np.uint8) * 255)


def test_encode_matches_sdk_on_real_masks(real_masks: list[tuple[str, np.ndarray]]) -> None:
    assert len(real_masks) > 60
    for name, mask in real_masks:
        assert mask_to_rle(mask) == _sdk(mask), name


def test_decode_matches_sdk_on_real_masks(real_masks: list[tuple[str, np.ndarray]]) -> None:
    for name, mask in real_masks[::3]:
        rle = _sdk(mask)
        np.testing.assert_array_equal(_decode(bytes(rle)), decode_rle(rle), err_msg=name)
        h, w = mask.shape
        np.testing.assert_array_equal(rle_to_mask(rle, w, h), mask, err_msg=name)


EDGE_MASKS = {
    "all_zero": np.zeros((37, 41), bool),
    "all_one": np.ones((37, 41), bool),
    "single_pixel": np.ones((1, 1), bool),
    "single_zero": np.zeros((1, 1), bool),
    "one_set_pixel": np.pad(np.ones((1, 1), bool), ((5, 6), (7, 3))),
    "row_1xN": np.arange(97)[None, :] % 3 == 0,
    "col_Nx1": np.arange(97)[:, None] % 5 < 2,
    "long_row_1x65537": np.ones((1, 65537), bool),
    "ones_300x301": np.ones((300, 301), bool),  # 361200 bytes: 5 full 65536 chunks + rest
    "run_16384_px": np.pad(np.ones((1, 16384), bool), ((0, 0), (3, 5))),  # exactly 65536 bytes
    "run_16385_px": np.pad(np.ones((1, 16385), bool), ((0, 0), (3, 5))),
    "run_32768_px": np.pad(np.ones((1, 32768), bool), ((0, 0), (1, 1))),  # 2 * 65536 bytes
    "odd_7x13_checker": (np.indices((7, 13)).sum(0) % 2).astype(bool),
    "stripes_65x3": np.arange(65)[:, None].repeat(3, 1) % 2 == 0,
}


@pytest.mark.parametrize("name", sorted(EDGE_MASKS))
def test_edge_cases_match_sdk(name: str) -> None:
    mask = EDGE_MASKS[name]
    rle = mask_to_rle(mask)
    assert rle == _sdk(mask)
    h, w = mask.shape
    np.testing.assert_array_equal(rle_to_mask(rle, w, h), mask)
    np.testing.assert_array_equal(_decode(bytes(rle)), decode_rle(rle))


@pytest.mark.parametrize("seed", range(6))
def test_random_noise_matches_sdk(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 160)), int(rng.integers(1, 160)))
    mask = rng.random(shape) < rng.uniform(0.05, 0.95)
    rle = mask_to_rle(mask)
    assert rle == _sdk(mask)
    np.testing.assert_array_equal(_decode(bytes(rle)), decode_rle(rle))


def test_many_small_random_masks_round_trip() -> None:
    rng = np.random.default_rng(7)
    for _ in range(200):
        shape = (int(rng.integers(1, 24)), int(rng.integers(1, 24)))
        mask = rng.random(shape) < rng.random()
        rle = mask_to_rle(mask)
        assert rle == _sdk(mask)
        np.testing.assert_array_equal(rle_to_mask(rle, shape[1], shape[0]), mask)


@pytest.mark.parametrize(
    "runs",
    [
        [1, 2, 1, 1, 8, 9, 16, 17, 256, 257],
        [65536, 1, 65537, 2, 131072, 3, 131073],
        [5],
        [1],
    ],
)
def test_generic_byte_streams_match_sdk_encode_rle(runs: list[int]) -> None:
    """Run-length boundaries of every field width, incl. singletons and > 65536 splits."""
    values = np.repeat((np.arange(len(runs)) * 37 % 256).astype(np.uint8), runs)
    rle = _encode_values(values)
    assert rle == encode_rle(values)
    np.testing.assert_array_equal(_decode(bytes(rle)), values)


class _Bits:
    """Minimal rle-pack writer that emits literal blocks, as the LS frontend encoder does."""

    def __init__(self, num: int, sizes: tuple[int, ...] = (3, 4, 8, 16)) -> None:
        self.bits = f"{num:032b}{7:05b}" + "".join(f"{s - 1:04b}" for s in sizes)
        self.sizes = sizes

    def chunk(self, values: list[int], *, run: bool) -> None:
        count = len(values)
        idx = next(i for i, s in enumerate(self.sizes) if count <= 1 << s)
        self.bits += ("1" if run else "0") + f"{idx:02b}" + f"{count - 1:0{self.sizes[idx]}b}"
        for v in values[:1] if run else values:
            self.bits += f"{v:08b}"

    def rle(self) -> list[int]:
        padded = self.bits + "0" * (8 - len(self.bits) % 8)
        return [int(padded[i : i + 8], 2) for i in range(0, len(padded), 8)]


@pytest.mark.parametrize("sizes", [(3, 4, 8, 16), (2, 5, 9, 12), (1, 1, 1, 16)])
def test_decode_literal_blocks_like_frontend(sizes: tuple[int, ...]) -> None:
    rng = np.random.default_rng(sum(sizes))
    expected: list[int] = []
    chunks = []
    for _ in range(300):
        n = int(rng.integers(1, 40))
        run = bool(rng.random() < 0.5)
        vals = [int(rng.integers(0, 256))] * n if run else rng.integers(0, 256, n).tolist()
        chunks.append((vals, run))
        expected += vals
    writer = _Bits(len(expected), sizes)
    for vals, run in chunks:
        writer.chunk(vals, run=run)
    rle = writer.rle()
    np.testing.assert_array_equal(decode_rle(rle), expected)
    np.testing.assert_array_equal(_decode(bytes(rle)), expected)


def test_alpha_threshold() -> None:
    """Anti-aliased alpha: only values >= threshold count as set; the alpha channel is read."""
    rgba = np.array([[0, 0, 0, 0], [9, 9, 9, 127], [0, 0, 0, 128], [1, 2, 3, 255]], np.uint8)
    rle = _encode_values(rgba.ravel())
    assert rle_to_mask(rle, 2, 2).tolist() == [[False, False], [True, True]]
    assert rle_to_mask(rle, 2, 2, threshold=1).tolist() == [[False, True], [True, True]]


def test_size_mismatch_names_both_sizes() -> None:
    rle = mask_to_rle(np.ones((30, 40), bool))
    with pytest.raises(BrushError, match=r"header declares 4800 values, expected 4960 = 40x31x4"):
        rle_to_mask(rle, 40, 31)
    with pytest.raises(BrushError, match="positive"):
        rle_to_mask(rle, 0, 30)


@pytest.mark.parametrize(
    "rle",
    [
        "not a list",
        None,
        [],
        [0, 0, 1],
        [0, 0, 0, 4, 7, 0.5, 1],
        [0, 0, 0, 4, 7, "x", 1],
        [0, 0, 0, 4, 7, 256, 1],
        [0, 0, 0, 4, 7, -1, 1],
    ],
)
def test_malformed_rle_raises(rle: object) -> None:
    with pytest.raises(BrushError):
        rle_to_mask(rle, 1, 1)  # type: ignore[arg-type]


def test_truncated_rle_raises() -> None:
    mask = np.random.default_rng(3).random((20, 20)) < 0.5
    rle = mask_to_rle(mask)
    with pytest.raises(BrushError, match="truncated"):
        rle_to_mask(rle[: len(rle) // 2], 20, 20)


def test_mask_to_rle_rejects_bad_shapes() -> None:
    with pytest.raises(BrushError):
        mask_to_rle(np.zeros((3, 3, 3), bool))
    with pytest.raises(BrushError):
        mask_to_rle(np.zeros((0, 3), bool))


def _region(mask: np.ndarray, label: str, **over: object) -> dict:
    region = masks_to_result({label: mask}, from_name="tag", to_name="image", scores={label: 1})[0]
    region.update(over)
    return region


def test_annotation_masks_unions_regions_per_label() -> None:
    a = np.zeros((10, 12), bool)
    a[1:4, 1:4] = True
    b = np.zeros((10, 12), bool)
    b[6:9, 5:11] = True
    other = np.ones((10, 12), bool)
    result = [
        _region(a, "Elephant"),
        _region(b, "Elephant"),
        _region(other, "Background-thing"),
        _region(other, "Elephant", from_name="other_tag"),
        {"from_name": "tag", "to_name": "image", "type": "rectanglelabels", "value": {}},
    ]
    masks = annotation_masks(result, from_name="tag")
    assert set(masks) == {"Elephant", "Background-thing"}
    np.testing.assert_array_equal(masks["Elephant"], a | b)
    np.testing.assert_array_equal(masks["Background-thing"], other)


def test_annotation_masks_errors() -> None:
    mask = np.ones((4, 5), bool)
    bad_format = _region(mask, "Elephant")
    bad_format["value"]["format"] = "png"
    with pytest.raises(BrushError, match="format"):
        annotation_masks([bad_format], from_name="tag")
    wrong_size = _region(mask, "Elephant", original_width=6)
    with pytest.raises(BrushError, match="mismatch"):
        annotation_masks([wrong_size], from_name="tag")
    other = _region(np.ones((5, 4), bool), "Elephant")
    with pytest.raises(BrushError, match="label 'Elephant'"):
        annotation_masks([_region(mask, "Elephant"), other], from_name="tag")


def test_masks_to_result_shape_and_validation() -> None:
    mask = np.zeros((48, 64), bool)
    mask[10:30, 5:50] = True
    masks = {"Elephant": mask, "Background-thing": np.zeros((48, 64), bool)}
    result = masks_to_result(masks, from_name="tag", to_name="image", scores={"Elephant": 0.75})
    assert len(result) == 1  # empty masks give no region
    region = result[0]
    assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["Elephant"]
    assert (region["original_width"], region["original_height"]) == (64, 48)
    assert region["image_rotation"] == 0 and region["score"] == 0.75
    assert all(type(v) is int for v in region["value"]["rle"])
    assert json.loads(json.dumps(result)) == result
    again = masks_to_result(masks, from_name="tag", to_name="image", scores={"Elephant": 1})
    assert again[0]["id"] == region["id"]  # deterministic ids
    iface = LabelInterface(CONFIG)
    assert iface.validate_prediction({"result": result, "score": 0.75}, return_errors=True) == []
    bad = json.loads(json.dumps(result))
    bad[0]["value"]["brushlabels"] = ["Zebra"]
    assert iface.validate_prediction({"result": bad}, return_errors=True) != []
    np.testing.assert_array_equal(annotation_masks(result, from_name="tag")["Elephant"], mask)


def test_masks_to_result_requires_scores() -> None:
    with pytest.raises(BrushError, match="score"):
        masks_to_result({"Elephant": np.ones((2, 2), bool)}, from_name="t", to_name="i", scores={})


def test_regions_to_result_one_region_per_instance_with_stable_ids() -> None:
    a, b, c = (np.zeros((48, 64), bool) for _ in range(3))
    a[2:10, 2:10], b[20:30, 30:40], c[40:46, 2:60] = True, True, True
    regions = [("Elephant", a, 0.9), ("Elephant", b, 0.6), ("Background-thing", c, 0.5)]
    result = regions_to_result(regions, from_name="tag", to_name="image")
    assert [(r["value"]["brushlabels"], r["score"]) for r in result] == [
        (["Elephant"], 0.9),
        (["Elephant"], 0.6),
        (["Background-thing"], 0.5),
    ]
    ids = [r["id"] for r in result]
    assert len(set(ids)) == 3  # two instances of one label: two regions, two ids
    # Same (control, label, instance mask) -> same id, whatever the score, order or neighbours.
    again = regions_to_result(regions[::-1], from_name="tag", to_name="image")
    assert [r["id"] for r in again] == ids[::-1]
    alone = regions_to_result([("Elephant", b, 0.1)], from_name="tag", to_name="image")
    assert alone[0]["id"] == ids[1]
    assert (
        regions_to_result([("Background-thing", b, 0.6)], from_name="tag", to_name="image")[0]["id"]
        not in ids
    )  # another label: another id
    assert (
        regions_to_result([("Elephant", b, 0.6)], from_name="other", to_name="image")[0]["id"]
        != ids[1]
    )  # another control: another id
    iface = LabelInterface(CONFIG)
    assert iface.validate_prediction({"result": result, "score": 0.7}, return_errors=True) == []
    # the shot logic reads the regions of one label as one mask
    masks = annotation_masks(result, from_name="tag")
    np.testing.assert_array_equal(masks["Elephant"], a | b)
    np.testing.assert_array_equal(masks["Background-thing"], c)
    empty = regions_to_result(
        [("Elephant", np.zeros((4, 4), bool), 1.0)], from_name="t", to_name="i"
    )
    assert empty == []
