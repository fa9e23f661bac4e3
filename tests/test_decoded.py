"""Decoded-mask store (`gfsam.decoded`), bf16 and batched encoding, with tiny RANDOM encoders
(contracts and bit-exactness only: random weights make every mask meaningless)."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch

from gfsam.decoded import MASK_BYTES, DecodedMasks, decoder_key, pack_masks, unpack_masks
from gfsam.discover import discover_candidates, sam_prompt_fn
from gfsam.encodings import Reference, _pack
from gfsam.image import load_image, load_mask
from gfsam.pipeline import GFSAM, build_pipeline
from gfsam.types import FRAME, GFSAMConfig
from tests.conftest import ASSETS

DEVICE = os.environ.get("TEST_DEVICE", "cpu")
COCO = ASSETS / "coco_elephant_example"
# prompt_batch=1: each prompt is decoded alone, so a mask is a function of (embedding, prompt)
# by construction and predictions can be compared bit for bit whatever was cached before.
CONFIG = GFSAMConfig(max_points=12, prompt_batch=1, fallback=True)


@pytest.fixture(scope="module")
def pipe() -> GFSAM:
    torch.manual_seed(0)
    return build_pipeline(preset="tiny", random_weights=True, device=DEVICE, config=CONFIG)


@pytest.fixture(scope="module")
def shots(pipe: GFSAM) -> list[Reference]:
    image, mask = load_image(COCO / "000000286874.jpg"), load_mask(COCO / "000000286874_mask.png")
    flipped = pipe.encode_reference(image[:, ::-1], mask[:, ::-1])
    return [pipe.encode_reference(image, mask), flipped, pipe.encode_reference(image, ~mask)]


@pytest.fixture(scope="module")
def target(pipe: GFSAM):
    return pipe.encode_target(load_image(COCO / "000000173279.jpg"))


def _same(a, b) -> None:
    assert np.array_equal(a.mask, b.mask) and a.score == b.score
    assert np.array_equal(a.segmentation.state, b.segmentation.state)


def test_pack_unpack_matches_numpy() -> None:
    masks = torch.rand(3, FRAME, FRAME, generator=torch.Generator().manual_seed(0)) > 0.5
    packed = pack_masks(masks)
    assert packed.shape == (3, FRAME, FRAME // 8) and packed.dtype == torch.uint8
    assert np.array_equal(packed.numpy(), np.packbits(masks.numpy(), axis=-1))
    assert torch.equal(unpack_masks(packed), masks)


def test_hits_across_versions_are_bit_exact(pipe: GFSAM, shots, target) -> None:
    store = DecodedMasks()
    first = pipe.predict(target, shots[:1], decoded=store)
    assert store.hits == 0 and store.misses == first.segmentation.n_points == len(store)
    _same(first, pipe.predict(target, shots[:1]))
    store.reset_stats()
    again = pipe.predict(target, shots[:1], decoded=store)  # same version: all hits
    assert store.misses == 0 and store.hits == first.segmentation.n_points
    _same(first, again)
    store.reset_stats()
    more = pipe.predict(target, shots[:2], decoded=store)  # a correction adds a shot
    assert store.hits + store.misses == more.segmentation.n_points and store.hits > 0
    _same(more, pipe.predict(target, shots[:2]))


def test_hits_across_labels(pipe: GFSAM, shots, target) -> None:
    store = DecodedMasks()
    labels = {"a": shots[:1], "b": shots[1:2], "c": shots[2:]}
    preds = pipe.predict_labels(target, labels, decoded=store)
    points = sum(p.segmentation.n_points for p in preds.values())
    assert store.hits + store.misses == points and store.misses == len(store) < points
    for label, refs in labels.items():
        _same(preds[label], pipe.predict(target, refs))


def test_default_batching_store_returns_the_decoded_bits(pipe: GFSAM, target) -> None:
    emb = torch.from_numpy(target.embedding)[None]
    xy = np.array([[0, 0], [300, 700], [1023, 1023], [512, 5], [40, 900]])

    def decode(prompts: np.ndarray) -> torch.Tensor:
        return pipe.sam.decode_points(emb, prompts, 64)

    store = DecodedMasks()
    fresh = store.masks(xy[:3], decode, torch.device(DEVICE))
    mixed = store.masks(xy[::-1], decode, torch.device(DEVICE))  # 3 hits, 2 misses
    assert (store.hits, store.misses) == (3, 5)
    assert torch.equal(mixed[2:], fresh.flip(0)) and mixed.dtype == torch.bool


def test_bound_evicts_least_recently_used() -> None:
    store = DecodedMasks(max_masks=3)
    calls: list[int] = []

    def decode(xy: np.ndarray) -> torch.Tensor:
        calls.append(len(xy))
        return torch.zeros((len(xy), FRAME, FRAME), dtype=torch.bool)

    cpu = torch.device("cpu")
    store.masks(np.array([[0, 0], [8, 0], [16, 0]]), decode, cpu)
    store.masks(np.array([[0, 0]]), decode, cpu)  # (0, 0) becomes the most recent
    store.masks(np.array([[24, 0]]), decode, cpu)  # evicts (8, 0)
    assert len(store) == 3 and store.nbytes == 3 * MASK_BYTES
    assert (8, 0) not in store and (0, 0) in store and (24, 0) in store
    assert calls == [3, 1] and (store.hits, store.misses) == (1, 4)
    with pytest.raises(ValueError, match="max_masks"):
        DecodedMasks(max_masks=0)
    with pytest.raises(ValueError, match="max_regions"):
        DecodedMasks(max_regions=0)


def test_round_trip_and_key(pipe: GFSAM, shots, target) -> None:
    store = DecodedMasks()
    first = pipe.predict(target, shots[:1], decoded=store)
    back = DecodedMasks.from_bytes(store.to_bytes())
    assert back.key == store.key == decoder_key(target, "fp32") and len(back) == len(store)
    for prompt in store._masks:
        assert np.array_equal(back.packed(prompt), store.packed(prompt))
    _same(first, pipe.predict(target, shots[:1], decoded=back))
    assert back.misses == 0
    assert len(DecodedMasks.from_bytes(store.to_bytes(), max_masks=2)) == 2
    with pytest.raises(ValueError, match="DecodedMasks"):
        DecodedMasks.from_bytes(b"garbage")
    with pytest.raises(ValueError, match="DecodedMasks"):
        DecodedMasks.from_bytes(__import__("zlib").compress(shots[0].to_bytes()))


def test_store_of_another_target_is_emptied(pipe: GFSAM, shots, target) -> None:
    store = DecodedMasks()
    pipe.predict(target, shots[:1], decoded=store)
    other = pipe.encode_target(load_image(COCO / "000000267704.jpg"))
    store.reset_stats()
    pred = pipe.predict(other, shots[:1], decoded=store)
    assert store.hits == 0 and store.key == decoder_key(other, "fp32")
    _same(pred, pipe.predict(other, shots[:1]))


def test_bf16_runs_on_cpu_or_is_refused(pipe: GFSAM, shots) -> None:
    with pytest.raises(ValueError, match="unknown precision"):
        GFSAM(pipe.sam, pipe.dino, CONFIG, device=DEVICE, precision="fp16")
    half = GFSAM(pipe.sam, pipe.dino, CONFIG, device=DEVICE, precision="bf16")
    image = load_image(COCO / "000000173279.jpg")
    target = half.encode_target(image)
    assert target.embedding.dtype == np.float32 and np.isfinite(target.embedding).all()
    store = DecodedMasks()
    pred = half.predict(target, shots[:1], decoded=store)
    assert pred.mask.shape == image.shape[:2] and store.key == decoder_key(target, "bf16")
    full = pipe.encode_target(image)
    assert not np.array_equal(full.embedding, target.embedding)  # bf16 really ran
    assert np.allclose(full.embedding, target.embedding, atol=0.1)


def test_batched_encoding_equals_one_by_one(pipe: GFSAM) -> None:
    images = [load_image(COCO / n) for n in ("000000173279.jpg", "000000267704.jpg")]
    images.append(images[0][:200, :300])
    batched = pipe.encode_targets(images, batch_size=2)
    for image, enc in zip(images, batched, strict=True):
        one = pipe.encode_target(image)
        assert enc.image_size == one.image_size == image.shape[:2]
        # Batched GEMMs may sum in another order: float32 tolerance, not bit equality.
        assert np.allclose(enc.embedding, one.embedding, rtol=1e-4, atol=1e-5)
        assert np.allclose(enc.tokens, one.tokens, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="batch_size"):
        pipe.encode_targets(images, batch_size=0)


def test_benchmark_repredict_line_and_gpu_refusal(capsys: pytest.CaptureFixture[str]) -> None:
    from gfsam.cli import main

    argv = ["benchmark", "--repredict", "--max-points", "8", "--prompts", "6", "--shared", "2,6"]
    assert main([*argv, "--warmup", "0", "--repeat", "1"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    number = r"[0-9]+(\.[0-9]+)?"
    for line, shared in zip(out[-2:], (2, 6), strict=True):
        assert re.fullmatch(
            rf"reprediction speedup: {number}x \(first {number}s, after a correction {number}s, "
            rf"prompts 6 shared {shared}, prompt cache hits {shared}/6\)",
            line,
        ), line
    assert any(line.startswith("# left out: brush RLE") for line in out)
    regions = [line for line in out if line.startswith("# shared 6: discovery's region prompts")]
    assert len(regions) == 1 and re.search(r"store (\d+)/\1$", regions[0])  # same covered area
    with pytest.raises(SystemExit, match="needs CUDA"):
        main(["benchmark", "--gpu", "--device", "cpu"])


def test_pinned_prompts_share_exactly_s() -> None:
    from gfsam.bench.repredict import pinned_cells

    for n, shared in ((128, 0), (128, 100), (128, 128), (5, 3)):
        first, second = pinned_cells(n, shared)
        a = {tuple(c) for c in first.tolist()}
        b = {tuple(c) for c in second.tolist()}
        assert len(a) == len(b) == n and len(a & b) == shared
        assert first[:, 0].tolist() == sorted(first[:, 0].tolist())  # x-major, as selected
    with pytest.raises(ValueError):
        pinned_cells(10, 11)


class CountingSam:
    """A prompt decoder that counts its calls (the oracle's SAM underneath)."""

    def __init__(self, sam) -> None:
        self.sam, self.calls = sam, 0

    def decode_prompts(self, *args, **kwargs):
        self.calls += 1
        return self.sam.decode_prompts(*args, **kwargs)


def test_discovery_with_a_warm_store_is_the_cold_one_without_decoding() -> None:
    from tests.test_discover_refine import oracle_scene

    framed, tokens, oracle = oracle_scene()
    emb = oracle.embed(framed)
    sam = CountingSam(oracle)
    cold = discover_candidates(tokens, framed == 1, sam_prompt_fn(sam, emb))
    calls = sam.calls
    assert calls > 0 and cold  # the scene's unlabelled object is found with decoder calls
    store = DecodedMasks()
    sam.calls = 0
    first = discover_candidates(tokens, framed == 1, sam_prompt_fn(sam, emb, store))
    assert sam.calls == store.region_misses == store.regions == calls and store.region_hits == 0
    warm = DecodedMasks.from_bytes(store.to_bytes())  # through the blob, as the worker does
    sam.calls = 0
    again = discover_candidates(tokens, framed == 1, sam_prompt_fn(sam, emb, warm))
    assert sam.calls == 0 and warm.region_hits == calls and warm.region_misses == 0
    for found in (first, again):
        assert len(found) == len(cold)
        for a, b in zip(found, cold, strict=True):
            assert np.array_equal(a.mask, b.mask) and a.score == b.score and a.origin == b.origin
            assert np.array_equal(a.feature, b.feature)
    # a prompt not stored yet (another covered area) is decoded and added
    sam.calls = 0
    discover_candidates(tokens, np.zeros_like(framed, dtype=bool), sam_prompt_fn(sam, emb, warm))
    assert sam.calls == warm.region_misses > 0 and warm.regions == calls + warm.region_misses


def test_region_section_round_trip_bound_and_rebind() -> None:
    rng = np.random.default_rng(0)
    masks = [rng.random((FRAME, FRAME)) > 0.5 for _ in range(3)]
    calls: list[int] = []

    def decode(points: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, float]:
        calls.append(len(points))
        return masks[(len(calls) - 1) % 3], 0.1 * len(calls) + 1e-9

    store = DecodedMasks(max_regions=2)
    store.bind("k")
    box = np.array([0, 0, 64, 64], np.float32)
    prompts = [np.array([[8.5, 8.5]], np.float32), np.array([[8.5, 8.5], [40, 40]], np.float32)]
    prompts.append(np.array([[8.5, 8.5]], np.float32) + 1e-3)  # another prompt, however close
    got = [store.region_mask(p, box, decode) for p in prompts]
    assert calls == [1, 2, 1] and store.regions == 2  # the oldest region went
    back = DecodedMasks.from_bytes(store.to_bytes())
    assert back.key == "k" and back.regions == 2 and len(back) == 0
    for k in (1, 2):
        mask, score = back.region_mask(prompts[k], box, decode)
        assert np.array_equal(mask, masks[k]) and score == got[k][1] and mask.dtype == bool
    assert calls == [1, 2, 1] and back.region_hits == 2
    back.region_mask(prompts[0], box, decode)  # evicted: decoded again
    assert len(calls) == 4
    back.bind("other")  # another target or decoder: both sections go
    assert back.regions == 0 and len(back) == 0
    assert len(DecodedMasks.from_bytes(store.to_bytes(), max_regions=1).to_bytes()) > 0
    assert DecodedMasks.from_bytes(store.to_bytes(), max_regions=1).regions == 1


def test_old_blob_layout_still_loads() -> None:
    """A blob of the earlier layout (zlib over the npz, point prompts only) reads as before."""
    rng = np.random.default_rng(1)
    bits = np.packbits(rng.random((3, FRAME, FRAME)) > 0.5, axis=-1)  # (3, S, S/8)
    prompts = np.array([[0, 0], [8, 16], [24, 40]], dtype=np.int64)
    npz = _pack("DecodedMasks", {"prompts": prompts, "bits": bits}, key="sam/fp32/abc")
    old = __import__("zlib").compress(npz, 1)
    store = DecodedMasks.from_bytes(old)
    assert store.key == "sam/fp32/abc" and len(store) == 3 and store.regions == 0
    for (x, y), row in zip(prompts, bits, strict=True):
        assert np.array_equal(store.packed((int(x), int(y))), row)
    again = DecodedMasks.from_bytes(store.to_bytes())  # written back in the new layout
    for (x, y), row in zip(prompts, bits, strict=True):
        assert np.array_equal(again.packed((int(x), int(y))), row)
    assert len(DecodedMasks.from_bytes(old, max_masks=2)) == 2
    out = again.masks(prompts[::-1], lambda xy: pytest.fail("decoded"), torch.device("cpu"))
    assert torch.equal(out, unpack_masks(torch.from_numpy(bits[::-1].copy())))


def test_packed_masks_are_the_masks_bits() -> None:
    """`packed_masks` answers what `masks` does, still packed (`np.packbits` along the last
    axis), with the same hits, misses and decodes."""
    rng = np.random.default_rng(2)
    bits = {x: torch.from_numpy(rng.random((FRAME, FRAME)) < 0.3) for x in (0, 8, 16)}

    def decode(xy: np.ndarray) -> torch.Tensor:
        return torch.stack([bits[int(x)] for x, _ in xy])

    one, two = DecodedMasks(), DecodedMasks()
    prompts = np.array([[0, 0], [8, 0], [0, 0]])
    packed = one.packed_masks(prompts, decode)
    masks = two.masks(prompts, decode, torch.device("cpu"))
    assert packed.dtype == np.uint8 and packed.shape == (3, FRAME, FRAME // 8)
    assert np.array_equal(np.unpackbits(packed, axis=-1).astype(bool), masks.numpy())
    assert (one.hits, one.misses) == (two.hits, two.misses) == (1, 2)
    again = one.packed_masks(np.array([[16, 0], [8, 0]]), decode)  # one stored, one new
    assert np.array_equal(again[1], packed[1]) and (one.hits, one.misses) == (2, 3)
