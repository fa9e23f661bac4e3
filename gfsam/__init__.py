"""GF-SAM: training-free few-shot segmentation from DINOv2 point prompts and SAM masks.

Token level: `segment_tokens` / `segment_weighted` (the parity contract). Image level:
`build_pipeline` -> `GFSAM.encode_reference`, `encode_target`, `predict`, `predict_labels`.
"""

from gfsam.core import segment_tokens, segment_weighted
from gfsam.decoded import DecodedMasks
from gfsam.encoders import ENCODERS, build_encoder
from gfsam.encodings import Prediction, Reference, TargetEncoding
from gfsam.image import load_image, load_mask
from gfsam.pipeline import GFSAM, build_pipeline
from gfsam.points import reference_weights
from gfsam.types import FRAME, GRID, TOKENS, GFSAMConfig, Segmentation

__all__ = [
    "ENCODERS",
    "DecodedMasks",
    "FRAME",
    "GFSAM",
    "GRID",
    "TOKENS",
    "GFSAMConfig",
    "Prediction",
    "Reference",
    "Segmentation",
    "TargetEncoding",
    "build_encoder",
    "build_pipeline",
    "load_image",
    "load_mask",
    "reference_weights",
    "segment_tokens",
    "segment_weighted",
]
