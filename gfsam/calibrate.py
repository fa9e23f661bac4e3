"""A project measures and tunes itself on its own annotations (issue 19): pure functions.

Every human annotation is a ground truth. Scoring a task with references that include a shot
taken from that very task would measure memory, not quality, so references are **left out per
task** (`loo_references`: each label's shots minus those of the scored task; a label left with
no shot is not predicted there). What is measured per label (`Counts`, pixels at the original
size, ignore excluded):

- ``iou`` = tp / (tp + fp + fn), ``precision`` = tp / (tp + fp), ``recall`` = tp / (tp + fn),
  accumulated over the scored tasks (a pixel-weighted IoU, as `gfsam.eval.report.IoUMeter`);
- ``false_paint``: the share of scored tasks WITHOUT the label on which it painted at least one
  pixel (the project protocol's definition, `gfsam.eval.project`);
- ``n``: scored tasks that hold the label (the evidence), ``tasks``: all scored tasks.

**Threshold tuning.** The assignment's per-label threshold (higher = stricter) has a default
computed from the label's shots (`gfsam.assign.calibrate_threshold`); its absolute scale is
that function's business, so tuning works on an **offset** added to whatever the default is:

1. `offset_grid`: the candidates are 0 (the default) and quantiles of the offsets at which the
   label's own proposals would flip (their similarity minus the default, observed on the
   scored tasks): every candidate is a decision boundary the data shows, none is a hard-coded
   scale;
2. each scored task is assigned once per candidate (`Sweep`: label -> offset -> `Counts`);
3. `choose_offset`: with at least ``min_tasks`` scored tasks holding the label (default 3), the
   offset of the highest summed IoU (ties: the one nearest 0, so the default wins a tie);
   otherwise 0, and the choice says why. A setting that may paint more than the default (a
   lower offset, another mode) competes only when as many scored tasks LACK the label: on
   tasks that all hold it, painting more is almost free (`choose_offset`, ``unchecked``);
4. `held_out_choice`: the honest estimate of what tuning gives: each task is scored at the
   offset chosen on the OTHER tasks (a nested leave-one-out, asking the same evidence less
   the task left out), so tuning never runs on the task it is scored on; `tune` keeps a move
   only when this estimate beats the default (tried 2026-12-04 on coco128's tune half, oracle
   replay: keeping moves whose estimate only ties the default gave calibrated mIoU 62.43 ->
   63.27 with the easy knobs but 38.59 -> 38.46 with the harsh ones, one checkpoint below its
   default: not kept).

**Mode tuning.** The assignment mode (``split``, ``label-gate``, ``argmax``: `gfsam.assign`) is
the project's setting; with `tune(modes=...)` each other mode, at its default threshold, is one
more candidate of the same sweep (a `Setting` is an offset in the project's mode, a float, or
the name of another mode, a str), chosen by the same rule and confirmed by the same nested
leave-one-out: a label changes mode only when that measures better on tasks it was not chosen
on. Ties go to the project's mode (an offset), so evidence is needed to switch. A task with
labels in several modes is assigned by `gfsam.assign.assign_mixed`.

**Scores.** `fit_score_map` fits, on held-out (task estimate, task IoU) pairs
(`gfsam.taskscore.task_estimate`: expected IoU, expected share of the image to correct), the
map from what a prediction's assignment says to the IoU a person will accept: isotonic
regression (`scipy.optimize.isotonic_regression`, pool adjacent violators) of the IoU on the
raw value ``iou x (1 - work)``, linear between its blocks, clipped at both ends, blended with
``TIE_BREAK`` x raw so that two different raw values never post the same score (isotonic
blocks are flat; Label Studio sorts by the posted value). `spearman` and
`low20_correction_share` say whether the score orders tasks by their IoU and by the work they
need.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import numpy as np

from gfsam.taskscore import TaskEstimate, task_estimate, task_features

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")

MIN_TASKS = 3  # tasks holding a label before its threshold may move from the default
GRID_SIZE = 7  # candidate offsets per label, 0 included
# Each candidate sits this far below the observed value it was taken at, so that the proposal
# there is accepted although ``default + (similarity - default)`` may round one unit above
# ``similarity``; in practice no two similarities differ by so little.
BOUNDARY_SLACK = 1e-9
# posted score = (1 - TIE_BREAK) x calibrated IoU + TIE_BREAK x raw: strictly monotone and in
# [0, 1] without clipping (a clipped sum posted 1.0 for every task of a map fitted on IoU 1 only)
TIE_BREAK = 1e-3
# The raw value a score map is fitted on (`ScoreMap.raw`); a stored map of another form is not
# applied. 1: 1 - the image share expected wrong (before 2026-12-05); 2: expected IoU x (1 -
# expected work), chosen on coco128's tune half (see `gfsam.taskscore.task_estimate`).
SCORE_FORM = 2


def loo_references(shots: Mapping[str, Sequence[tuple[K, R]]], task: K) -> dict[str, list[R]]:
    """Each label's references without the shots taken from `task`.

    Args:
        shots: label -> its shots as (the task they were taken from, reference), in order.
        task: the task about to be scored.

    Returns:
        label -> references (order kept); a label whose only shots came from `task` is absent.
    """
    out: dict[str, list[R]] = {}
    for label, pairs in shots.items():
        kept = [ref for owner, ref in pairs if owner != task]
        if kept:
            out[label] = kept
    return out


@dataclass
class Counts:
    """Pixel and task counts of one label over scored tasks (see the module docstring)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    n: int = 0  # scored tasks holding the label
    tasks: int = 0  # scored tasks
    painted_absent: int = 0  # scored tasks without the label where it painted something

    def add(self, pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Add one task: `pred` and `truth` bool [H, W]; `valid` bool [H, W] pixels that count."""
        pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
        if valid is not None:
            pred, truth = pred & valid, truth & valid
        self.tp += int(np.count_nonzero(pred & truth))
        self.fp += int(np.count_nonzero(pred & ~truth))
        self.fn += int(np.count_nonzero(~pred & truth))
        self.tasks += 1
        if truth.any():
            self.n += 1
        elif pred.any():
            self.painted_absent += 1

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.tp + other.tp,
            self.fp + other.fp,
            self.fn + other.fn,
            self.n + other.n,
            self.tasks + other.tasks,
            self.painted_absent + other.painted_absent,
        )

    @property
    def iou(self) -> float | None:
        union = self.tp + self.fp + self.fn
        return self.tp / union if union else None

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    @property
    def false_paint(self) -> float | None:
        absent = self.tasks - self.n
        return self.painted_absent / absent if absent else None

    def summary(self) -> dict[str, Any]:
        """JSON-ready: n, tasks, iou, precision, recall, false_paint (None where undefined)."""

        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 4)

        return {
            "n": self.n,
            "tasks": self.tasks,
            "iou": r(self.iou),
            "precision": r(self.precision),
            "recall": r(self.recall),
            "false_paint": r(self.false_paint),
        }


def total(counts: Iterable[Counts]) -> Counts:
    out = Counts()
    for c in counts:
        out = out + c
    return out


def offset_grid(observed: Sequence[float], size: int = GRID_SIZE) -> list[float]:
    """Candidate offsets for one label: 0 and ``size - 1`` quantiles of `observed`.

    Args:
        observed: similarity minus default threshold of the label's proposals on the scored
            tasks (an offset o accepts a proposal iff its value >= o).
        size: at most this many candidates (duplicates collapse).

    Returns:
        Sorted distinct offsets, 0 always among them; each other one is an observed value less
        `BOUNDARY_SLACK`, so it sits on a decision boundary of the data's presence test (the
        proposal there accepted, none below it), whatever the rounding of default + offset.
    """
    values = np.asarray([v for v in observed if math.isfinite(v)], dtype=np.float64)
    picks = {0.0}
    if values.size and size > 1:
        qs = np.quantile(values, np.linspace(0.0, 1.0, size - 1), method="inverted_cdf")
        picks |= {float(q) - BOUNDARY_SLACK for q in qs}
    return sorted(picks)


# A candidate setting of one label: an offset (float) added to its default threshold in the
# project's mode, or the name (str) of another assignment mode at its default threshold.
Setting = float | str

# label -> setting -> Counts: one task's (or many tasks') counts at every candidate setting
Sweep = dict[str, dict[Setting, Counts]]


def setting_name(s: Setting) -> str:
    """A setting as text: an offset signed with 6 decimals ("+0.012500"), a mode by its name."""
    return s if isinstance(s, str) else f"{float(s):+.6f}"


def _setting_order(s: Setting) -> tuple[int, float, str]:
    """Offsets ascending, then mode names (a total order over mixed keys)."""
    return (1, 0.0, s) if isinstance(s, str) else (0, float(s), "")


@dataclass
class Choice:
    """The threshold offset chosen for one label, with its evidence.

    Attributes:
        offset: added to the default threshold (0: the default; 0 with a `mode`).
        mode: another assignment mode chosen for the label (None: the project's mode).
        how: ``tuned`` (the highest held-out IoU), ``default`` (the default was best or tied),
            ``too-few`` (fewer than ``min_tasks`` tasks hold the label), ``unconfirmed`` (`tune`:
            the best offset on all tasks did not beat the default when each task was scored at
            the offset chosen on the others, so the default stays), ``unchecked`` (the best
            setting paints more than the default, and too few scored tasks lack the label to
            see what it paints there: `choose_offset`'s ``min_absent``).
        n: scored tasks holding the label. iou_default / iou_chosen: summed IoU at offset 0 and
            at the chosen offset over the tasks it was chosen on (None: undefined).
        candidates: the offsets tried (other modes tried: `modes_tried`).
        ious: each setting tried (`setting_name`) -> its IoU over the tasks it was chosen on
            (the evidence; None: undefined).
    """

    offset: float
    how: str
    n: int
    iou_default: float | None
    iou_chosen: float | None
    candidates: list[float] = field(default_factory=list)
    mode: str | None = None
    modes_tried: list[str] = field(default_factory=list)
    ious: dict[str, float | None] = field(default_factory=dict)

    @property
    def setting(self) -> Setting:
        """The sweep key of this choice."""
        return self.mode if self.mode is not None else self.offset

    def summary(self) -> dict[str, Any]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 4)

        return {
            "offset": self.offset,
            "mode": self.mode,
            "how": self.how,
            "n": self.n,
            "iou_default": r(self.iou_default),
            "iou_chosen": r(self.iou_chosen),
            "candidates": [round(c, 6) for c in self.candidates],
            "modes_tried": list(self.modes_tried),
            "ious": {k: r(v) for k, v in self.ious.items()},
        }


def is_stricter(s: Setting) -> bool:
    """Whether a setting can only paint less than the default: a positive offset (another mode
    or a negative offset may paint more, where the label is absent too)."""
    return not isinstance(s, str) and s >= 0.0


def evidence_allows(
    evidence: Counts, setting: Setting, min_tasks: int = MIN_TASKS, min_absent: int | None = None
) -> bool:
    """Whether the evidence rule lets `setting` be chosen on tasks whose counts at the default
    are `evidence`: below `min_tasks` tasks holding the label only the default; a setting that
    may paint more than the default (`is_stricter` False) only with at least `min_absent`
    (None: `min_tasks`) tasks without the label (`choose_offset`)."""
    if evidence.n < min_tasks:
        return is_stricter(setting) and setting == 0.0
    if is_stricter(setting):
        return True
    return evidence.tasks - evidence.n >= (min_tasks if min_absent is None else min_absent)


def choose_offset(
    sweep: Mapping[Setting, Counts], min_tasks: int = MIN_TASKS, min_absent: int | None = None
) -> Choice:
    """The setting of the highest IoU over the tasks in `sweep` (one label).

    Args:
        sweep: setting (offset, or another mode's name) -> counts summed over the tasks tuned
            on; must hold offset 0.
        min_tasks: below this many tasks holding the label, keep the default.
        min_absent: a setting that may paint more than the default (`is_stricter` False)
            competes only with at least this many tasks WITHOUT the label among them (None:
            `min_tasks`). On tasks that all hold the label, painting more costs only the
            pixels around the object and gains its missed parts, so a looser setting wins
            there even when it paints every image where the label is absent: what it paints
            on such images is the evidence it needs (found 2026-12-04 on the FSS subset with
            the harsher oracle knobs: five annotated apples, none without, the threshold moved
            -0.24, painting every held-out basketball image; 62.31 -> 50.43 mIoU held out).

    Returns:
        `Choice` (ties go to an offset of the project's mode, the one nearest 0, then the
        stricter one: another mode must measure strictly better); ``how`` is ``unchecked``
        when the best setting overall was a looser one left out by `min_absent`.
    """
    if 0.0 not in sweep:
        raise ValueError("the sweep must include offset 0 (the default threshold)")
    base = sweep[0.0]
    n = base.n
    offs = sorted(float(o) for o in sweep if not isinstance(o, str))
    modes = sorted(o for o in sweep if isinstance(o, str))
    ious = {setting_name(o): sweep[o].iou for o in sorted(sweep, key=_setting_order)}
    if n < min_tasks:
        return Choice(0.0, "too-few", n, base.iou, base.iou, offs, None, modes, ious)

    def key(o: Setting) -> tuple[float, int, float, float]:
        iou = sweep[o].iou
        score = -1.0 if iou is None else iou
        if isinstance(o, str):
            return (score, 0, -math.inf, 0.0)
        return (score, 1, -abs(o), o)

    ordered = sorted(sweep, key=_setting_order)
    allowed = [o for o in ordered if evidence_allows(base, o, min_tasks, min_absent)]
    best = max(allowed, key=key)
    if best == 0.0 and not isinstance(best, str):
        how = "unchecked" if max(ordered, key=key) not in allowed else "default"
    else:
        how = "tuned"
    if isinstance(best, str):
        return Choice(0.0, how, n, base.iou, sweep[best].iou, offs, best, modes, ious)
    return Choice(float(best), how, n, base.iou, sweep[best].iou, offs, None, modes, ious)


def sum_sweeps(sweeps: Iterable[Sweep]) -> Sweep:
    """Label -> offset -> counts summed over tasks (offsets missing from a task count 0)."""
    out: Sweep = {}
    for sw in sweeps:
        for label, by_off in sw.items():
            mine = out.setdefault(label, {})
            for off, c in by_off.items():
                mine[off] = mine.get(off, Counts()) + c
    return out


def choose_offsets(
    sweeps: Iterable[Sweep], min_tasks: int = MIN_TASKS, min_absent: int | None = None
) -> dict[str, Choice]:
    """`choose_offset` per label on the summed sweeps of the given tasks."""
    return {
        label: choose_offset(s, min_tasks, min_absent) for label, s in sum_sweeps(sweeps).items()
    }


def held_out_choice(
    sweeps: Mapping[K, Sweep], min_tasks: int = MIN_TASKS, min_absent: int | None = None
) -> tuple[dict[str, Counts], dict[str, Counts]]:
    """What tuning gives, measured without ever tuning on the scored task.

    Each task is scored at the setting chosen (`choose_offset`) on the other tasks alone. The
    choice on the others asks the evidence the whole set was asked, less the task left out:
    ``min_tasks - 1`` tasks holding the label when the scored task holds it, ``min_tasks - 1``
    tasks without it (`choose_offset`'s ``min_absent``) when it lacks it. Asking the full bar of
    one task fewer would make every move chosen on exactly ``min_tasks`` tasks unconfirmable
    (each nested choice would keep the default), so `tune` could never move a label at the
    evidence the rule names (found 2026-12-05 by reading why a label with 3 tasks did not
    move on coco128 report with the harsh oracle knobs; that move was also held by
    ``min_absent``, so no replay figure changed).

    Args:
        sweeps: task -> its sweep (every task swept over the same candidate offsets).
        min_tasks, min_absent: the bar of the whole set (`choose_offset`).

    Returns:
        (default, tuned): label -> counts over all tasks at offset 0 / at the held-out choice.
    """
    absent_bar = min_tasks if min_absent is None else min_absent
    default: dict[str, Counts] = {}
    tuned: dict[str, Counts] = {}
    for task, sw in sweeps.items():
        others = sum_sweeps(s for t, s in sweeps.items() if t != task)
        for label, by_off in sw.items():
            default[label] = default.get(label, Counts()) + by_off[0.0]
            holds = by_off[0.0].n > 0
            off: Setting = 0.0
            if label in others:
                choice = choose_offset(
                    others[label],
                    min_tasks - 1 if holds else min_tasks,
                    absent_bar if holds else absent_bar - 1,
                )
                off = choice.setting if choice.setting in by_off else 0.0
            tuned[label] = tuned.get(label, Counts()) + by_off[off]
    return default, tuned


def task_iou(shown: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> float:
    """One task's IoU over its labels: pixels painted with their true label over the pixels
    painted or labelled; 1.0 when neither paints anything.

    Args:
        shown, truth: int [H, W] label maps (0: nothing). valid: bool [H, W] pixels that count.
    """
    fg = (shown != 0) | (truth != 0)
    good = (shown == truth) & (truth != 0)
    if valid is not None:
        fg, good = fg & valid, good & valid
    union = int(np.count_nonzero(fg))
    return int(np.count_nonzero(good)) / union if union else 1.0


def correction_pixels(shown: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> int:
    """Pixels a person changes to turn `shown` into `truth` (int [H, W] label maps)."""
    diff = shown != truth
    if valid is not None:
        diff &= valid
    return int(np.count_nonzero(diff))


@dataclass(frozen=True)
class ScoreMap:
    """The project's map from a task's estimate (`gfsam.taskscore.TaskEstimate`) to the posted
    score, an expected IoU (`fit_score_map`); unfitted: the raw value itself.

    The raw value is the expected IoU discounted by the expected share of the image to
    correct, ``iou x (1 - work)`` (`raw`): ordered by IoU, and of two tasks alike in IoU the one
    with more pixels to fix first. The map is the isotonic fit of the IoU measured on held-out
    tasks against their raw values, so what is posted is the IoU tasks of that raw value
    reached; its order stays the raw value's.

    Attributes:
        x, y: knots (raw value ascending, fitted IoU non-decreasing); empty: unfitted.
        n: pairs it was fitted on.
    """

    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()
    n: int = 0

    @property
    def fitted(self) -> bool:
        return bool(self.x)

    @staticmethod
    def raw(est: TaskEstimate) -> float:
        """The value the map is fitted on: expected IoU x (1 - expected work), in [0, 1]."""
        return float(np.clip(est.iou, 0.0, 1.0)) * (1.0 - float(np.clip(est.work, 0.0, 1.0)))

    def __call__(self, est: TaskEstimate) -> float:
        """The score posted for `est`."""
        return self.post(self.raw(est))

    def post(self, raw: float) -> float:
        """The score posted for a raw value (unfitted: the raw value)."""
        if not self.fitted:
            return raw
        fitted = float(np.interp(raw, self.x, self.y))
        return (1.0 - TIE_BREAK) * fitted + TIE_BREAK * raw  # both in [0, 1]: no clipping

    def to_json(self) -> dict[str, Any]:
        return {"x": list(self.x), "y": list(self.y), "n": self.n, "form": SCORE_FORM}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ScoreMap:
        """From `to_json`'s dict; one of another ``form`` (knots over another raw value: before
        2026-12-05, 1 - the image share expected wrong, no ``form``) is not applied: unfitted
        until the project is measured again."""
        if int(data.get("form", 1)) != SCORE_FORM:
            return cls(n=int(data.get("n", 0)))
        return cls(tuple(map(float, data["x"])), tuple(map(float, data["y"])), int(data["n"]))


def fit_score_map(
    estimates: Sequence[TaskEstimate], iou: Sequence[float], min_points: int = MIN_TASKS
) -> ScoreMap:
    """Fit `ScoreMap` on held-out (estimate, task IoU) pairs (both [N]); fewer than
    `min_points` pairs: unfitted.

    Equal raw values (`ScoreMap.raw`) are pooled first (mean IoU, weighted by their count),
    then fitted by isotonic regression; the knots are the distinct raw values with their
    fitted IoU, evaluated linearly in between.
    """
    from scipy.optimize import isotonic_regression

    if len(estimates) != len(iou):
        raise ValueError(f"estimates and iou differ in length: {len(estimates)} vs {len(iou)}")
    if len(estimates) < min_points:
        return ScoreMap(n=len(estimates))
    raw = np.asarray([ScoreMap.raw(e) for e in estimates], dtype=np.float64)
    xs, inverse = np.unique(raw, return_inverse=True)
    weights = np.bincount(inverse).astype(np.float64)
    means = np.bincount(inverse, weights=np.asarray(iou, dtype=np.float64)) / weights
    fitted = isotonic_regression(means, weights=weights, increasing=True).x
    return ScoreMap(tuple(map(float, xs)), tuple(map(float, fitted)), len(estimates))


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman rank correlation (ties averaged); None below 3 pairs or for a constant side."""
    from scipy.stats import spearmanr

    if len(a) != len(b):
        raise ValueError(f"lengths differ: {len(a)} vs {len(b)}")
    if len(a) < 3 or np.ptp(np.asarray(a, float)) == 0 or np.ptp(np.asarray(b, float)) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def spearman_ceiling(ious: Sequence[float], tied: Sequence[bool]) -> float | None:
    """The highest `spearman` against `ious` that a score can reach when it must give every
    `tied` task the same value: perfect on the other tasks (it is their IoU), the tied group
    put wherever it scores best.

    Why (issue 19): a task on which the assignment left no trace (nothing painted, no near
    miss: expected IoU 1, no work) is either truly empty (IoU 1) or a complete miss (IoU 0),
    and a score computed from the assignment has nothing to tell the two apart; this is how
    high any such score can rank tasks, so that a figure below a target can be read as the
    score's fault or as the assignment's misses.

    Args:
        ious: per task IoU. tied: per task, True when the score cannot tell it from the others
            so marked.

    Returns:
        The ceiling; None where `spearman` is None for every placement (e.g. below 3 tasks).
    """
    iou = np.asarray(ious, dtype=np.float64)
    same = np.asarray(tied, dtype=bool)
    if iou.shape != same.shape:
        raise ValueError(f"lengths differ: {iou.shape} vs {same.shape}")
    levels = np.unique(iou[~same])  # (L,) the other tasks' scores, ascending
    if not same.any():
        return spearman(list(iou), list(iou))
    # the tied value below, at, between and above every other score: all distinct orders
    mids = (levels[:-1] + levels[1:]) / 2
    places = (
        np.concatenate([levels, mids, [levels[0] - 1.0, levels[-1] + 1.0]])
        if len(levels)
        else [0.0]
    )
    best: float | None = None
    for c in places:
        score = np.where(same, c, iou)
        value = spearman(list(score), list(iou))
        if value is not None and (best is None or value > best):
            best = value
    return best


def low20_correction_share(
    scores: Sequence[float], corrections: Sequence[float], share: float = 0.2
) -> float | None:
    """Share of all pixels to correct held by the `share` of tasks with the lowest score.

    Exactly ``share x N`` tasks are taken, the last one in part (N = 6, share 0.2: the lowest
    task and 0.2 of the next), and tasks of equal score count as in a random order among them
    (each holds the block's average part), so any order a score cannot tell apart gives
    `share` in expectation; a perfect one, the most it can. None when nothing needs correcting.
    """
    if len(scores) != len(corrections):
        raise ValueError(f"lengths differ: {len(scores)} vs {len(corrections)}")
    work = np.asarray(corrections, dtype=np.float64)
    if not len(work) or work.sum() <= 0:
        return None
    cutoff = share * len(work)  # positions [0, cutoff) are taken, the last one in part
    ordered = np.asarray(scores, dtype=np.float64)
    ordered = np.where(np.isnan(ordered), np.inf, ordered)  # no score: taken last
    taken = 0.0
    start = 0
    for value in np.unique(ordered):  # ascending; each value one block of tied tasks
        block = ordered == value
        size = int(block.sum())
        covered = float(np.clip(cutoff - start, 0.0, size))  # positions of the block taken
        taken += covered / size * float(work[block].sum())
        start += size
    return taken / float(work.sum())


# --- tuning a set of scored tasks (the harness's replay and the worker's background job) -----


class _Assigned(Protocol):
    """What `tune` reads of an assignment (`gfsam.assign.Assignment`)."""

    @property
    def accepted(self) -> Mapping[str, Sequence[Any]]: ...

    @property
    def candidates(self) -> Sequence[Any]: ...

    def label_masks(self) -> dict[str, np.ndarray]: ...


@dataclass
class TaskCase:
    """One scored task: how to assign it at given thresholds, and its truth.

    Attributes:
        key: the task (never scored with its own shots: the caller built `assign_at` on
            `loo_references`).
        assign_at: thresholds (label -> value, higher = stricter) and, only when `tune` is
            given other modes, ``modes`` (label -> mode; absent labels: the project's) -> the
            assignment of the task's predictions under them (`gfsam.assign.assign_split` /
            `assign_mixed` or the worker's `assign`); called 1 + len(grid) + len(modes) + 1
            times.
        defaults: label -> the default threshold for the references used (the labels scored).
        truth: label -> bool [H, W] the annotator's mask (every label of `defaults`).
        valid: bool [H, W] pixels that count, or None.
    """

    key: Hashable
    assign_at: Callable[..., _Assigned]
    defaults: dict[str, float]
    truth: dict[str, np.ndarray]
    valid: np.ndarray | None = None


@dataclass
class Outcome:
    """One task assigned at some thresholds: per-label counts, estimate (what its score is
    made of), IoU, corrections."""

    counts: dict[str, Counts]
    estimate: TaskEstimate
    iou: float
    corrections: int
    features: dict[str, float] = field(default_factory=dict)  # `gfsam.taskscore.task_features`


def observed_offsets(asg: _Assigned, defaults: Mapping[str, float]) -> dict[str, list[float]]:
    """label -> similarity minus default of every proposal the assignment judged for it
    (accepted and rejected alike; NaN similarities, as argmax gives, are left out)."""
    out: dict[str, list[float]] = {label: [] for label in defaults}
    insts = [i for group in asg.accepted.values() for i in group] + list(asg.candidates)
    for inst in insts:
        sim = float(getattr(inst, "similarity", float("nan")))
        if inst.label in out and math.isfinite(sim):
            out[inst.label].append(sim - defaults[inst.label])
    return out


def _label_map(
    masks: Mapping[str, np.ndarray], order: Sequence[str], shape: tuple[int, ...]
) -> np.ndarray:
    out = np.zeros(shape, dtype=np.int32)
    for k, label in enumerate(order, start=1):
        m = masks.get(label)
        if m is not None:
            out[np.asarray(m, dtype=bool)] = k
    return out


def label_counts(case: TaskCase, asg: _Assigned) -> dict[str, Counts]:
    """Per-label counts of one assignment of `case` against its truth (all a sweep needs)."""
    masks = asg.label_masks()
    shape = next(iter(case.truth.values())).shape
    counts: dict[str, Counts] = {}
    for label in sorted(case.defaults):
        c = Counts()
        c.add(masks.get(label, np.zeros(shape, dtype=bool)), case.truth[label], case.valid)
        counts[label] = c
    return counts


def outcome(
    case: TaskCase, asg: _Assigned, *, features_at: Mapping[str, float] | None = None
) -> Outcome:
    """Score one assignment of `case` against its truth; `features_at`: the thresholds `asg`
    was assigned at, to also record `gfsam.taskscore.task_features` against them (for
    studying what ranks tasks; not needed to tune)."""
    order = sorted(case.defaults)
    masks = asg.label_masks()
    shape = next(iter(case.truth.values())).shape
    accepted = [i for group in asg.accepted.values() for i in group]
    est = task_estimate([(i.mask, float(i.score)) for i in accepted], shape, asg.candidates)
    shown, truth = _label_map(masks, order, shape), _label_map(case.truth, order, shape)
    return Outcome(
        label_counts(case, asg),
        est,
        task_iou(shown, truth, case.valid),
        correction_pixels(shown, truth, case.valid),
        task_features(accepted, list(asg.candidates), features_at, shape)
        if features_at is not None
        else {},
    )


def thresholds_at(defaults: Mapping[str, float], offsets: Mapping[str, float]) -> dict[str, float]:
    """label -> default + its offset (0 for a label without one)."""
    return {label: d + float(offsets.get(label, 0.0)) for label, d in defaults.items()}


def sweep_steps(grids: Mapping[str, Sequence[float]]) -> list[dict[str, float]]:
    """The joint steps of a sweep: the all-default step first, then step g puts every label at
    its g-th candidate (its last one when its grid is shorter); identical steps once. A label's
    counts at each of its offsets then come from at most max(len(grid)) + 1 assignments, not
    their product; its IoU depends on the others' offsets only through pixel exclusivity
    (second order)."""
    steps: list[dict[str, float]] = [{lb: 0.0 for lb in grids}]
    for g in range(max((len(v) for v in grids.values()), default=0)):
        step = {lb: float(v[min(g, len(v) - 1)]) for lb, v in grids.items() if v}
        if step not in steps:
            steps.append(step)
    return steps


def sweep_task(
    case: TaskCase, grids: Mapping[str, Sequence[float]], modes: Sequence[str] = ()
) -> Sweep:
    """Assign `case` once per `sweep_steps` step, then once per other mode (every label in
    it, at the default thresholds); label -> setting -> its counts."""
    out: Sweep = {label: {} for label in case.defaults}
    for offs in sweep_steps({lb: g for lb, g in grids.items() if lb in case.defaults}):
        res = label_counts(case, case.assign_at(thresholds_at(case.defaults, offs)))
        for label, c in res.items():
            out[label].setdefault(float(offs.get(label, 0.0)), c)
    for mode in modes:
        res = label_counts(case, case.assign_at(case.defaults, {lb: mode for lb in case.defaults}))
        for label, c in res.items():
            out[label][mode] = c
    return out


def chosen_thresholds(case: TaskCase, choices: Mapping[str, Choice]) -> dict[str, float]:
    """label -> the threshold the chosen settings give `case` (its default plus the offset)."""
    return thresholds_at(case.defaults, {lb: ch.offset for lb, ch in choices.items()})


def assign_chosen(case: TaskCase, choices: Mapping[str, Choice]) -> _Assigned:
    """`case` assigned at the chosen settings (modes passed only when some label has one)."""
    thresholds = chosen_thresholds(case, choices)
    modes = {lb: ch.mode for lb, ch in choices.items() if ch.mode and lb in case.defaults}
    return case.assign_at(thresholds, modes) if modes else case.assign_at(thresholds)


def remember_default(case: TaskCase) -> TaskCase:
    """`case` whose assignment at its default thresholds is computed once (the first pass, the
    sweep's all-default step and an all-default choice ask for it)."""
    cached: list[_Assigned] = []
    inner = case.assign_at

    def assign_at(thresholds: Mapping[str, float], *modes: Mapping[str, str]) -> _Assigned:
        if dict(thresholds) != case.defaults or any(modes):
            return inner(thresholds, *modes)
        if not cached:
            cached.append(inner(thresholds))
        return cached[0]

    return TaskCase(case.key, assign_at, case.defaults, case.truth, case.valid)


@dataclass
class Tuning:
    """What `tune` found on a set of scored tasks.

    Attributes:
        choices: label -> `Choice` on all the tasks (what later predictions use).
        default, held_out: label -> counts at the default thresholds / at the offsets chosen on
            the other tasks only (`held_out_choice`).
        score_map: task estimate -> posted score, fitted on the tasks at the chosen offsets.
        outcomes: task -> its `Outcome` at the chosen offsets.
        grids: label -> candidate offsets.
    """

    choices: dict[str, Choice]
    default: dict[str, Counts]
    held_out: dict[str, Counts]
    score_map: ScoreMap
    outcomes: dict[Hashable, Outcome]
    grids: dict[str, list[float]]

    def offsets(self) -> dict[str, float]:
        return {label: ch.offset for label, ch in self.choices.items()}

    def modes(self) -> dict[str, str]:
        """label -> the other mode chosen for it (labels keeping the project's are absent)."""
        return {label: ch.mode for label, ch in self.choices.items() if ch.mode}


def tune(
    cases: Sequence[TaskCase],
    min_tasks: int = MIN_TASKS,
    grid_size: int = GRID_SIZE,
    modes: Sequence[str] = (),
    min_absent: int | None = None,
) -> Tuning:
    """Measure, choose thresholds and fit the score map on `cases` (each already leave-one-out).

    1. every task at the default thresholds: the proposals' offsets give each label's grid
       (`offset_grid`); 2. every task swept over the grids; 3. per label the offset of the best
       summed IoU (`choose_offset`; each of `modes`, other assignment modes at their default
       threshold, is one more candidate), and the nested leave-one-out estimate
       (`held_out_choice`);
       a move that estimate does not confirm (tuned IoU <= default IoU) is dropped
       (``unconfirmed``); 4. every task at the chosen offsets: (estimate, task IoU) pairs ->
       `fit_score_map`.
    """
    cases = [remember_default(c) for c in cases]
    observed: dict[str, list[float]] = {}
    for case in cases:
        for label, offs in observed_offsets(case.assign_at(case.defaults), case.defaults).items():
            observed.setdefault(label, []).extend(offs)
    grids = {label: offset_grid(v, grid_size) for label, v in observed.items()}
    sweeps = {case.key: sweep_task(case, grids, modes) for case in cases}
    choices = choose_offsets(sweeps.values(), min_tasks, min_absent)
    default, held = held_out_choice(sweeps, min_tasks, min_absent)
    for label, ch in choices.items():  # a move must also pay off held out (nested LOO)
        base, kept = default[label].iou, held[label].iou
        if ch.how == "tuned" and (base is None or kept is None or kept <= base):
            choices[label] = replace(
                ch, offset=0.0, how="unconfirmed", iou_chosen=ch.iou_default, mode=None
            )
    outcomes = {case.key: outcome(case, assign_chosen(case, choices)) for case in cases}
    score_map = fit_score_map(
        [o.estimate for o in outcomes.values()], [o.iou for o in outcomes.values()], min_tasks
    )
    return Tuning(choices, default, held, score_map, outcomes, grids)
