"""Cost of the background self-measurement (issue 19) per annotated task. RANDOM WEIGHTS: times
only, every mask and figure meaningless.

    .venv/bin/python scripts/bench_calibrate.py [--sam sam_vit_h] [--dino dinov2_vitl14] \
        [--threads 2] [--tasks 3] [--encode-once]

What the worker's `calibrate_project` runs once a task's encodings are cached: the task
predicted with references that exclude its own shots (`gfsam.calibrate.loo_references`;
`predict_labels` with a decoded-mask store, cold: no SAM mask of the task stored, warm: the
masks of an earlier prediction of the task stored), then `gfsam.calibrate.tune` (the split
assignment once per candidate threshold, then once per other assignment mode, as
`CALIBRATE_MODES` does), each assignment cleaned as a prediction posts it (the worker's
`cleaned_assignment`, GEOMETRY_* defaults). The encoders' time (target encodings, cached by the
worker; the references are built from the target's own tokens, as `encode_reference` computes
them) is printed apart and not counted. Two persons and cars per image (coco128 images holding
both), 2 labels.
"""

from __future__ import annotations

import argparse
import time

import bootstrap  # noqa: F401  (the repository root on sys.path)
import numpy as np
from bootstrap import COCO

NOTE = "[RANDOM WEIGHTS: times only, masks meaningless]"


def main() -> None:
    import torch

    from backend.state.settings import Settings
    from gfsam import DecodedMasks, build_pipeline, load_image
    from gfsam.assign import MODES, SplitParams, assign_mixed, assign_split, calibrate_threshold
    from gfsam.calibrate import TaskCase, loo_references, tune
    from gfsam.encodings import Reference, TargetEncoding
    from gfsam.eval.data import load_labels, read_label_folder
    from gfsam.image import mask_to_frame
    from gfsam.points import reference_weights
    from worker.prediction.inference import cleaned_assignment

    settings = Settings()  # GEOMETRY_* defaults: the measurement cleans as a prediction posts

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sam", default="sam_vit_h")
    p.add_argument("--dino", default="dinov2_vitl14")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tasks", type=int, default=3)
    p.add_argument("--preset", help="e.g. tiny (a smoke run of this script)")
    p.add_argument(
        "--encode-once",
        action="store_true",
        help="encode the first image only; the others reuse its encoding perturbed (what is "
        "timed runs on cached encodings anyway)",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.preset:
        pipe = build_pipeline(preset=args.preset, device="cpu", random_weights=True)
    else:
        pipe = build_pipeline(sam=args.sam, dino=args.dino, device="cpu", random_weights=True)
    engines = args.preset or f"{args.sam} + {args.dino}"
    ds = read_label_folder(COCO)
    items = [i for i in ds.items if {1, 3} <= ds.classes_of(i)][: args.tasks]
    names = {1: "person", 3: "car"}
    started = time.perf_counter()
    images, truths, targets, shots = {}, {}, {}, {}
    rng = np.random.default_rng(0)
    first = None
    for item in items:
        labels = load_labels(item)
        images[item.key] = load_image(item.image)
        truths[item.key] = {n: labels == c for c, n in names.items()}
        if first is None or not args.encode_once:
            first = target = pipe.encode_target(images[item.key])
        else:  # the first image's encoding, perturbed: same shapes and cost downstream
            target = TargetEncoding(
                first.embedding + rng.normal(0, 0.05, first.embedding.shape).astype(np.float32),
                first.tokens + rng.normal(0, 0.05, first.tokens.shape).astype(first.tokens.dtype),
                labels.shape[:2],
                first.sam_encoder,
                first.dino_encoder,
            )
        targets[item.key] = target
        for c, n in names.items():  # the target's own tokens, as encode_reference computes them
            fg, bg = reference_weights(mask_to_frame(labels == c))
            ref = Reference(
                target.tokens,
                fg.numpy(),
                bg.numpy(),
                int((labels == c).sum()),
                target.image_size,
                target.dino_encoder,
            )
            shots.setdefault(n, []).append((item.key, ref))
    encode_s = time.perf_counter() - started
    encoded = 1 if args.encode_once else len(items)
    print(
        f"{NOTE} encoders (cached in the worker, not counted): {encode_s:.1f} s for "
        f"{encoded} target(s); the references reuse the targets' tokens"
    )
    clean = [True]  # the worker's measurement cleans each assignment (GEOMETRY_CLEAN)
    others = [m for m in MODES if m != "split"]  # CALIBRATE_MODES with ASSIGN=split (defaults)
    for warm in (False, True):
        stores = {k: DecodedMasks(max_masks=512) for k in targets}
        if warm:  # an earlier prediction of each task left its SAM masks next to its encoding
            for k, t in targets.items():
                pipe.predict_labels(
                    t, {n: [r for _, r in s] for n, s in shots.items()}, decoded=stores[k]
                )
        started = time.perf_counter()
        cases = []
        for k, target in targets.items():
            refs = loo_references(shots, k)
            preds = pipe.predict_labels(target, refs, decoded=stores[k])
            defaults = {
                n: calibrate_threshold(r, pipe.config, SplitParams()) for n, r in refs.items()
            }

            def at(th, modes=None, target=target, preds=preds, refs=refs):  # noqa: ANN001, ANN202
                if modes:  # a label in another mode (CALIBRATE_MODES), as the worker assigns it
                    order = list(refs)
                    asg = assign_mixed(
                        modes, target, preds, refs, order, cfg=pipe.config, thresholds=th
                    )
                else:
                    asg = assign_split(target, preds, refs, cfg=pipe.config, thresholds=th)
                return cleaned_assignment(asg, settings) if clean[0] else asg

            cases.append(TaskCase(k, at, defaults, {n: truths[k][n] for n in refs}))
        predict_s = time.perf_counter() - started
        found = tune(cases, modes=others)
        total = time.perf_counter() - started
        per = total / len(cases)
        # side by side: the same tuning without cleaning, then with it again (the lower of the
        # two cleaned runs counts, so warm caches favour neither side)
        clean[0] = False
        bare = time.perf_counter()
        tune(cases, modes=others)
        bare_s = time.perf_counter() - bare
        clean[0] = True
        again = time.perf_counter()
        tune(cases, modes=others)
        clean_s = min(total - predict_s, time.perf_counter() - again)
        grid = max(len(g) for g in found.grids.values()) if found.grids else 1
        print(
            f"{NOTE} {'warm' if warm else 'cold'} decoded masks: {len(cases)} tasks, "
            f"leave-one-out predict {predict_s:.1f} s, tune {total - predict_s:.1f} s "
            f"(grid {grid}, modes {'+'.join(others)}), {per:.1f} s per annotated task; "
            f"engines {engines}, {args.threads} threads; from a project's second measured "
            f"version on, its previous version is predicted on the same tasks: "
            f"+{predict_s / len(cases):.1f} s per task; the tune without clean geometry "
            f"{bare_s:.1f} s against {clean_s:.1f} s with it (cleaning {clean_s - bare_s:+.1f} s)"
        )


if __name__ == "__main__":
    main()
