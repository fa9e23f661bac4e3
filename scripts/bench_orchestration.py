"""Orchestration ceiling: how many tasks per second one worker moves when the model costs
nothing, so that I/O never caps a GPU worker (goal: at least 30 tasks/s).

Real Redis, the fake Label Studio of tests/fakes.py serving the 128 real COCO images of
../shared/assets/data/coco128_seg over HTTP and accepting predictions, and a null model whose
"prediction" is the image's own ground-truth class mask (real shapes, so the RLE encoding and
the JSON posted are realistic). One in-process worker runs the pre-annotation of every task;
per task that is: download, decode, cache lookup, null model, RLE, store, LS check and POST.
The null model makes split fall back to argmax and skips discovery (FAKE_SETTINGS).

``--oracle`` (issue 17) runs the real assignment and discovery instead: the tasks' images are
the COCO label maps as class PNGs and the model is the oracle pipeline of tests/fakes.py (the
real token-level GF-SAM on oracle encoders, tokens of ViT-L's 1024 channels and a 1024 x 1024
float32 "embedding": real blob sizes), once with ``ASSIGN=argmax`` and no discovery and once
with ``ASSIGN=split`` and discovery on, so the line pair says what split + discovery cost per
task. The oracle's own GF-SAM stages are not free (they are the token-level pipeline): the
figure is an orchestration + logic ceiling, not a null-cost one.

``--null-split`` (issue 17) measures split and discovery at null model cost: the real COCO
images, and `tests.fakes.NullSplitPipeline`, a model that meets the worker's contract with real
token data and real blob sizes precomputed from the ground-truth class maps (tokens 1369 x 1024,
a SAM-sized embedding, predictions with a token-level `Segmentation`, a SAM decoder returning
ground-truth masks), once with ``ASSIGN=argmax`` and no discovery and once with ``ASSIGN=split``
and discovery on, side by side; the time spent inside the model's own calls is printed beside.

    .venv/bin/python scripts/bench_orchestration.py [--repeat 2] [--oracle --tasks 32]
    .venv/bin/python scripts/bench_orchestration.py --null-split [--tasks 64]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from bootstrap import COCO
from fastapi.testclient import TestClient
from PIL import Image
from redis import Redis

from backend.app import create_app
from backend.state.settings import Settings
from gfsam.decoded import DecodedMasks
from gfsam.encodings import Prediction, Reference, TargetEncoding
from gfsam.eval.oracle import OracleParams
from tests.fakes import (
    TOKEN,
    FakeLabelStudio,
    FakePipeline,
    NullSplitPipeline,
    OraclePipeline,
    brush_region,
    class_png,
    fake_load_image,
    fake_model,
    no_segmentation,
    oracle_model,
)
from tests.project_helpers import fixture
from tests.service_fixtures import run_worker, start_redis, stop_process
from worker import runtime
from worker import tasks as _jobs  # noqa: F401  (imports torch & co before any timing)
from worker.labelstudio.brush_rle import mask_to_rle
from worker.prediction import delivery, prefetch


def fingerprint(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image[::7, ::7]).tobytes()).hexdigest()


@dataclass
class GroundTruthPipeline(FakePipeline):
    """A null model: the "prediction" of a label is the image's largest ground-truth class.
    The fake's encodings carry no features; this one writes the image's index among the
    masks into its one token, so a target read back from the cache finds its mask."""

    masks: dict[str, np.ndarray] | None = None
    index: dict[str, int] = field(default_factory=dict)

    def encode_target(self, image: np.ndarray) -> TargetEncoding:
        target = super().encode_target(image)
        key = fingerprint(image)
        number = self.index.setdefault(key, len(self.index))
        tokens = np.full((1, 1), number, dtype=np.float32)
        return TargetEncoding(target.embedding, tokens, target.image_size, "gt_sam", "gt_dino")

    def predict_labels(
        self,
        target: TargetEncoding,
        references: Mapping[str, Sequence[Reference]],
        *,
        decoded: DecodedMasks | None = None,
    ) -> dict[str, Prediction]:
        assert self.masks is not None
        keys = {number: key for key, number in self.index.items()}
        mask = self.masks[keys[int(target.tokens[0, 0])]]
        return {
            label: Prediction(mask, 0.9, False, False, no_segmentation()) for label in references
        }


def load_coco() -> tuple[list[bytes], dict[str, np.ndarray]]:
    images, masks = [], {}
    for path in sorted((COCO / "images").glob("*.jpg")):
        data = path.read_bytes()
        rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        classes = np.asarray(Image.open(COCO / "masks" / f"{path.stem}.png"))
        ids, counts = np.unique(classes[(classes > 0) & (classes < 255)], return_counts=True)
        biggest = ids[np.argmax(counts)] if ids.size else 0
        images.append(data)
        masks[fingerprint(rgb)] = classes == biggest
    return images, masks


def load_coco_classes(limit: int) -> tuple[list[bytes], np.ndarray]:
    """The first `limit` COCO label maps as class PNGs, and the first one's largest class mask."""
    images: list[bytes] = []
    seed = np.zeros(0, dtype=bool)
    for path in sorted((COCO / "masks").glob("*.png"))[:limit]:
        classes = np.asarray(Image.open(path)).astype(np.int32)
        classes[classes == 255] = 0
        if not images:
            ids, counts = np.unique(classes[classes > 0], return_counts=True)
            seed = classes == ids[np.argmax(counts)]
        images.append(class_png(classes))
    return images, seed


def run_once(
    images: list[bytes],
    masks: dict[str, np.ndarray],
    url: str,
    tmp: Path,
    pipelined: bool,
    oracle: str | None = None,
    null_split: NullSplitPipeline | None = None,
) -> float:
    """Tasks per second of one worker over all tasks but the seed. `oracle`: None (null model),
    ``"off"`` (argmax, no discovery) or ``"on"`` (split + discovery), on the oracle pipeline or,
    given `null_split`, on that null-cost model; then `masks` holds the seed mask under the key
    ``"seed"``."""
    conn = Redis.from_url(url)
    conn.flushdb()
    ls = FakeLabelStudio().start()
    settings = Settings(
        redis_url=url,
        label_studio_url=ls.url,
        label_studio_api_key=TOKEN,
        data_dir=tmp / f"data-{time.monotonic_ns()}",  # a cold target cache every run
        refit_debounce_s=0.0,
        lookahead_tasks=None,
        inline_verify_delay_s=0,
        prefetch_jobs=4 if pipelined else 0,
        deliver_threads=2 if pipelined else 0,
        encode_batch=8 if pipelined else 1,
        assign="split" if oracle == "on" else "argmax",
        discover=oracle == "on",
        _env_file=None,  # type: ignore[call-arg]
    )
    if null_split is not None:
        runtime.install(settings, fake_model(null_split))
    elif oracle is None:
        runtime.install(settings, fake_model(GroundTruthPipeline(masks=masks)))
    else:
        params = OracleParams(sigma=0.1, rho=0.6, dim=1024)
        runtime.install(settings, oracle_model(OraclePipeline(params)))
    tasks = [ls.add_task(1, data, f"{i}.png")["id"] for i, data in enumerate(images)]
    if oracle is None:
        seed = masks[fingerprint(np.asarray(Image.open(io.BytesIO(images[0])).convert("RGB")))]
    else:
        seed = masks["seed"]
    ls.annotate(tasks[0], [brush_region(seed, "Object")])  # the seed
    with TestClient(create_app(settings)) as client:
        assert client.post("/setup", json=fixture("setup.json")).status_code == 200
        run_worker(conn, settings, max_jobs=1)  # the sync: seed applied, 127 tasks queued
        started = time.perf_counter()
        run_worker(conn, settings)
        delivery.drain()  # the background POSTs count
        elapsed = time.perf_counter() - started
    posted = len(ls.posts)
    if oracle == "on" and not int(conn.hget("gfsam:stats", "discover") or 0):
        raise SystemExit("discovery did not run: the split + discovery figure would be wrong")
    ls.stop()
    delivery.reset()
    prefetch.reset()
    runtime.reset()
    if posted != len(tasks) - 1:
        raise SystemExit(f"expected {len(tasks) - 1} predictions, LS got {posted}")
    return posted / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--no-pipeline", action="store_true", help="only the serial worker (no side-by-side)"
    )
    parser.add_argument(
        "--oracle",
        action="store_true",
        help="oracle pipeline, serial worker: argmax without discovery vs split + discovery",
    )
    parser.add_argument(
        "--null-split",
        action="store_true",
        help="null-cost model with real token data: argmax without discovery vs split + discovery",
    )
    parser.add_argument("--tasks", type=int, default=128, help="images (the first is the seed)")
    args = parser.parse_args()
    if args.oracle:
        return main_oracle(args)
    if args.null_split:
        return main_null_split(args)
    images, masks = load_coco()
    rle_s = time.perf_counter()
    for mask in masks.values():
        mask_to_rle(mask)
    rle_ms = 1000 * (time.perf_counter() - rle_s) / len(masks)
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_redis(Path(tmp) / "redis")
        try:
            modes = [False] if args.no_pipeline else [False, True]
            rates = {
                m: [run_once(images, masks, url, Path(tmp), m) for _ in range(args.repeat)]
                for m in modes
            }
        finally:
            stop_process(proc)
    print(
        f"orchestration ceiling: {len(images) - 1} real COCO tasks per run, null model, "
        f"one in-process worker, fake LS over HTTP, real Redis"
    )
    print(f"RLE encoding alone: {rle_ms:.1f} ms per mask")
    for mode, runs in rates.items():
        name = "pipelined (prefetch 4, POST threads 2, encode batch 8)" if mode else "serial"
        print(
            f"tasks per second per worker, {name}: {max(runs):.1f} (runs: "
            f"{', '.join(f'{r:.1f}' for r in runs)}; goal >= 30)"
        )
    return 0


def main_oracle(args: argparse.Namespace) -> int:
    images, seed = load_coco_classes(args.tasks)
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_redis(Path(tmp) / "redis")
        try:
            rates = {
                mode: [
                    run_once(images, {"seed": seed}, url, Path(tmp), False, mode)
                    for _ in range(args.repeat)
                ]
                for mode in ("off", "on")
            }
        finally:
            stop_process(proc)
    print(
        f"[oracle encoders: logic, NOT model quality] orchestration with the oracle pipeline: "
        f"{len(images) - 1} COCO label-map tasks per run, one serial in-process worker, fake LS "
        "over HTTP, real Redis, real blob sizes (tokens 1369 x 1024, embedding 4 MiB)"
    )
    for mode, runs in rates.items():
        name = "split + discovery" if mode == "on" else "argmax, no discovery"
        print(
            f"tasks per second per worker, oracle, {name}: {statistics.median(runs):.2f} "
            f"(median; runs: {', '.join(f'{r:.2f}' for r in runs)})"
        )
    return 0


def load_null_split(limit: int) -> tuple[list[bytes], np.ndarray, NullSplitPipeline]:
    """The first `limit` real COCO images, the first one's largest class mask (the seed) and a
    `NullSplitPipeline` that knows every image's class map (precomputed here, not timed)."""
    model = NullSplitPipeline()
    images: list[bytes] = []
    seed = np.zeros(0, dtype=bool)
    for path in sorted((COCO / "images").glob("*.jpg"))[:limit]:
        data = path.read_bytes()
        classes = np.asarray(Image.open(COCO / "masks" / f"{path.stem}.png")).astype(np.int32)
        classes[classes == 255] = 0
        model.add(fake_load_image(data), classes)  # as the worker decodes it
        if not images:
            ids, counts = np.unique(classes[classes > 0], return_counts=True)
            seed = classes == ids[np.argmax(counts)]
        images.append(data)
    return images, seed, model


def main_null_split(args: argparse.Namespace) -> int:
    images, seed, model = load_null_split(args.tasks)
    rates: dict[str, list[float]] = {}
    model_ms: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_redis(Path(tmp) / "redis")
        try:
            for mode in ("off", "on"):
                for _ in range(args.repeat):
                    model.seconds = model.sam.seconds = 0.0
                    rate = run_once(images, {"seed": seed}, url, Path(tmp), False, mode, model)
                    rates.setdefault(mode, []).append(rate)
                    spent = model.seconds + model.sam.seconds  # encoders, predict, decoder
                    model_ms.setdefault(mode, []).append(1000 * spent / (len(images) - 1))
        finally:
            stop_process(proc)
    print(
        f"[null-cost model, real token data: orchestration + split + discovery, NOT model speed] "
        f"{len(images) - 1} real COCO tasks per run, one serial in-process worker, fake LS over "
        "HTTP, real Redis; target blobs of real size (tokens 1369 x 1024 float32, embedding "
        f"256 x 64 x 64 float32), {model.prompts} gated prompts per prediction (the model puts "
        "their masks in the mask store, as a real one does)"
    )
    print(
        "# left out: the model's compute (encoders, GF-SAM's token stages, SAM decoder: "
        "ground-truth masks from precomputed class maps), real Label Studio latency, other "
        "workers; the model's own calls (array copies, ground-truth masks) stay in, timed below"
    )
    for mode in ("off", "on"):
        name = "split + discovery" if mode == "on" else "argmax, no discovery"
        runs = rates[mode]
        print(
            f"tasks per second per worker, null-cost model, {name}: "
            f"{statistics.median(runs):.1f} (median; runs: {', '.join(f'{r:.1f}' for r in runs)}; "
            f"model's own calls {statistics.median(model_ms[mode]):.1f} ms/task"
            f"{'; goal >= 10' if mode == 'on' else ''})"
        )
    for mode in ("off", "on"):  # what the worker itself spends per task, the model's calls out
        name = "split + discovery" if mode == "on" else "argmax, no discovery"
        task_ms = 1000 / statistics.median(rates[mode])
        own_ms = task_ms - statistics.median(model_ms[mode])
        print(
            f"# per task, {name}: {task_ms:.0f} ms, of which the worker's own {own_ms:.0f} ms "
            f"(without the model's calls: {1000 / own_ms:.1f} tasks/s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
