"""`eval replay --calibrate`: what the backend's self-tuning (issue 19) gives on a replayed project.

At checkpoints of the replay (every ``every`` annotated images while at least ``MIN_HELD_OUT``
images remain), with the shots the loop holds then:

- **tuning, as the backend does it** (`gfsam.calibrate.tune`): the last ``tasks`` annotated
  images, each predicted with references that exclude its own shots
  (`Replay.left_out`), swept over candidate threshold offsets; per class the offset of the
  best IoU with at least ``min_tasks`` images holding it (else the default), and the score map;
- **measured on the images not annotated yet** (never seen by the tuning), with the current
  shots: ``default`` (default thresholds), ``calibrated`` (the chosen offsets and, with
  ``modes``, per-class modes), ``best_fixed`` (per class the best candidate offset chosen in
  hindsight ON these images: the ceiling of any threshold choice from the same candidates; the
  grid comes from these images' own proposals), ``best_fixed_modes`` (the same ceiling when the
  other modes are candidates too), ``best_fixed_evidenced`` (``best_fixed`` for the classes
  the tuning had the evidence to move, at least ``min_tasks`` tuned-on images holding them
  and, for a looser setting, as many without them (`allowed_settings`); the others at the
  default: the ceiling of a choice that keeps the evidence rule);
  and, at the chosen offsets, the posted score (`ScoreMap` of the task's estimate) against each
  image's IoU: ``score_iou_spearman`` and ``low20_correction_share`` (0.2: a random order);
  ``score_iou_spearman_ceiling`` beside it: the most any score could reach that has to tie
  the images the assignment left no trace on, nothing painted and no near miss (expected IoU 1
  and no work, `gfsam.taskscore.task_estimate`; `gfsam.calibrate.spearman_ceiling`).

mIoU: mean over the classes that have shots and appear in the held-out images of the IoU
accumulated over them, in %. Each figure of the result is the mean over checkpoints (each
checkpoint's figures are kept in the list ``calibration``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from gfsam.assign import Assignment, assign_mixed, assign_split
from gfsam.calibrate import (
    GRID_SIZE,
    MIN_TASKS,
    Counts,
    Outcome,
    Setting,
    Sweep,
    TaskCase,
    assign_chosen,
    choose_offset,
    chosen_thresholds,
    evidence_allows,
    low20_correction_share,
    observed_offsets,
    offset_grid,
    outcome,
    remember_default,
    spearman,
    spearman_ceiling,
    sum_sweeps,
    sweep_task,
    tune,
)
from gfsam.encodings import Prediction, Reference
from gfsam.eval.data import IGNORE, Item, load_labels

if TYPE_CHECKING:
    from gfsam.eval.replay import Replay

MIN_HELD_OUT = 5  # a checkpoint needs this many images left to rank


def _case(
    loop: Replay,
    item: Item,
    per_class: dict[int, tuple[list[Reference], float, Prediction]],
) -> TaskCase | None:
    if not per_class:
        return None
    labels = load_labels(item)
    refs = {str(c): r for c, (r, _, _) in per_class.items()}
    preds = {str(c): p for c, (_, _, p) in per_class.items()}
    target = loop.model.encode_target(item)

    def assign_at(
        thresholds: Mapping[str, float], modes: Mapping[str, str] | None = None
    ) -> Assignment:
        if not modes:
            return assign_split(target, preds, refs, cfg=loop.cfg, thresholds=thresholds)
        every = {lb: modes.get(lb, "split") for lb in preds}
        return assign_mixed(
            every, target, preds, refs, list(preds), cfg=loop.cfg, thresholds=thresholds
        )

    return TaskCase(
        key=item.key,
        assign_at=assign_at,
        defaults={str(c): t for c, (_, t, _) in per_class.items()},
        truth={str(c): labels == c for c in per_class},
        valid=labels != IGNORE,
    )


def _current(loop: Replay, item: Item) -> dict[int, tuple[list[Reference], float, Prediction]]:
    return {c: (loop.shots[c], loop.thresholds[c], loop.predict(item, None, c)) for c in loop.shots}


def _miou(counts: dict[str, Counts], classes: Sequence[str]) -> float | None:
    ious = [counts[c].iou for c in classes if c in counts]
    vals = [v for v in ious if v is not None]
    return round(100.0 * float(np.mean(vals)), 2) if vals else None


def _task_row(o: Outcome) -> dict[str, Any]:
    return {
        "iou": round(o.iou, 4),
        "corrections": o.corrections,
        "est_iou": round(o.estimate.iou, 5),
        "est_work": round(o.estimate.work, 6),
    }


def allowed_settings(
    sweep: Mapping[Setting, Counts], tuned_on: Counts | None, min_tasks: int
) -> dict[Setting, Counts]:
    """The settings of `sweep` the evidence rule lets the tuning choose, given what it was
    tuned on (`tuned_on`: the class's counts at the default over the tuned-on images): none
    but the default below ``min_tasks`` images holding the class, no looser one below
    ``min_tasks`` images without it (`gfsam.calibrate.evidence_allows`)."""
    if tuned_on is None:
        return {0.0: sweep[0.0]}
    return {k: c for k, c in sweep.items() if evidence_allows(tuned_on, k, min_tasks)}


def checkpoint(
    loop: Replay,
    annotated: Sequence[Item],
    held_out: Sequence[Item],
    *,
    tasks: int,
    min_tasks: int = MIN_TASKS,
    grid_size: int = GRID_SIZE,
    modes: Sequence[str] = (),
) -> dict[str, Any]:
    """Tune on the last `tasks` of `annotated` (leave-one-out; `modes`: other assignment modes
    competing per class, `gfsam.calibrate.tune`), measure on `held_out`."""
    recent = list(annotated)[-tasks:][::-1]  # most recent first, as the worker takes them
    cases = [c for c in (_case(loop, i, loop.left_out(i)) for i in recent) if c is not None]
    tuning = tune(cases, min_tasks=min_tasks, grid_size=grid_size, modes=modes)
    found = [_case(loop, i, _current(loop, i)) for i in held_out]
    rest = [remember_default(c) for c in found if c is not None]
    default: dict[str, Counts] = {}
    calibrated: dict[str, Counts] = {}
    outs: list[Outcome] = []
    observed: dict[str, list[float]] = {}
    for case in rest:
        asg0 = case.assign_at(case.defaults)
        for label, offs in observed_offsets(asg0, case.defaults).items():
            observed.setdefault(label, []).extend(offs)
        base = outcome(case, asg0)
        tuned = outcome(
            case,
            assign_chosen(case, tuning.choices),
            features_at=chosen_thresholds(case, tuning.choices),
        )
        for label in case.defaults:
            default[label] = default.get(label, Counts()) + base.counts[label]
            calibrated[label] = calibrated.get(label, Counts()) + tuned.counts[label]
        outs.append(tuned)
    grids = {label: offset_grid(v, grid_size) for label, v in observed.items()}
    hindsight = sum_sweeps(sweep_task(case, grids, modes) for case in rest)
    offsets_only: Sweep = {
        label: {k: c for k, c in sw.items() if not isinstance(k, str)}
        for label, sw in hindsight.items()
    }
    best = {label: sw[choose_offset(sw, min_tasks=0).setting] for label, sw in offsets_only.items()}
    evidenced = {
        label: sw[
            choose_offset(allowed_settings(sw, tuning.default.get(label), min_tasks), 0).setting
        ]
        for label, sw in offsets_only.items()
    }
    best_any = {
        label: sw[choose_offset(sw, min_tasks=0).setting] for label, sw in hindsight.items()
    }
    present = sorted(label for label, c in default.items() if c.n > 0)
    posted = [tuning.score_map(o.estimate) for o in outs]
    return {
        "annotated": len(annotated),
        "held_out": len(rest),
        "tuned_on": len(cases),
        "classes": present,
        "default_miou": _miou(default, present),
        "calibrated_miou": _miou(calibrated, present),
        "best_fixed_miou": _miou(best, present),
        "best_fixed_modes_miou": _miou(best_any, present),
        "best_fixed_evidenced_miou": _miou(evidenced, present),
        "score_iou_spearman": spearman(posted, [o.iou for o in outs]),
        "score_iou_spearman_ceiling": spearman_ceiling(  # tied: no trace (nothing painted or near)
            [o.iou for o in outs],
            [o.features["n_painted"] == 0 and o.estimate.work <= 0.0 for o in outs],
        ),
        "low20_correction_share": low20_correction_share(posted, [o.corrections for o in outs]),
        "score_map_fitted": tuning.score_map.fitted,
        "held_out_tasks": [  # per task, for studying what ranks tasks (`gfsam.taskscore`)
            _task_row(o) | {"posted": round(p, 5)} | {k: round(v, 5) for k, v in o.features.items()}
            for o, p in zip(outs, posted, strict=True)
        ],
        "tuning_tasks": [_task_row(o) for o in tuning.outcomes.values()],  # what the map saw
        "choices": {label: ch.summary() for label, ch in sorted(tuning.choices.items())},
        "held_out_tuning": {
            label: {"default": tuning.default[label].summary(), "tuned": c.summary()}
            for label, c in sorted(tuning.held_out.items())
        },
    }


def summarise(steps: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean over checkpoints of each figure (checkpoints where it is defined)."""

    def mean(key: str) -> float | None:
        vals = [s[key] for s in steps if s.get(key) is not None]
        return round(float(np.mean(vals)), 4) if vals else None

    keys = (
        "default_miou",
        "calibrated_miou",
        "best_fixed_miou",
        "best_fixed_modes_miou",
        "best_fixed_evidenced_miou",
        "score_iou_spearman",
        "score_iou_spearman_ceiling",
        "low20_correction_share",
    )
    return {k: mean(k) for k in keys} | {"checkpoints": len(steps)}
