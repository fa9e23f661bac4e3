"""Per-label calibration of the split assignment, from the label's shots alone (issue 18).

Why not one absolute threshold: the shots show how a class looks *within* its own image (interior
cells against the shot prototype: cosine near 1), while a target's instances are compared
*across* images, where same-class cosines are far lower and vary per model and per class (an
oracle with ``--oracle-class-cos 0.65`` puts them near 0.5, real DINOv2 mask-pooled features
somewhere in 0.5-0.8). A threshold halfway between "interior" and "background" (the rule before
issue 18) therefore rejected most true instances whenever cross-image cosines were low. The
calibration now gives three numbers per label (`LabelCalibration`):

- ``floor`` (presence floor, the assignment's per-label threshold; higher = stricter): below it
  a region is not the label in any image.
  - one shot: ``background + presence_mix * (interior - background)``: a small step up from what
    the shot's own background scores (``background``: high quantile of its background cells
    against its prototype; ``interior``: median of its interior cells), so anything that looks
    more like the object than its surroundings do can pass; the look-alike question is left to
    the per-image rule (`gfsam.assign.match`), which needs no scale;
  - a tiny shot (fewer than ``min_interior_cells`` cells at least ``interior`` covered): its
    prototype mixes object and background, so its background statistic is inflated (a car on
    0.1 % of its image gave 0.90); its floor is ``tiny_floor`` instead;
  - two shots or more: the shots are instances of the class in DIFFERENT images, so their
    mutual cosines measure the cross-image same-class level directly (``cross``: median over
    shots of the cosine to the nearest other shot). The floor is
    ``max(min per-shot floor, cross_ratio * cross)``: shots that agree raise the floor towards
    the measured level (what keeps a look-alike out on an image without the seen object);
    shots far apart (a class with several looks) say nothing about one look's spread and leave
    the per-shot floor.
- ``scale``: the same-class level the label's instances are expected near (``cross`` with two
  shots or more, else the shots' interior level); reported, and used by nothing that decides.
- ``match``: "as close to the label as its own shots": the rule before issue 18 (halfway
  between interior and background, K >= 2 also the leave-one-out cosine minus ``loo_slack``).
  Discovery drops a candidate at or above it as a missed instance rather than a new class; it
  stays high on purpose (a look-alike must survive as a candidate).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from gfsam.assign.proposals import SplitParams, pool_features, shot_prototypes
from gfsam.encodings import Reference
from gfsam.types import GFSAMConfig


@dataclass(frozen=True)
class LabelCalibration:
    """What `calibrate_label` learned from one label's shots (module docstring).

    Attributes:
        floor: presence floor on class similarity (the split / label-gate threshold).
        scale: the expected same-class similarity of a target instance.
        match: discovery's "already this label" level.
        background: the shots' background level (median over shots).
        cross: median nearest-other-shot cosine (nan with one shot).
        shots: K. tiny: how many shots were tiny.
        how: one line saying which rule set the floor.
        prototypes: float32 [K, C] the shots' prototypes it was computed from
            (`shot_prototypes`, with ``pool_power``), kept so the assignment and discovery
            need not pool the shots again per task; None when not kept.
        pool_power: the ``SplitParams.pool_power`` of `prototypes`.
    """

    floor: float
    scale: float
    match: float
    background: float
    cross: float
    shots: int
    tiny: int
    how: str
    prototypes: np.ndarray | None = field(default=None, compare=False, repr=False)
    pool_power: float = field(default=float("nan"), compare=False, repr=False)

    def shot_prototypes(
        self, references: Sequence[Reference], cfg: GFSAMConfig, params: SplitParams
    ) -> np.ndarray:
        """The kept prototypes when made with ``params.pool_power``, else computed (the same
        bits either way: `shot_prototypes` is deterministic)."""
        if self.prototypes is not None and self.pool_power == params.pool_power:
            return self.prototypes
        return shot_prototypes(references, cfg, params)


@dataclass(frozen=True)
class _ShotStats:
    interior: float  # median interior-cell cosine to the shot prototype
    background: float  # high quantile of the background cells' cosine
    tiny: bool


def _shot_stats(
    ref: Reference, proto: np.ndarray, cfg: GFSAMConfig, p: SplitParams
) -> _ShotStats | None:
    """Interior and background levels of one shot (None: no background cell at all)."""
    fg = np.asarray(ref.fg)
    inside, outside = fg >= p.interior, fg <= 0.0  # (T,), (T,)
    if not outside.any():
        return None
    eye = np.eye(len(fg), dtype=np.float32)
    cos_bg = pool_features(ref.tokens, eye[outside], cfg) @ proto  # (B,)
    bg = float(np.quantile(cos_bg, p.background_quantile))
    if int(inside.sum()) < p.min_interior_cells:
        return _ShotStats(interior=float("nan"), background=bg, tiny=True)
    interior = float(np.median(pool_features(ref.tokens, eye[inside], cfg) @ proto))
    return _ShotStats(interior=interior, background=bg, tiny=False)


def _shot_floor(stats: _ShotStats | None, p: SplitParams) -> float:
    if stats is None or stats.tiny:
        return p.tiny_floor
    return stats.background + p.presence_mix * (stats.interior - stats.background)


def _shot_match(stats: _ShotStats | None, p: SplitParams) -> float:
    if stats is None or stats.tiny:
        return p.default_threshold
    return p.single_shot_mix * stats.interior + (1 - p.single_shot_mix) * stats.background


def calibrate_label(
    references: Sequence[Reference], cfg: GFSAMConfig, params: SplitParams
) -> LabelCalibration:
    """Calibrate one label from its K shots (module docstring: the rules).

    Args:
        references: the label's shots (K >= 1). cfg: token normalisation. params: the knobs.

    Returns:
        `LabelCalibration`. Depends on the shots only: recompute when they change.
    """
    protos = shot_prototypes(references, cfg, params)  # (K, C)
    power = float(params.pool_power)
    stats = [_shot_stats(r, pr, cfg, params) for r, pr in zip(references, protos, strict=True)]
    per_shot = min(_shot_floor(s, params) for s in stats)
    match = min(_shot_match(s, params) for s in stats)
    interiors = [s.interior for s in stats if s is not None and not s.tiny]
    backgrounds = [s.background for s in stats if s is not None]
    tiny = sum(1 for s in stats if s is None or s.tiny)
    background = float(np.median(backgrounds)) if backgrounds else float("nan")
    if len(references) < 2:
        how = "one tiny shot: tiny_floor" if tiny else "one shot: background + presence_mix step"
        scale = interiors[0] if interiors else float("nan")
        return LabelCalibration(
            per_shot, scale, match, background, float("nan"), 1, tiny, how, protos, power
        )
    sims = protos @ protos.T  # (K, K)
    np.fill_diagonal(sims, -np.inf)
    nearest = sims.max(axis=1)  # (K,)
    cross = float(np.median(nearest))
    match = float(min(match, nearest.min() - params.loo_slack))
    lifted = params.cross_ratio * cross
    floor = max(per_shot, lifted)
    how = (
        f"{len(references)} shots agree: cross_ratio x cross-shot cosine"
        if lifted > per_shot
        else f"{len(references)} shots: lowest per-shot floor (shots far apart)"
    )
    return LabelCalibration(
        floor, cross, match, background, cross, len(references), tiny, how, protos, power
    )


def calibrate_threshold(
    references: Sequence[Reference], cfg: GFSAMConfig, params: SplitParams
) -> float:
    """The label's assignment threshold: `calibrate_label(...).floor`."""
    return calibrate_label(references, cfg, params).floor
