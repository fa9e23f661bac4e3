"""Discovery of unlabelled objects (Split Matching part 2, training-free; arXiv 2505.05023).

Per image (`discover_candidates`, 1024 frame, from the target's cached encodings):

1. free cells: the 37x37 cells mostly outside every accepted label region and human annotation;
2. token clusters: spherical k-means of the free cells' DINOv2 tokens, seeded per scale by the
   mean token of square windows (sides ``DiscoverParams.windows``, stride half the side), so the
   number of clusters follows from the windows; clusters of all scales whose centroids nearly
   coincide are merged; each cluster's 8-connected pieces on the grid are the regions;
3. refinement: one SAM decoder call per region (its box and its deepest cells as points) through
   a `PromptMaskFn` (`sam_prompt_fn` adapts `SamEncoder.decode_prompts`; the oracle has its
   own); score = SAM score x agreement of mask and region;
4. pool: the refined regions plus the proposals the label assignment rejected
   (`gfsam.assign.Assignment.candidates`);
5. filters (too small, too large or border-hugging "stuff", low score, mostly covered), a
   mask-pooled feature each, dropped when as close to an existing label's shot prototypes as
   that label's threshold (a missed instance, not a new class), then ranking by score, mask
   NMS and at most ``max_candidates``.

Across the project (`CandidateGroups`): incremental grouping of the candidates' features with
stable ids, bounded memory and a JSON state; `label_similarity` compares groups with the labels'
shot prototypes.
"""

from gfsam.discover.clusters import (
    Region,
    cluster_regions,
    free_cells,
    spherical_kmeans,
    token_clusters,
    unit_tokens,
    window_seeds,
)
from gfsam.discover.groups import CandidateGroups, Group, GroupParams
from gfsam.discover.params import DiscoverParams
from gfsam.discover.refine import (
    Candidate,
    PromptDecoder,
    PromptMaskFn,
    agreement,
    border_share,
    discover_candidates,
    keep_mask,
    looks_like_label,
    mask_nms,
    refine_regions,
    region_prompts,
    sam_prompt_fn,
)

__all__ = [
    "Candidate",
    "CandidateGroups",
    "DiscoverParams",
    "Group",
    "GroupParams",
    "PromptDecoder",
    "PromptMaskFn",
    "Region",
    "agreement",
    "border_share",
    "cluster_regions",
    "discover_candidates",
    "free_cells",
    "keep_mask",
    "looks_like_label",
    "mask_nms",
    "refine_regions",
    "region_prompts",
    "sam_prompt_fn",
    "spherical_kmeans",
    "token_clusters",
    "unit_tokens",
    "window_seeds",
]
