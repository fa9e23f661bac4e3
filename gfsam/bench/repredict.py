"""``python -m gfsam benchmark --repredict``: first prediction vs re-prediction after a correction.

One target image, one label, what the worker runs per task (issue 17):

- **first prediction**: encode the target, predict from one shot with a fresh mask store, split
  assignment (carving along the prompts' masks from the store), discovery (its SAM decoder
  calls included, its region prompts kept in the store), write the target and mask blobs to
  the on-disk cache (files, as the worker's cache does);
- **after a correction** (one more shot added to the label): read both blobs from the disk
  cache, predict from two shots (prompts already in the store are not decoded again), split
  assignment, discovery (region prompts already in the store are not decoded again), write the
  mask blob back when something was decoded. Encoding the new shot and calibrating the label
  on its shots are paid once per correction, not per image (the worker caches calibrations per
  shot set), so they are reported apart.

Random weights select few prompts (often under 10) where real ones select up to 128, which
flatters the re-prediction: ``--prompts N`` pins the prompt selection to N cells (a seeded draw)
and ``--shared S`` keeps S of them in the corrected version (the other N - S are new: a new
shot moves the selection); ``--shared`` takes a comma list (one contract line each, the same
first prediction). Without ``--prompts`` the weights' own selection runs (said on the output).
Timings: ``--warmup`` untimed runs, then the median of ``--repeat``.

Left out (said on the output): the brush RLE of the regions (`worker/labelstudio/brush_rle`,
`scripts/bench_rle.py`), Redis and Label Studio HTTP. RANDOM weights: timings only.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from gfsam.assign import (
    LabelCalibration,
    PointMasks,
    SplitParams,
    assign_split,
    calibrate_label,
)
from gfsam.bench.synthetic import random_pipeline, synthetic_pair
from gfsam.decoded import DecodedMasks
from gfsam.discover import discover_candidates, sam_prompt_fn
from gfsam.encodings import Reference, TargetEncoding
from gfsam.image import mask_to_frame
from gfsam.pipeline import GFSAM
from gfsam.types import GRID, TOKENS

LEFT_OUT = "# left out: brush RLE of the regions (scripts/bench_rle.py), Redis, Label Studio HTTP"


def _images() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], np.ndarray]:
    """Seed shot, correction shot (another view of the object) and target; uint8 RGB + bool."""

    ref, mask, target = synthetic_pair()
    rng = np.random.default_rng(1)
    shifted = np.roll(ref, (31, -47), axis=(0, 1))  # the object seen elsewhere, new background
    shifted[: ref.shape[0] // 8] = rng.integers(0, 256, shifted[: ref.shape[0] // 8].shape)
    return (ref, mask), (shifted, np.roll(mask, (31, -47), axis=(0, 1))), target


def pinned_cells(n: int, shared: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two prompt selections of n cells sharing exactly `shared` (x-major like `select_points`).

    Returns:
        (int64 [n, 2] cells (x, y) of the first version, of the corrected version).
    """
    if not 0 <= shared <= n <= TOKENS // 2:
        raise ValueError(f"need 0 <= shared <= prompts <= {TOKENS // 2}, got {shared}, {n}")
    flat = np.random.default_rng(seed).permutation(TOKENS)
    first, second = flat[:n], np.concatenate([flat[:shared], flat[n : 2 * n - shared]])

    def cells(idx: np.ndarray) -> torch.Tensor:
        xs, ys = idx % GRID, idx // GRID
        order = np.argsort(xs * GRID + ys)
        return torch.from_numpy(np.stack([xs[order], ys[order]], axis=1).astype(np.int64))

    return cells(first), cells(second)


@contextmanager
def _pinned(cells: torch.Tensor | None) -> Iterator[None]:
    if cells is None:
        yield
        return
    with mock.patch("gfsam.core.select_points", lambda filtered, cfg: cells.clone()):
        yield


class _Task:
    """The worker's per-task work on one target (module docstring).

    As the worker does: the label's calibration is computed once per shot set
    (`worker.prediction.assignment.ThresholdCache`), so it is passed in, not timed per task; the
    split assignment carves along the prompts' masks read from the store
    (`worker.prediction.decoded_masks.point_masks`); discovery's region prompts go through the
    same store; the mask blob is written only when something was decoded.
    """

    def __init__(self, pipe: GFSAM, cache: Path) -> None:
        self.pipe, self.cache = pipe, cache
        self.hits = self.prompts = self.region_hits = self.regions = 0

    def run(
        self,
        target: TargetEncoding,
        store: DecodedMasks,
        shots: list[Reference],
        cal: LabelCalibration,
    ) -> None:
        pipe, cfg, params = self.pipe, self.pipe.config, SplitParams()
        store.reset_stats()
        preds = pipe.predict_labels(target, {"label": shots}, decoded=store)
        self.hits, self.prompts = store.hits, store.hits + store.misses
        asg = assign_split(
            target,
            preds,
            {"label": shots},
            cfg=cfg,
            thresholds={"label": cal.floor},
            calibrations={"label": cal},
            point_masks=_point_masks(pipe, target, store),
        )
        covered = np.zeros(mask_to_frame(np.zeros(target.image_size, bool)).shape, dtype=bool)
        for inst in asg.accepted["label"]:
            covered |= mask_to_frame(inst.mask).numpy()
        discover_candidates(
            target.tokens,
            covered,
            sam_prompt_fn(pipe.sam, target.embedding, store),
            rejected=[mask_to_frame(i.mask).numpy() for i in asg.candidates],
            labels=[(cal.shot_prototypes(shots, cfg, params), cal.match)],
            cfg=cfg,
        )
        self.region_hits, self.regions = store.region_hits, store.region_hits + store.region_misses
        if store.misses or store.region_misses:
            (self.cache / "target.masks").write_bytes(store.to_bytes())

    def first(self, image: np.ndarray, shots: list[Reference], cal: LabelCalibration) -> None:
        target = self.pipe.encode_target(image)
        (self.cache / "target").write_bytes(target.to_bytes())
        self.run(target, DecodedMasks(), shots, cal)

    def again(self, shots: list[Reference], cal: LabelCalibration) -> None:
        target = TargetEncoding.from_bytes((self.cache / "target").read_bytes())
        store = DecodedMasks.from_bytes((self.cache / "target.masks").read_bytes())
        self.run(target, store, shots, cal)


def _point_masks(pipe: GFSAM, target: TargetEncoding, store: DecodedMasks) -> PointMasks:
    """The worker's `point_masks`: prompt pixels -> packed SAM masks from the store (one positive
    point through `decode_prompts` for a prompt evicted since)."""

    def decode(prompt_xy: np.ndarray) -> torch.Tensor:
        one = np.ones(1, dtype=np.int64)
        masks = [
            pipe.sam.decode_prompts(target.embedding, np.asarray([xy], np.float32), one)[0]
            for xy in prompt_xy
        ]
        return torch.from_numpy(np.stack(masks).astype(bool))  # (N, S, S)

    def masks(prompt_xy: np.ndarray) -> np.ndarray:
        return store.packed_masks(prompt_xy, decode)  # (P, S, S/8)

    return masks


def _median(
    fn: Callable[[], None], before: Callable[[], object], warmup: int, repeat: int
) -> float:
    """`before` (untimed) then `fn`, `warmup` times untimed, then the median of `repeat`."""
    times = []
    for k in range(warmup + max(repeat, 1)):
        before()
        start = time.perf_counter()
        fn()
        if k >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _shared_values(args: argparse.Namespace) -> list[int | None]:
    if args.prompts is None:
        return [None]
    text = args.shared if args.shared is not None else str(args.prompts)
    return [int(s) for s in str(text).split(",") if s.strip()]


def run(args: argparse.Namespace) -> list[str]:
    """Measure; returns the report lines, ending with a ``reprediction speedup`` line."""
    torch.manual_seed(0)  # the same random encoders (so the same prompts) on every run
    pipe = random_pipeline(args)
    (seed_img, seed_mask), (extra_img, extra_mask), target_img = _images()
    seed = pipe.encode_reference(seed_img, seed_mask)
    start = time.perf_counter()
    extra = pipe.encode_reference(extra_img, extra_mask)
    shot_s = time.perf_counter() - start
    cal1 = calibrate_label([seed], pipe.config, SplitParams())
    start = time.perf_counter()
    cal2 = calibrate_label([seed, extra], pipe.config, SplitParams())
    cal_s = time.perf_counter() - start
    lines = [
        f"# repredict: sam={args.sam} dino={args.dino} device={args.device} "
        f"threads={torch.get_num_threads()} blas_threads={args.blas_threads or 'numpy'} "
        f"max_points={args.max_points}; RANDOM WEIGHTS: "
        "timing only, masks are meaningless",
        "# per task: target + mask blobs through the on-disk cache, predict, split assignment, "
        f"discovery (its decoder calls); warm-up {args.warmup}, median of {args.repeat}",
        LEFT_OUT,
        f"# new shot encoded once per correction (not per image): {shot_s:.2f}s",
        f"# label calibration once per correction (not per image, as the worker caches it): "
        f"{cal_s:.2f}s",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        task, blob_path = _Task(pipe, Path(tmp)), Path(tmp) / "target.masks"
        # the first version's cells do not depend on S: one first prediction serves every S
        first_cells = None if args.prompts is None else pinned_cells(args.prompts, 0)[0]
        with _pinned(first_cells):
            first = _median(
                lambda: task.first(target_img, [seed], cal1), lambda: None, args.warmup, args.repeat
            )
        masks_blob = blob_path.read_bytes()
        lines.append(f"# mask blob after the first prediction: {len(masks_blob) / 2**20:.1f} MiB")
        contract: list[str] = []  # the contract lines close the report, one per S
        for shared in _shared_values(args):
            cells = None if shared is None else pinned_cells(args.prompts, shared)[1]
            with _pinned(cells):
                after = _median(
                    lambda: task.again([seed, extra], cal2),
                    lambda: blob_path.write_bytes(masks_blob),  # the state after the first
                    args.warmup,
                    args.repeat,
                )
            prompts = task.prompts if args.prompts is None else args.prompts
            lines.append(
                f"# shared {shared}: discovery's region prompts served from the mask store "
                f"{task.region_hits}/{task.regions}"
            )
            contract.append(
                f"reprediction speedup: {first / after:.1f}x (first {first:.2f}s, after a "
                f"correction {after:.2f}s, prompts {prompts} shared "
                f"{task.hits if shared is None else shared}, prompt cache hits "
                f"{task.hits}/{task.prompts})"
            )
    return lines + contract
