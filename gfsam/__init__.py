"""GF-SAM: training-free few-shot segmentation from DINOv2 point prompts and SAM masks."""

from gfsam.core import segment_tokens, segment_weighted
from gfsam.points import reference_weights
from gfsam.types import FRAME, GRID, TOKENS, GFSAMConfig, Segmentation

__all__ = [
    "FRAME",
    "GRID",
    "TOKENS",
    "GFSAMConfig",
    "Segmentation",
    "reference_weights",
    "segment_tokens",
    "segment_weighted",
]
