"""Multi-label assignment: which label (if any) gets each region a target's GF-SAM runs found.

Three rules, one result type (`Assignment`: per-label accepted `Instance`s + rejected candidates):

- `assign_argmax`: the worker's ``ASSIGN=argmax`` (its rule before issue 10): every label
  keeps its whole mask, a pixel claimed by several labels goes to the highest label score,
  ties to the label listed first. One instance per label.
- `assign_split`: decoupled matching after Split Matching (arXiv 2505.05023), training-free:
  1. proposals: the 8-connected components of each label's merged GF-SAM mask (1024 frame).
     GF-SAM keeps no per-point SAM masks (`Segmentation`), and the merged mask is the union of
     the gated ones, so its components are the instances the label painted; each carries its
     evidence (the label's gated prompts inside it and their PNA score) and its mask-pooled
     DINOv2 feature;
  2. class-level similarity: max cosine of the proposal feature to the label's shot prototypes
     (one per shot, mask-pooled from the reference tokens with the shot's fg cell weights);
     mask-level consistency: the share of the proposal covered by the label's gated mask;
     matching score m = similarity x consistency, cost = 1 - m;
  3. split (issue 18): a proposal goes to its best label only when it reaches that label's
     instance floor and ``min_consistency``, the label is present in the image (its best
     instance there reaches the presence floor of `calibrate_label`, from the shots alone)
     and it is not far below that best instance (``within_ratio``); a proposal failing its
     floor is first carved along the SAM masks it is made of (`carve_proposal`, when the
     caller passes them); everything else joins the candidates (kept for discovery), never
     another label; 4. pixel exclusivity: accepted instances claim pixels in ascending cost.
- `assign_mixed` (issue 19): each label by its own rule, as a project tuned per label.
- `assign_label_gate`: the strongest simple alternative to split (issue 17): one gate per label
  on the pooled feature of its whole mask with split's presence floors, then argmax among the labels
  that pass. The evaluation harness also scores ``present`` (argmax over the labels truly in
  the image), an upper bound only ground truth can give (`gfsam.eval.project`).

Features: tokens normalised as the pipeline does (`GFSAMConfig`, official token-axis norm), then
each token to unit length, then weighted means, then unit length.
"""

from gfsam.assign.calibration import LabelCalibration, calibrate_label, calibrate_threshold
from gfsam.assign.match import (
    MODES,
    Assignment,
    Instance,
    assign_argmax,
    assign_label_gate,
    assign_mixed,
    assign_split,
    paint_exclusive,
    split_match,
)
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
    shot_prototypes,
)

__all__ = [
    "MODES",
    "Assignment",
    "Instance",
    "LabelCalibration",
    "PointMasks",
    "Proposal",
    "SplitParams",
    "assign_argmax",
    "assign_label_gate",
    "assign_mixed",
    "assign_split",
    "calibrate_label",
    "calibrate_threshold",
    "carve_proposal",
    "cell_fractions",
    "class_similarity",
    "instance_proposals",
    "mask_consistency",
    "paint_exclusive",
    "pool_features",
    "shot_prototypes",
    "split_match",
]
