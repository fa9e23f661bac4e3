"""gfsam.calibrate on hand-checkable cases: leave-one-out, metrics, threshold choice, scores."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import pytest

from backend.state.schemas import ScoreCalibration
from gfsam.calibrate import (
    BOUNDARY_SLACK,
    SCORE_FORM,
    TIE_BREAK,
    Counts,
    ScoreMap,
    Sweep,
    TaskCase,
    choose_offset,
    correction_pixels,
    fit_score_map,
    held_out_choice,
    loo_references,
    low20_correction_share,
    offset_grid,
    spearman,
    spearman_ceiling,
    sum_sweeps,
    sweep_steps,
    task_iou,
    thresholds_at,
)
from gfsam.taskscore import TaskEstimate


def test_loo_drops_only_the_scored_tasks_shots() -> None:
    shots = {"cat": [(1, "c1"), (2, "c2")], "dog": [(2, "d2")], "cow": [(3, "w3"), (1, "w1")]}
    assert loo_references(shots, 2) == {"cat": ["c1"], "cow": ["w3", "w1"]}
    assert loo_references(shots, 1) == {"cat": ["c2"], "dog": ["d2"], "cow": ["w3"]}
    assert loo_references(shots, 9) == {"cat": ["c1", "c2"], "dog": ["d2"], "cow": ["w3", "w1"]}


def test_loo_never_scores_a_task_with_itself() -> None:
    rng = np.random.default_rng(0)
    shots = {lb: [(int(t), (lb, int(t))) for t in rng.integers(0, 6, size=4)] for lb in "abc"}
    for task in range(6):
        refs = loo_references(shots, task)
        assert all(owner != task for label in refs for _, owner in refs[label])


def _mask(*cells: tuple[int, int]) -> np.ndarray:
    m = np.zeros((4, 4), dtype=bool)
    for y, x in cells:
        m[y, x] = True
    return m


def test_counts_metrics_by_hand() -> None:
    c = Counts()
    # task 1: truth 4 px, pred 3 px of which 2 right -> tp 2, fp 1, fn 2
    c.add(_mask((0, 0), (0, 1), (3, 3)), _mask((0, 0), (0, 1), (1, 0), (1, 1)))
    # task 2: label absent, painted 1 px -> fp 1, painted_absent
    c.add(_mask((2, 2)), _mask())
    # task 3: label absent, nothing painted
    c.add(_mask(), _mask())
    assert (c.tp, c.fp, c.fn, c.n, c.tasks, c.painted_absent) == (2, 2, 2, 1, 3, 1)
    assert c.iou == pytest.approx(2 / 6)
    assert c.precision == pytest.approx(2 / 4)
    assert c.recall == pytest.approx(2 / 4)
    assert c.false_paint == pytest.approx(1 / 2)
    assert Counts().iou is None and Counts().false_paint is None


def test_counts_respect_ignore_pixels() -> None:
    c = Counts()
    valid = ~_mask((0, 0))
    c.add(_mask((0, 0), (1, 1)), _mask((1, 1)), valid)
    assert (c.tp, c.fp, c.fn) == (1, 0, 0)


def test_task_iou_and_corrections() -> None:
    truth = np.array([[1, 1, 0], [2, 0, 0]])
    shown = np.array([[1, 2, 0], [0, 0, 3]])
    # good: 1 px (label 1); union: truth fg 3 px + shown-only px (2,2)=1 -> 4
    assert task_iou(shown, truth) == pytest.approx(1 / 4)
    assert correction_pixels(shown, truth) == 3
    assert task_iou(np.zeros((2, 2), int), np.zeros((2, 2), int)) == 1.0


def test_offset_grid_holds_zero_and_observed_values() -> None:
    observed = [-0.3, -0.1, 0.05, 0.2, 0.4]
    grid = offset_grid(observed, size=7)
    assert 0.0 in grid
    assert {round(g + BOUNDARY_SLACK, 12) for g in grid} - {BOUNDARY_SLACK} <= set(observed)
    assert grid == sorted(grid) and min(grid) < -0.3 and max(grid) == pytest.approx(0.4)
    assert offset_grid([]) == [0.0]
    assert len(offset_grid(list(np.linspace(-1, 1, 100)), size=5)) <= 5


def test_every_candidate_accepts_the_proposal_it_was_taken_at() -> None:
    """default + (similarity - default) can round above the similarity: the candidate must
    still accept that proposal (else the strictest one paints nothing)."""
    rng = np.random.default_rng(1)
    defaults, sims = rng.uniform(0.0, 0.2, 5000), rng.uniform(0.3, 1.0, 5000)
    rounded_up = sum(d + (s - d) > s for d, s in zip(defaults, sims, strict=True))
    assert rounded_up > 0  # the hazard exists in plain floats
    for d, s in zip(defaults, sims, strict=True):
        (top,) = [g for g in offset_grid([s - d], size=2) if g != 0.0] or [0.0]
        assert thresholds_at({"a": d}, {"a": top})["a"] <= s


def _c(tp: int, fp: int, fn: int, n: int = 3, absent: int = 3) -> Counts:
    """Counts over n tasks holding the label and `absent` tasks without it."""
    return Counts(tp=tp, fp=fp, fn=fn, n=n, tasks=n + absent)


def test_choice_takes_the_best_iou_and_keeps_the_default_on_ties() -> None:
    sweep = {-0.1: _c(8, 8, 0), 0.0: _c(6, 2, 2), 0.1: _c(7, 0, 1), 0.2: _c(4, 0, 4)}
    ch = choose_offset(sweep)
    assert ch.offset == 0.1 and ch.how == "tuned"
    assert ch.iou_default == pytest.approx(0.6) and ch.iou_chosen == pytest.approx(7 / 8)
    tie = {-0.1: _c(6, 2, 2), 0.0: _c(6, 2, 2), 0.1: _c(6, 2, 2)}
    assert choose_offset(tie).offset == 0.0 and choose_offset(tie).how == "default"


def test_choice_needs_evidence() -> None:
    sweep = {0.0: _c(1, 9, 0, n=2), 0.3: _c(1, 0, 0, n=2)}
    ch = choose_offset(sweep, min_tasks=3)
    assert ch.offset == 0.0 and ch.how == "too-few" and ch.n == 2
    assert choose_offset(sweep, min_tasks=2).offset == 0.3
    with pytest.raises(ValueError):
        choose_offset({0.1: _c(1, 0, 0)})


def test_a_looser_setting_needs_tasks_without_the_label() -> None:
    # every scored task holds the label: painting more (a lower offset, another mode) gains
    # the missed pixels and costs only those around the object; what it paints where the label
    # is absent is unseen, so it may not compete (the FSS harsher case, 2026-12-04)
    only_present = {
        -0.2: _c(9, 10, 0, absent=0),
        0.0: _c(2, 0, 7, absent=0),
        0.1: _c(1, 0, 8, absent=0),
        "argmax": _c(9, 12, 0, absent=0),
    }
    ch = choose_offset(only_present)
    assert (ch.offset, ch.mode, ch.how) == (0.0, None, "unchecked")
    assert choose_offset(only_present, min_absent=0).offset == -0.2  # the rule is what holds it
    # a stricter offset needs no absent task: it can only paint less
    stricter = {
        -0.2: _c(9, 10, 0, absent=0),
        0.0: _c(5, 6, 4, absent=0),
        0.1: _c(5, 0, 4, absent=0),
    }
    assert (choose_offset(stricter).offset, choose_offset(stricter).how) == (0.1, "tuned")
    # with enough tasks without the label, the looser setting competes (its paint there is in
    # its fp) and wins when it still measures better
    checked = {k: replace(c, tasks=c.n + 3) for k, c in only_present.items()}
    assert choose_offset(checked).offset == -0.2 and choose_offset(checked).how == "tuned"
    assert choose_offset(checked, min_absent=4).how == "unchecked"


def test_held_out_choice_never_tunes_on_the_scored_task() -> None:
    one = Counts(tp=1, n=1, tasks=1)
    bad = Counts(fp=1, fn=1, n=1, tasks=1)
    sweeps = {t: {"x": {0.0: bad, 0.2: one}} for t in "abcd"}
    sweeps["e"] = {"x": {0.0: Counts(tp=1, n=1, tasks=1), 0.2: Counts(fn=1, n=1, tasks=1)}}
    default, tuned = held_out_choice(sweeps, min_tasks=3)
    # a: chosen on b, c, d, e: offset 0 -> tp 1, fp 3, fn 3 (1/7); 0.2 -> tp 3, fn 1 (3/4): 0.2.
    # Same for b, c, d. e: chosen on a..d -> 0.2, where e loses its pixel (tuning on e itself
    # would not have changed that, but e's own counts never entered its choice).
    assert (tuned["x"].tp, tuned["x"].fp, tuned["x"].fn) == (4, 0, 1)
    assert (default["x"].tp, default["x"].fp, default["x"].fn) == (1, 4, 4)


def test_held_out_choice_asks_the_evidence_less_the_scored_task() -> None:
    one = Counts(tp=1, n=1, tasks=1)
    bad = Counts(fp=1, fn=1, n=1, tasks=1)
    # three tasks hold the label: in-sample there is evidence (3); each nested choice sees the
    # other two, which is the bar less the task left out, so the move is checked held out
    # (asking 3 of the other two would keep the default everywhere: no move on exactly 3 tasks
    # could ever be confirmed)
    sweeps = {t: {"x": {0.0: bad, 0.2: one}} for t in "abc"}
    assert choose_offset({0.0: bad + bad + bad, 0.2: one + one + one}).offset == 0.2
    default, tuned = held_out_choice(sweeps, min_tasks=3)
    assert (tuned["x"].tp, tuned["x"].fp, tuned["x"].fn) == (3, 0, 0)
    assert (default["x"].tp, default["x"].fp, default["x"].fn) == (0, 3, 3)
    # two tasks: below the bar in-sample, and each nested choice sees one: the default stays
    two = {t: {"x": {0.0: bad, 0.2: one}} for t in "ab"}
    default, tuned = held_out_choice(two, min_tasks=3)
    assert (tuned["x"].tp, tuned["x"].fp) == (default["x"].tp, default["x"].fp) == (0, 2)
    # the scored task's own counts never enter its choice: c alone prefers 0, a and b prefer 0.2
    mixed = {"a": {"x": {0.0: bad, 0.2: one}}, "b": {"x": {0.0: bad, 0.2: one}}}
    mixed["c"] = {"x": {0.0: one, 0.2: Counts(fn=1, n=1, tasks=1)}}
    default, tuned = held_out_choice(mixed, min_tasks=3)
    # a (and b): chosen on the other two -> 0.2 (IoU 1/2 against 1/3 at 0); c: chosen on a, b
    # -> 0.2, where c loses its pixel (at 0 it had it: tuning on c itself would have kept 0)
    assert (tuned["x"].tp, tuned["x"].fp, tuned["x"].fn) == (2, 0, 1)


def test_held_out_choice_asks_tasks_without_the_label_less_the_scored_one() -> None:
    present_lo = Counts(tp=2, fp=1, n=1, tasks=1)  # a looser offset finds the object
    present_hi = Counts(fn=2, n=1, tasks=1)
    absent = Counts(tasks=1)  # nothing painted either way
    sweeps: dict[str, Sweep] = {}
    for t in "abc":
        sweeps[t] = {"x": {-0.2: present_lo, 0.0: present_hi}}
    for t in "def":
        sweeps[t] = {"x": {-0.2: absent, 0.0: absent}}
    # in-sample: 3 holding, 3 without: the looser move competes and wins
    assert choose_offset(sum_sweeps(sweeps.values())["x"]).offset == -0.2
    default, tuned = held_out_choice(sweeps, min_tasks=3)
    # a, b, c: chosen on 2 holding (the bar less one) and 3 without -> -0.2
    assert (tuned["x"].tp, tuned["x"].fp, tuned["x"].fn) == (6, 3, 0)
    # with only 2 tasks without the label a task holding it is scored at the default: its
    # nested choice has 2 without, and the bar for them is not lowered by a task that holds it
    del sweeps["f"]
    default, tuned = held_out_choice(sweeps, min_tasks=3)
    assert (tuned["x"].tp, tuned["x"].fp, tuned["x"].fn) == (0, 0, 6)


def _light(ious: list[float]) -> list[TaskEstimate]:
    return [TaskEstimate(v, 0.0) for v in ious]  # nothing to correct: the raw value is the IoU


def _posted(fitted: float, raw: float) -> float:
    return (1 - TIE_BREAK) * fitted + TIE_BREAK * raw


def test_score_map_is_isotonic_and_strictly_monotone() -> None:
    est = _light([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    iou = [0.2, 0.1, 0.5, 0.4, 0.9, 0.8]  # two violations, pooled: 0.15, 0.45, 0.85
    sm = fit_score_map(est, iou)
    assert sm.fitted and sm.n == 6
    assert sm.x == pytest.approx((0.1, 0.2, 0.3, 0.4, 0.5, 0.6))
    assert sm.y == pytest.approx((0.15, 0.15, 0.45, 0.45, 0.85, 0.85))
    assert sm(TaskEstimate(0.3, 0.0)) == pytest.approx(_posted(0.45, 0.3))
    assert sm(TaskEstimate(0.35, 0.0)) == pytest.approx(_posted(0.45, 0.35))
    assert sm(TaskEstimate(0.0, 0.0)) == pytest.approx(_posted(0.15, 0.0))  # the first knot
    assert sm(TaskEstimate(0.2, 0.0)) > sm(TaskEstimate(0.1, 0.0))  # flat block, still ordered
    values = [sm(e) for e in _light(list(np.linspace(0, 1, 50)))]
    assert all(b > a for a, b in zip(values, values[1:], strict=False))
    few = fit_score_map(_light([0.5, 0.7]), [0.1, 0.2])
    assert few.fitted is False and few(TaskEstimate(0.7, 0.2)) == pytest.approx(0.56)  # raw
    again = type(sm).from_json(sm.to_json())
    assert again == sm


def test_the_raw_value_discounts_the_expected_iou_by_the_work() -> None:
    """Of two tasks alike in expected IoU the one with more of the image to correct posts
    lower; a lower expected IoU posts lower at equal work."""
    sm = fit_score_map(_light([0.2, 0.4, 0.6, 0.8]), [0.1, 0.3, 0.6, 0.9])
    assert ScoreMap.raw(TaskEstimate(0.8, 0.25)) == pytest.approx(0.6)
    assert sm(TaskEstimate(0.8, 0.25)) < sm(TaskEstimate(0.8, 0.05))
    assert sm(TaskEstimate(0.5, 0.05)) < sm(TaskEstimate(0.8, 0.05))
    assert sm.post(0.6) == pytest.approx(sm(TaskEstimate(0.8, 0.25)))
    assert sm.post(0.6) == pytest.approx(_posted(0.6, 0.6))


def test_a_map_fitted_on_perfect_tasks_still_orders_them() -> None:
    """Fitted where every task scored IoU 1 (nothing to paint and nothing painted), the map
    still orders what it posts, inside [0, 1] (a clipped sum posted 1.0 for all of them)."""
    sm = fit_score_map(_light([1.0, 1.0, 1.0, 1.0]), [1.0, 1.0, 1.0, 1.0])
    values = [sm(TaskEstimate(v, 0.0)) for v in (0.2, 0.5, 0.9, 1.0)]
    assert all(b > a for a, b in zip(values, values[1:], strict=False))
    assert all(0.0 <= v <= 1.0 for v in values) and values[-1] == pytest.approx(1.0)


def test_a_score_map_of_another_form_is_not_applied() -> None:
    """Maps stored before this raw value (knots over 1 - the image share expected wrong, no
    ``form``) would misread it: unfitted until the project is measured again."""
    old = {"x": [0.9, 1.0], "y": [0.3, 0.9], "n": 12}
    sm = ScoreMap.from_json(old)
    assert not sm.fitted and sm.n == 12
    assert sm(TaskEstimate(0.5, 0.2)) == pytest.approx(0.4)
    assert ScoreMap.from_json(old | {"form": SCORE_FORM}).fitted
    stored = ScoreCalibration(x=[0.5, 1.0], y=[0.2, 0.9], n=5)  # the schema's default form: 1
    assert not ScoreMap.from_json(stored.model_dump()).fitted
    fit = fit_score_map(_light([0.2, 0.4, 0.6]), [0.1, 0.5, 0.9])
    assert ScoreMap.from_json(ScoreCalibration(**fit.to_json()).model_dump()) == fit


def test_score_map_pools_equal_raw_scores() -> None:
    sm = fit_score_map(_light([0.5, 0.5, 0.9]), [0.2, 0.6, 0.7])
    assert sm.x == (0.5, 0.9) and sm.y == pytest.approx((0.4, 0.7))


def test_spearman_and_low20() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) is None
    assert spearman([1, 2], [1, 2]) is None
    # 10 tasks; the 2 lowest-scored hold 60 of 100 correction pixels
    scores = [0.9, 0.1, 0.8, 0.7, 0.2, 0.6, 0.5, 0.4, 0.3, 0.95]
    work = [5, 30, 5, 5, 30, 5, 5, 5, 5, 5]
    assert low20_correction_share(scores, work) == pytest.approx(0.6)
    assert low20_correction_share(scores, [0] * 10) is None
    # 6 tasks -> the lowest and 0.2 of the next: 1.2 tasks' part
    assert low20_correction_share([1, 2, 3, 4, 5, 6], [10, 5, 1, 1, 1, 2]) == pytest.approx(11 / 20)


def test_low20_gives_share_to_any_order_a_score_cannot_tell() -> None:
    rng = np.random.default_rng(0)
    for n in (5, 6, 7, 9, 14):
        work = rng.integers(0, 50, size=n).astype(float)
        work[0] += 1.0
        # one tied block: whatever the tasks' input order, a fifth of the work
        assert low20_correction_share([0.5] * n, work) == pytest.approx(0.2)
        # averaged over every order of distinct scores: a fifth too
        perms = [rng.permutation(n) for _ in range(4000)]
        mean = np.mean([low20_correction_share(list(p), work) for p in perms])
        assert mean == pytest.approx(0.2, abs=0.01)


def test_low20_averages_a_tied_block_at_the_cutoff() -> None:
    # 10 tasks, 2 taken: the lowest alone (score 0), then one of the 5 tied at 0.5 on average
    scores = [0.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.9, 0.9, 0.9, 0.9]
    work = [10, 50, 0, 0, 0, 0, 10, 10, 10, 10]
    assert low20_correction_share(scores, work) == pytest.approx((10 + 50 / 5) / 100)
    # the same in any input order of the tied block
    swapped = [10, 0, 0, 0, 0, 50, 10, 10, 10, 10]
    assert low20_correction_share(scores, swapped) == pytest.approx((10 + 50 / 5) / 100)
    # a task without a score comes last
    assert low20_correction_share([float("nan"), 0.2, 0.3, 0.4, 0.5], [9, 1, 0, 0, 0]) == 0.1


def test_spearman_ceiling_by_hand() -> None:
    # nothing tied: the task's own IoU ranks perfectly
    assert spearman_ceiling([0.1, 0.7, 0.4], [False] * 3) == pytest.approx(1.0)
    # tied tasks that are all truly empty (IoU 1) go on top: nothing lost
    assert spearman_ceiling([1.0, 1.0, 0.2, 0.5], [True, True, False, False]) == pytest.approx(1.0)
    # an empty (1) and a miss (0) tied, one painted task at 0.5: wherever the pair goes, the
    # ranks are (2.5, 2.5, 1) or (1.5, 1.5, 3) against (3, 1, 2): a correlation of 0 either way
    assert spearman_ceiling([1.0, 0.0, 0.5], [True, True, False]) == pytest.approx(0.0)
    assert spearman_ceiling([1.0, 0.0, 1.0], [True, True, True]) is None  # one value for all
    with pytest.raises(ValueError):
        spearman_ceiling([1.0, 0.0], [True])


def test_spearman_ceiling_bounds_every_score_that_ties_the_unpainted() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(3, 12))
        iou = np.round(rng.random(n), 1)
        tied = rng.random(n) < 0.4
        iou[tied] = rng.integers(0, 2, int(tied.sum()))  # empties (1) and misses (0)
        ceiling = spearman_ceiling(list(iou), list(tied))
        score = np.where(tied, rng.random(), rng.random(n))  # any score with the group tied
        value = spearman(list(score), list(iou))
        if value is not None:
            assert ceiling is not None and value <= ceiling + 1e-12


def test_sweep_steps_start_at_the_default_and_cover_every_candidate() -> None:
    grids = {"a": [-0.2, 0.0, 0.1], "b": [0.0, 0.3]}
    steps = sweep_steps(grids)
    assert steps[0] == {"a": 0.0, "b": 0.0}
    assert len(steps) <= max(len(g) for g in grids.values()) + 1
    for label, grid in grids.items():
        assert {s[label] for s in steps} == set(grid)
    assert len({tuple(sorted(s.items())) for s in steps}) == len(steps)


def _case(key: str, outcomes: dict[float, Counts], absent: bool = False) -> TaskCase:
    """A one-label task whose assignment at default + offset paints what `outcomes` says: the
    truth is 4 pixels (none when `absent`), the prediction painted tp of them plus fp outside."""
    truth = np.zeros((4, 4), dtype=bool)
    truth[0] = not absent

    class Asg:
        def __init__(self, c: Counts) -> None:
            mask = np.zeros((4, 4), dtype=bool)
            mask[0, : c.tp] = True
            mask[1:, :].flat[: c.fp] = True
            inst = type("I", (), {"label": "x", "score": 0.5, "similarity": 0.0, "mask": mask})
            self.accepted = {"x": [inst] if mask.any() else []}
            self.candidates: list[object] = []
            self.mask = mask

        def label_masks(self) -> dict[str, np.ndarray]:
            return {"x": self.mask} if self.mask.any() else {}

    def assign_at(th: Mapping[str, float]) -> Asg:
        off = round(th["x"] - 1.0, 6)
        return Asg(outcomes.get(off, outcomes[0.0]))

    return TaskCase(key, assign_at, {"x": 1.0}, {"x": truth})


def test_tune_keeps_only_moves_the_nested_estimate_confirms(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gfsam.calibrate as cal

    monkeypatch.setattr(cal, "offset_grid", lambda values, size=7: [0.0, 0.2])
    # four tasks where the stricter offset removes 3 false pixels: confirmed held out
    good = {0.0: Counts(tp=4, fp=3), 0.2: Counts(tp=4)}
    found = cal.tune([_case(k, good) for k in "abcd"])
    assert found.choices["x"].how == "tuned" and found.choices["x"].offset == 0.2
    assert found.held_out["x"].iou == 1.0 and found.default["x"].iou == pytest.approx(16 / 28)
    # one task gains a lot, three lose a little: the move wins on all four (in-sample) but
    # every task scored at the choice of the other three loses -> the default stays
    win = {0.0: Counts(tp=1, fp=3), 0.2: Counts(tp=4)}
    lose = {0.0: Counts(tp=4), 0.2: Counts(tp=3)}
    cases = [_case("a", win), _case("b", lose), _case("c", lose), _case("d", lose)]
    assert (
        cal.choose_offsets([cal.sweep_task(c, {"x": [0.0, 0.2]}) for c in cases])["x"].offset == 0.2
    )
    found = cal.tune(cases)
    assert found.choices["x"].how == "unconfirmed" and found.choices["x"].offset == 0.0


# --- per-label assignment modes (issue 19: "and, if that measures better, the mode") ---------


def _mode_case(key: str, outcomes: dict[float | str, Counts], absent: bool = False) -> TaskCase:
    """`_case` whose assignment also depends on the mode asked for label x (a str key)."""
    base = _case(key, {k: v for k, v in outcomes.items() if not isinstance(k, str)}, absent)
    by_mode = {k: _case(key, {0.0: v}, absent) for k, v in outcomes.items() if isinstance(k, str)}
    calls: list[dict[str, str]] = []

    def assign_at(th: Mapping[str, float], modes: Mapping[str, str] | None = None) -> object:
        calls.append(dict(modes or {}))
        if modes and "x" in modes:
            return by_mode[modes["x"]].assign_at(th)
        return base.assign_at(th)

    case = TaskCase(key, assign_at, base.defaults, base.truth)
    case.calls = calls  # type: ignore[attr-defined]
    return case


def test_choice_switches_mode_only_when_it_measures_strictly_better() -> None:
    sweep: dict[float | str, Counts] = {
        0.0: _c(6, 2, 2),
        0.1: _c(7, 0, 1),
        "label-gate": _c(8, 0, 0),
    }
    ch = choose_offset(sweep)
    assert (ch.mode, ch.offset, ch.how, ch.setting) == ("label-gate", 0.0, "tuned", "label-gate")
    assert ch.iou_chosen == 1.0 and ch.modes_tried == ["label-gate"]
    assert ch.summary()["mode"] == "label-gate" and ch.candidates == [0.0, 0.1]
    assert ch.summary()["ious"] == {"+0.000000": 0.6, "+0.100000": 0.875, "label-gate": 1.0}
    tie = {0.0: _c(6, 2, 2), 0.1: _c(7, 0, 1), "argmax": _c(7, 0, 1)}
    assert choose_offset(tie).mode is None and choose_offset(tie).offset == 0.1  # a tie: no switch
    few = {0.0: _c(1, 9, 0, n=2), "argmax": _c(1, 0, 0, n=2)}
    assert choose_offset(few, min_tasks=3).how == "too-few" and choose_offset(few).mode is None


def test_tune_chooses_a_mode_with_evidence_and_never_on_the_scored_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gfsam.calibrate as cal

    monkeypatch.setattr(cal, "offset_grid", lambda values, size=7: [0.0, 0.2])
    # label-gate paints the truth exactly on every task; split's offsets never do
    better = {0.0: Counts(tp=4, fp=3), 0.2: Counts(tp=2), "label-gate": Counts(tp=4)}
    # three tasks without the label, where no setting paints: a mode may compete
    clean = {0.0: Counts(), 0.2: Counts(), "label-gate": Counts()}
    cases = [_mode_case(k, better) for k in "abcd"] + [_mode_case(k, clean, True) for k in "efg"]
    assert cal.tune(cases[:4], modes=["label-gate"]).choices["x"].how == "unchecked"
    found = cal.tune(cases, modes=["label-gate"])
    assert found.choices["x"].mode == "label-gate" and found.choices["x"].how == "tuned"
    assert found.modes() == {"x": "label-gate"} and found.held_out["x"].iou == 1.0
    assert all({"x": "label-gate"} in c.calls for c in cases)  # type: ignore[attr-defined]
    assert all(o.iou == 1.0 for o in found.outcomes.values())  # predictions use the mode
    # without `modes` the mode is never asked for (a caller without per-label modes works)
    plain = [_mode_case(k, better) for k in "abcd"]
    assert cal.tune(plain).modes() == {}
    assert all(c == {} for p in plain for c in p.calls)  # type: ignore[attr-defined]
    # the mode wins on one task only: in-sample it wins on all four, but every task scored at
    # the choice made on the other three loses it -> unconfirmed, the project's mode stays
    win = {0.0: Counts(tp=1, fp=3), "argmax": Counts(tp=4)}
    lose = {0.0: Counts(tp=4), "argmax": Counts(tp=3)}
    empty = {0.0: Counts(), "argmax": Counts()}
    cases = [_mode_case("a", win), *(_mode_case(k, lose) for k in "bcd")]
    cases += [_mode_case(k, empty, True) for k in "efg"]
    sweeps = [cal.sweep_task(c, {"x": [0.0]}, ["argmax"]) for c in cases]
    assert cal.choose_offsets(sweeps)["x"].mode == "argmax"
    found = cal.tune(cases, modes=["argmax"])
    assert found.choices["x"].how == "unconfirmed" and found.choices["x"].mode is None
    assert found.modes() == {}


def test_the_evidenced_ceiling_keeps_the_evidence_rule() -> None:
    from gfsam.eval.calibration import allowed_settings

    sweep = {-0.2: _c(9, 1, 0), 0.0: _c(5, 0, 4), 0.1: _c(6, 0, 3), "argmax": _c(9, 2, 0)}
    # below the bar of tasks holding the class: only the default
    assert set(allowed_settings(sweep, Counts(n=2, tasks=9), 3)) == {0.0}
    assert set(allowed_settings(sweep, None, 3)) == {0.0}  # not tuned on at all
    # enough holding it, too few without it: nothing looser than the default
    assert set(allowed_settings(sweep, Counts(n=3, tasks=5), 3)) == {0.0, 0.1}
    # enough of both: every setting
    assert set(allowed_settings(sweep, Counts(n=3, tasks=6), 3)) == set(sweep)
