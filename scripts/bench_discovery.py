"""Discovery's share of a predict task's time (issue 11), in process, no Redis.

    .venv/bin/python scripts/bench_discovery.py [--sam sam_vit_h] [--dino dinov2_vitl14]
        [--threads 2] [--images 3]

Per image, as a predict job with discovery does it: target encoding, `predict_labels` (two
labels, one shot each), split assignment, then discovery (`discover_candidates` on the cached
encodings: token clustering, one SAM decoder call per region, filters, pooling) and the member
records (original-size mask, packed mask, JPEG crop). Random weights: masks are meaningless, the
timings are not (the same layers run). Discovery's decoder calls are counted; its worst case
(``max_prompts`` regions) is timed separately with forced prompts.
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
from bootstrap import REPO

DATA = REPO.parent / "shared" / "assets" / "data" / "coco128_seg"
logger = logging.getLogger("bench_discovery")


def main(args: argparse.Namespace) -> None:
    import torch

    from gfsam import build_pipeline, load_image
    from gfsam.assign import SplitParams, calibrate_threshold, shot_prototypes
    from gfsam.discover import DiscoverParams, discover_candidates, refine_regions, sam_prompt_fn
    from gfsam.discover.clusters import Region
    from gfsam.image import mask_to_frame
    from gfsam.types import GRID
    from worker.discovery.candidates import _member
    from worker.prediction.assignment import ThresholdCache, assign

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    pipe = build_pipeline(sam=args.sam, dino=args.dino, random_weights=True, device="cpu")
    images = sorted((DATA / "images").glob("*.jpg"))[: args.images + 1]
    ref_img = load_image(images[0])
    h, w = ref_img.shape[:2]
    masks = [np.zeros((h, w), bool), np.zeros((h, w), bool)]
    masks[0][h // 8 : h // 2, w // 8 : w // 2] = True
    masks[1][h // 2 : 7 * h // 8, w // 2 : 7 * w // 8] = True
    refs = {"A": [pipe.encode_reference(ref_img, masks[0])]}
    refs["B"] = [pipe.encode_reference(ref_img, masks[1])]
    cache = ThresholdCache()
    labels = [
        (
            shot_prototypes(r, pipe.config, SplitParams()),
            calibrate_threshold(r, pipe.config, SplitParams()),
        )
        for r in refs.values()
    ]
    rows = []
    for path in images[1:]:
        data = path.read_bytes()
        t0 = time.perf_counter()
        target = pipe.encode_target(load_image(data))
        t1 = time.perf_counter()
        preds = pipe.predict_labels(target, refs)
        asg = assign(
            "split",
            pipe,
            target,
            preds,
            refs,
            {"A": ["a"], "B": ["b"]},
            ["A", "B"],
            model_key="bench",
            cache=cache,
        )
        t2 = time.perf_counter()
        calls = [0]
        fn = sam_prompt_fn(pipe.sam, target.embedding)

        def counted(
            points: np.ndarray, box: np.ndarray, fn=fn, calls=calls
        ) -> tuple[np.ndarray, float]:
            calls[0] += 1
            return fn(points, box)

        covered = np.zeros((h0 := target.image_size[0], target.image_size[1]), bool)
        for inst in (i for v in asg.accepted.values() for i in v):
            covered |= inst.mask
        cands = discover_candidates(
            target.tokens,
            mask_to_frame(covered).numpy(),
            counted,
            rejected=[mask_to_frame(c.mask).numpy() for c in asg.candidates],
            labels=labels,
            cfg=pipe.config,
        )
        image = load_image(data)
        for c in cands:
            _member(0, c, target.image_size, image)
        t3 = time.perf_counter()
        params = DiscoverParams()
        cells = np.zeros(GRID * GRID, bool)
        cells.reshape(GRID, GRID)[5:15, 5:15] = True
        regions = [Region(cells, np.zeros(8, np.float32))] * params.max_prompts
        t4 = time.perf_counter()
        refine_regions(regions, fn, params)
        t5 = time.perf_counter()
        rows.append((t1 - t0, t2 - t1, t3 - t2, calls[0], len(cands), t5 - t4, h0))
    print(
        f"{args.sam} + {args.dino}, random weights, {args.threads} CPU threads, "
        f"{len(rows)} coco128 images"
    )
    print(
        "encode_s  predict+assign_s  discovery_s  decoder_calls  candidates  share  "
        "worst12_s  worst_share"
    )
    for enc, pred, disc, n, k, worst, _ in rows:
        total = enc + pred + disc
        print(
            f"{enc:8.2f}  {pred:16.2f}  {disc:11.2f}  {n:13d}  {k:10d}  {disc / total:5.1%}  "
            f"{worst:9.2f}  {worst / (enc + pred + worst):11.1%}"
        )


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sam", default="sam_vit_h")
    parser.add_argument("--dino", default="dinov2_vitl14")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=3)
    main(parser.parse_args())
