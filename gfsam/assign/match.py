"""Split matching, pixel exclusivity and the two assignment rules (`gfsam.assign`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from gfsam.assign.calibration import LabelCalibration, calibrate_label
from gfsam.assign.proposals import (
    PointMasks,
    Proposal,
    SplitParams,
    carve_proposal,
    cell_fractions,
    class_similarity,
    instance_proposals,
    mask_consistency,
    pool_features,
)
from gfsam.encodings import Prediction, Reference, TargetEncoding
from gfsam.image import mask_from_frame
from gfsam.types import GFSAMConfig


@dataclass
class Instance:
    """One region of the result (accepted) or one candidate (rejected).

    Attributes:
        label: the label it is painted as; for a candidate, the label it matched best.
        mask: bool [H, W] at the target's original size (exclusive among accepted instances).
        score: matching score in [0, 1] (split) or the label's GF-SAM score (argmax).
        similarity: class-level similarity to `label` (argmax: nan).
        consistency: mask-level consistency with `label` (argmax: 1).
        source: the label whose GF-SAM run proposed it.
        floor: `label`'s presence floor in the rule that judged it (split, label-gate; argmax:
            nan), so that ``similarity - floor`` says how close a call it was.
    """

    label: str
    mask: np.ndarray
    score: float
    similarity: float
    consistency: float
    source: str
    floor: float = float("nan")


@dataclass
class Assignment:
    """Per-label accepted instances (config order, best first) and the rejected candidates."""

    accepted: dict[str, list[Instance]] = field(default_factory=dict)
    candidates: list[Instance] = field(default_factory=list)

    def label_masks(self) -> dict[str, np.ndarray]:
        """label -> bool [H, W] union of its accepted instances (labels without any dropped)."""
        out: dict[str, np.ndarray] = {}
        for label, insts in self.accepted.items():
            if insts:
                out[label] = np.logical_or.reduce([i.mask for i in insts])
        return out


def split_match(
    proposals: Sequence[Proposal],
    similarity: np.ndarray,
    consistency: np.ndarray,
    thresholds: np.ndarray,
    params: SplitParams,
    origins: np.ndarray | None = None,
) -> tuple[list[tuple[int, int, float]], list[tuple[int, int, float]]]:
    """Match each proposal to its best label or to the candidate group.

    A proposal goes to its best label b (lowest cost) when four things hold: its consistency
    reaches ``min_consistency``; its similarity reaches b's instance floor, ``origin +
    instance_share * (floor - origin)``; b is present in the image: the best similarity among
    b's proposals passing those two tests reaches b's presence floor (`thresholds`); and it is
    not far below that best: ``sim - origin >= within_ratio * (best - origin)``. origin = b's
    background level (`LabelCalibration.background`, clipped at 0; 0 when `origins` is None).
    The last two tests are per image and scale-free: a look-alike beside a seen object scores
    a fraction of it whatever the absolute cosines are.

    Args:
        proposals: N proposals. similarity, consistency: float [N, L] against the L labels.
        thresholds: float [L] per-label presence floors. params: ``min_consistency``,
            ``instance_share``, ``within_ratio``. origins: float [L] background levels or None.

    Returns:
        (accepted, rejected): lists of (proposal index, best label index, cost), cost =
        1 - similarity x consistency of that pair; ties go to the earlier label.
    """
    cost = 1.0 - similarity * consistency  # (N, L)
    origin = np.zeros(len(thresholds)) if origins is None else np.maximum(origins, 0.0)
    instance_floor = origin + params.instance_share * (np.asarray(thresholds) - origin)  # (L,)
    best_label = [int(np.argmin(cost[n])) for n in range(len(proposals))]
    passed = [
        bool(similarity[n, b] >= instance_floor[b] and consistency[n, b] >= params.min_consistency)
        for n, b in enumerate(best_label)
    ]
    best = np.full(len(thresholds), -np.inf)  # (L,) best passing similarity per label
    for n, b in enumerate(best_label):
        if passed[n]:
            best[b] = max(best[b], similarity[n, b])
    present = best >= np.asarray(thresholds)  # (L,)
    accepted: list[tuple[int, int, float]] = []
    rejected: list[tuple[int, int, float]] = []
    for n, b in enumerate(best_label):
        ok = passed[n] and bool(present[b])
        ok = ok and similarity[n, b] - origin[b] >= params.within_ratio * (best[b] - origin[b])
        (accepted if ok else rejected).append((n, b, float(cost[n, b])))
    return accepted, rejected


def paint_exclusive(masks: Sequence[np.ndarray], costs: Sequence[float]) -> list[np.ndarray]:
    """Give each pixel to the lowest-cost mask claiming it (ties: the earlier mask).

    Args:
        masks: bool [H, W] each. costs: one per mask.

    Returns:
        bool [H, W] per input mask, in input order, pairwise disjoint.
    """
    out: list[np.ndarray] = [np.zeros(0, dtype=bool)] * len(masks)
    claimed: np.ndarray | None = None
    for k in sorted(range(len(masks)), key=lambda i: (costs[i], i)):
        mine = masks[k] if claimed is None else masks[k] & ~claimed
        claimed = mine.copy() if claimed is None else claimed | mine
        out[k] = mine
    return out


def _calibrations(
    labels: Sequence[str],
    references: Mapping[str, Sequence[Reference]],
    cfg: GFSAMConfig,
    params: SplitParams,
    known: Mapping[str, LabelCalibration] | None,
) -> dict[str, LabelCalibration]:
    """label -> its calibration: the precomputed one, else computed from its shots."""
    have = known or {}
    return {
        lb: have[lb] if lb in have else calibrate_label(references[lb], cfg, params)
        for lb in labels
    }


def assign_split(
    target: TargetEncoding,
    predictions: Mapping[str, Prediction],
    references: Mapping[str, Sequence[Reference]],
    *,
    cfg: GFSAMConfig | None = None,
    params: SplitParams | None = None,
    thresholds: Mapping[str, float] | None = None,
    calibrations: Mapping[str, LabelCalibration] | None = None,
    point_masks: PointMasks | None = None,
) -> Assignment:
    """Split assignment of every label's instances on one target (see the module docstring).

    Args:
        target: the target's encoding (tokens [T, C], image_size (H, W)).
        predictions: label -> its `Prediction` on the target, in config order.
        references: label -> its shots (the ones the prediction used).
        cfg: the pipeline's config (token normalisation). params: `SplitParams`.
        thresholds: label -> presence floor overriding the calibrated one (a per-project
            tuned value); absent labels use their calibration's ``floor``.
        calibrations: label -> precomputed `calibrate_label` (cache them per reference set);
            computed here when absent.
        point_masks: decodes the target's prompt pixels (`PointMasks`); with it a proposal
            failing its label's floor is carved along its SAM masks (`carve_proposal`).

    Returns:
        `Assignment`: accepted instances per label (masks at original size, pairwise
        disjoint, best first) and the rejected proposals as candidates (not exclusive).
    """
    cfg, params = cfg or GFSAMConfig(), params or SplitParams()
    labels = list(predictions)
    cal = _calibrations(labels, references, cfg, params, calibrations)
    known = thresholds or {}
    thr = np.array([known.get(lb, cal[lb].floor) for lb in labels])  # (L,)
    origins = np.maximum([np.nan_to_num(cal[lb].background) for lb in labels], 0.0)  # (L,)
    protos = {lb: cal[lb].shot_prototypes(references[lb], cfg, params) for lb in labels}
    props: list[Proposal] = []
    for k, label in enumerate(labels):
        for prop in instance_proposals(label, predictions[label], target.tokens, cfg, params):
            floor = origins[k] + params.instance_share * (thr[k] - origins[k])
            fails = class_similarity(prop.feature[None], protos[label])[0] < floor
            if fails and point_masks is not None:
                props += carve_proposal(
                    prop,
                    predictions[label],
                    target.tokens,
                    protos[label],
                    float(floor),
                    point_masks,
                    cfg,
                    params,
                )
            else:
                props.append(prop)
    result = Assignment(accepted={label: [] for label in labels})
    if not props:
        return result
    feats, masks = np.stack([p.feature for p in props]), [p.mask for p in props]
    boxes = [p.box for p in props]
    sim = np.stack([class_similarity(feats, protos[lb]) for lb in labels], 1)  # (N, L)
    cons = np.stack(
        [mask_consistency(masks, predictions[lb].segmentation.mask, boxes) for lb in labels], 1
    )
    accepted, rejected = split_match(props, sim, cons, thr, params, origins)
    size = target.image_size

    def instance(n: int, lab: int, cost: float, mask: np.ndarray) -> Instance:
        score = float(np.clip(1.0 - cost, 0.0, 1.0))
        return Instance(
            labels[lab],
            mask,
            score,
            float(sim[n, lab]),
            float(cons[n, lab]),
            props[n].source,
            float(thr[lab]),
        )

    full = [mask_from_frame(props[n].mask, size) for n, _, _ in accepted]
    painted = paint_exclusive(full, [c for _, _, c in accepted])
    for (n, lab, cost), mask in sorted(zip(accepted, painted, strict=True), key=lambda a: a[0][2]):
        if mask.any():
            result.accepted[labels[lab]].append(instance(n, lab, cost, mask))
    result.candidates = [
        instance(n, lab, cost, mask_from_frame(props[n].mask, size)) for n, lab, cost in rejected
    ]
    return result


def assign_argmax(predictions: Mapping[str, Prediction], order: Sequence[str]) -> Assignment:
    """Today's worker rule: per pixel the highest label score, ties by `order` (config order).

    Args:
        predictions: label -> `Prediction` (abstaining labels contribute nothing).
        order: labels in config order.

    Returns:
        `Assignment` with at most one instance per label (its whole exclusive mask, its score)
        and no candidates.
    """
    live = [lb for lb in predictions if not predictions[lb].abstained]
    rank = sorted(live, key=lambda lb: (-float(predictions[lb].score), list(order).index(lb)))
    masks = paint_exclusive(
        [np.asarray(predictions[lb].mask, dtype=bool) for lb in rank], list(range(len(rank)))
    )
    out = Assignment(accepted={lb: [] for lb in predictions})
    for lb, mask in zip(rank, masks, strict=True):
        if mask.any():
            score = float(predictions[lb].score)
            out.accepted[lb].append(Instance(lb, mask, score, float("nan"), 1.0, lb))
    return out


def assign_label_gate(
    target: TargetEncoding,
    predictions: Mapping[str, Prediction],
    references: Mapping[str, Sequence[Reference]],
    *,
    cfg: GFSAMConfig | None = None,
    params: SplitParams | None = None,
    thresholds: Mapping[str, float] | None = None,
    calibrations: Mapping[str, LabelCalibration] | None = None,
) -> Assignment:
    """The simple baseline of `assign_split`: one similarity gate per label, then argmax.

    A label keeps its whole mask only when the mask-pooled feature of that whole mask (cell
    coverage ** ``pool_power``, as a proposal's) reaches the label's threshold against its shot
    prototypes (the same presence floor as split, `calibrate_label`); the labels that pass
    share the image by `assign_argmax`. No instances, no consistency term, no carving: what
    split adds over this is the measure of its per-instance decisions.

    Args:
        target, predictions, references, cfg, params, thresholds, calibrations: as
            `assign_split`.

    Returns:
        `Assignment`: at most one instance per passing label (similarity filled) and the
        failing labels' whole masks as candidates.
    """
    cfg, params = cfg or GFSAMConfig(), params or SplitParams()
    cal = _calibrations(list(predictions), references, cfg, params, calibrations)
    known = thresholds or {}
    passed: dict[str, Prediction] = {}
    sims: dict[str, float] = {}
    floors: dict[str, float] = {}
    candidates: list[Instance] = []
    for label, pred in predictions.items():
        seg = pred.segmentation
        if pred.abstained or not seg.mask.any():
            continue
        weights = cell_fractions(np.asarray(seg.mask, dtype=bool)[None]) ** params.pool_power
        feat = pool_features(target.tokens, weights, cfg)  # (1, C)
        protos = cal[label].shot_prototypes(references[label], cfg, params)
        sim = float(class_similarity(feat, protos)[0])
        thr = known.get(label, cal[label].floor)
        sims[label], floors[label] = sim, thr
        if sim >= thr:
            passed[label] = pred
        else:
            mask = np.asarray(pred.mask, dtype=bool)
            candidates.append(Instance(label, mask, float(pred.score), sim, 1.0, label, thr))
    out = assign_argmax(passed, list(predictions))
    result = Assignment(accepted={label: [] for label in predictions}, candidates=candidates)
    for label, insts in out.accepted.items():
        for inst in insts:
            inst.similarity, inst.floor = sims[label], floors[label]
        result.accepted[label] = insts
    return result


# --- per-label modes (issue 19's tuning): additive, the rules above are unchanged ------------

MODES = ("split", "label-gate", "argmax")  # the assignment rules, by their `ASSIGN` names


def assign_mixed(
    modes: Mapping[str, str],
    target: TargetEncoding,
    predictions: Mapping[str, Prediction],
    references: Mapping[str, Sequence[Reference]],
    order: Sequence[str],
    *,
    cfg: GFSAMConfig | None = None,
    params: SplitParams | None = None,
    thresholds: Mapping[str, float] | None = None,
    calibrations: Mapping[str, LabelCalibration] | None = None,
    point_masks: PointMasks | None = None,
) -> Assignment:
    """Each label assigned by its own rule (a project tuned per label, `gfsam.calibrate`).

    One mode for every label: exactly that rule (`assign_split`, `assign_label_gate`,
    `assign_argmax`). Several: split runs on every label (its matching compares all of them)
    and its labels keep their instances; a label-gate label keeps its whole mask when it passes
    its gate, an argmax label keeps its whole mask; these whole masks share their pixels by
    label score (`assign_argmax`) and get only what split's instances left (split's decisions
    are per instance, the others' per label: the more specific claim wins).

    Args:
        modes: label -> one of `MODES` (every label of `predictions`).
        target, predictions, references, cfg, params, thresholds, calibrations, point_masks:
            as `assign_split`. order: labels in config order (argmax tie-break).

    Returns:
        `Assignment`: accepted instances pairwise disjoint; candidates: split's rejected
        proposals best matching a split label and the whole masks of labels failing their gate.
    """
    unknown = {m for m in modes.values() if m not in MODES}
    if unknown or set(modes) != set(predictions):
        raise ValueError(f"modes must give one of {MODES} for every label: {dict(modes)}")
    kinds = set(modes.values())
    cfg, params = cfg or GFSAMConfig(), params or SplitParams()

    def split_all() -> Assignment:
        return assign_split(
            target,
            predictions,
            references,
            cfg=cfg,
            params=params,
            thresholds=thresholds,
            calibrations=calibrations,
            point_masks=point_masks,
        )

    def gate_on(preds: Mapping[str, Prediction]) -> Assignment:
        refs = {lb: references[lb] for lb in preds}
        return assign_label_gate(
            target,
            preds,
            refs,
            cfg=cfg,
            params=params,
            thresholds=thresholds,
            calibrations=calibrations,
        )

    if kinds == {"argmax"}:
        return assign_argmax(predictions, order)
    if kinds == {"label-gate"}:
        return gate_on(predictions)
    split_labels = [lb for lb in predictions if modes[lb] == "split"]
    if len(split_labels) == len(predictions):
        return split_all()
    result = Assignment(accepted={label: [] for label in predictions})
    claimed = np.zeros(tuple(target.image_size), dtype=bool)
    if split_labels:
        split = split_all()
        for label in split_labels:
            result.accepted[label] = split.accepted[label]
            for inst in split.accepted[label]:
                claimed |= inst.mask
        result.candidates += [c for c in split.candidates if c.label in split_labels]
    gate = {lb: p for lb, p in predictions.items() if modes[lb] == "label-gate"}
    whole = {lb: p for lb, p in predictions.items() if modes[lb] == "argmax"}
    sims: dict[str, float] = {}
    floors: dict[str, float] = {}
    if gate:
        gated = gate_on(gate)
        failed = {c.label for c in gated.candidates}
        whole |= {lb: p for lb, p in gate.items() if lb not in failed}
        result.candidates += gated.candidates
        sims = {i.label: i.similarity for insts in gated.accepted.values() for i in insts}
        floors = {i.label: i.floor for insts in gated.accepted.values() for i in insts}
    shared = assign_argmax({lb: p for lb, p in predictions.items() if lb in whole}, order)
    for label, insts in shared.accepted.items():
        for inst in insts:
            inst.mask = inst.mask & ~claimed
            inst.similarity = sims.get(label, inst.similarity)
            inst.floor = floors.get(label, inst.floor)
        result.accepted[label] = [i for i in insts if i.mask.any()]
    return result
