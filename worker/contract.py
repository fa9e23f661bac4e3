"""What the worker needs from the model: one contract, checked once when a worker starts.

Everything a job does with the model goes through `SegmentationModel` (the image-level GF-SAM,
`gfsam.pipeline.GFSAM`, meets it; so does every test double) and its `PromptDecoder` (SAM's
prompt decoder, used by clicks and discovery). Nothing in the worker asks a model object at run
time what it can do: `check_model` refuses, at worker start, a model that lacks a member, naming
it, so a job never falls back to a simpler labelling mode. The gfsam types are imported for the
type checker only: this module loads no torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from gfsam.decoded import DecodedMasks
    from gfsam.encodings import Prediction, Reference, TargetEncoding
    from gfsam.types import GFSAMConfig, PromptDecoder


@runtime_checkable
class SegmentationModel(Protocol):
    """The image-level model every worker job uses (architecture §1).

    - `config`: the algorithm switches (`GFSAMConfig`): the assignment and discovery read it.
    - `sam`: the prompt decoder (clicks, discovery).
    - `encode_reference(image uint8 [H, W, 3], mask bool [H, W]) -> Reference` (shot tokens and
      weights: the assignment's prototypes).
    - `encode_target(image) -> TargetEncoding`, `encode_targets(images, batch_size=)` (the SAM
      embedding and DINOv2 tokens: the assignment's and discovery's token data).
    - `encode_mask_engine(image, precision=None) -> float32 [E', 64, 64]`: the SAM embedding
      alone, equal to `encode_target(image).embedding` at the model's own precision (a cold
      click: no feature engine pass; ``precision`` "fp32" / "bf16" / "auto" overrides it).
    - `predict_labels(target, {label: [Reference, ...]}, decoded=DecodedMasks | None)` ->
      label -> `Prediction` (mask bool [H, W] and the token-level `Segmentation` the split
      assignment reads); `decoded` holds the target's SAM masks from earlier predictions.
    """

    @property
    def config(self) -> GFSAMConfig: ...

    @property
    def sam(self) -> PromptDecoder: ...

    def encode_reference(self, image: np.ndarray, mask: np.ndarray) -> Reference: ...

    def encode_target(self, image: np.ndarray) -> TargetEncoding: ...

    def encode_targets(
        self, images: Sequence[np.ndarray], *, batch_size: int = ...
    ) -> list[TargetEncoding]: ...

    def encode_mask_engine(
        self, image: np.ndarray, *, precision: str | None = None
    ) -> np.ndarray: ...

    def predict_labels(
        self,
        target: TargetEncoding,
        references: Mapping[str, Sequence[Reference]],
        *,
        decoded: DecodedMasks | None = None,
    ) -> dict[str, Prediction]: ...


# The members `check_model` names when one is missing (the Protocols' own, in declaration order).
MODEL_MEMBERS = (
    "config",
    "sam",
    "encode_reference",
    "encode_target",
    "encode_targets",
    "encode_mask_engine",
    "predict_labels",
)
DECODER_MEMBERS = ("decode_prompts", "decode_boxes")


class ContractError(TypeError):
    """A model object does not meet `SegmentationModel` (raised at worker start)."""


def check_model(model: object) -> SegmentationModel:
    """`model` as a `SegmentationModel`, or a `ContractError` naming every missing member.

    Run once when a worker installs its model, never in a job. Checks the members' presence,
    the config's type and the decoder's; the argument types are the type checker's business.
    """
    from gfsam.types import GFSAMConfig, PromptDecoder

    kind = type(model).__name__
    missing = [name for name in MODEL_MEMBERS if name not in dir(model)]
    if missing:
        raise ContractError(
            f"model {kind} does not meet the worker's model contract "
            f"(worker.contract.SegmentationModel): missing {', '.join(missing)}"
        )
    if not isinstance(model, SegmentationModel):  # the same members, as Python sees them
        raise ContractError(f"model {kind} does not meet worker.contract.SegmentationModel")
    if not isinstance(model.config, GFSAMConfig):
        raise ContractError(
            f"model {kind}: config is a {type(model.config).__name__}, not a gfsam GFSAMConfig"
        )
    decoder = model.sam
    absent = [name for name in DECODER_MEMBERS if name not in dir(decoder)]
    if absent or not isinstance(decoder, PromptDecoder):
        raise ContractError(
            f"model {kind}: sam ({type(decoder).__name__}) does not meet "
            f"gfsam.types.PromptDecoder: missing {', '.join(absent) or 'a callable member'}"
        )
    return model
