"""Image-level GF-SAM: encoders + token-level algorithm, numpy at the edge, torch inside.

`GFSAM` is `SamPredictor` without hidden state: encodings are values (`Reference`,
`TargetEncoding`) that callers cache and pass back in. One instance per process; it is not
thread-safe (the encoders are shared torch modules).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gfsam.core import Timings, segment_weighted, timed_stage
from gfsam.decoded import DecodedMasks, decoder_key
from gfsam.encoders import (
    DEFAULT_DINO,
    DEFAULT_SAM,
    FEATURE_FAMILIES,
    MASK_FAMILIES,
    SPECS,
    FeatureEngine,
    MaskEngine,
    build_encoder,
)
from gfsam.encoders.dinov2 import Dinov2Encoder
from gfsam.encoders.sam import SamEncoder
from gfsam.encoders.sam2_hiera import Sam2Encoder
from gfsam.encoders.weights import resolve_checkpoint
from gfsam.encodings import Prediction, Reference, TargetEncoding
from gfsam.image import (
    as_mask,
    as_rgb,
    frame_to_sam_uint8,
    mask_from_frame,
    mask_to_frame,
    read_tensor,
    to_frame,
)
from gfsam.points import reference_weights
from gfsam.precision import check_precision, resolve_precision
from gfsam.types import GRID, GFSAMConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preset:
    """A named pair of engines and a prompt cap (``GFSAM_PRESET``).

    Attributes:
        sam: mask engine. dino: feature engine (registry names).
        max_points: prompt cap applied unless the caller's config sets its own (None: 128).
        toy: test-only engines without weights (needs ``random_weights=True``).
    """

    sam: str
    dino: str
    max_points: int | None = None
    toy: bool = False


# fast: the lightest engines and a 32-prompt cap (CPU projects, the click lane); default:
# GF-SAM's own pair (the parity mode); quality: the strongest pair. What `fast` costs in quality
# can not be measured here (no weights); README "Engines" gives the published figures.
PRESETS: dict[str, Preset] = {
    "fast": Preset("sam2.1_hiera_tiny", "dinov3_vits16", max_points=32),
    "default": Preset(DEFAULT_SAM, DEFAULT_DINO),
    "quality": Preset("sam2.1_hiera_large", "dinov3_vitl16"),
    "tiny": Preset("sam_tiny", "dinov2_tiny", toy=True),
    "tiny_sam2": Preset("sam2_tiny", "dinov3_tiny", max_points=32, toy=True),
}
# Images per encoder call in `encode_targets` (activation memory grows with it).
ENCODE_BATCH = 8
_warned_random = False  # the RANDOM WEIGHTS warning is logged once per process


class GFSAM:
    """Few-shot segmentation from reference (image, mask) pairs, with pre-built encoders.

    Args:
        sam: mask engine, `SamEncoder` or `Sam2Encoder` (``embed``, ``decode_points``,
            ``decode_prompts``).
        dino: feature engine, `Dinov2Encoder` or `Dinov3Encoder` (``tokens``) on the
            `GRID` x `GRID` patch grid (its ``spec.grid``).
        config: algorithm switches (`GFSAMConfig`); default abstains instead of the fallback.
        device: compute device, always explicit; the encoders are moved there.
        token_dtype: storage dtype of cached tokens (``np.float16`` halves cache size, ≈).
        precision: ``"fp32"`` (default, the parity mode) or ``"bf16"`` (autocast inside the
            encoders and the decoder; CUDA with bf16 support, or CPU).
    """

    def __init__(
        self,
        sam: MaskEngine,
        dino: FeatureEngine,
        config: GFSAMConfig | None = None,
        *,
        device: torch.device | str,
        token_dtype: type = np.float32,
        precision: str = "fp32",
    ) -> None:
        self.device = torch.device(device)
        if dino.spec.grid != GRID:
            raise ValueError(
                f"{dino.spec.name} gives a {dino.spec.grid}x{dino.spec.grid} patch grid; GF-SAM's "
                f"token-level stages need {GRID}x{GRID} (gfsam.types.GRID)"
            )
        check_precision(precision, self.device)
        self.precision = precision
        self.sam, self.dino = sam.to(self.device), dino.to(self.device)
        self.config = config or GFSAMConfig()
        self.token_dtype = np.dtype(token_dtype)

    @property
    def random_weights(self) -> bool:
        """True when either encoder is random-init: every output is meaningless."""
        return not (self.sam.pretrained and self.dino.pretrained)

    @torch.inference_mode()
    def encode_reference(
        self, image: np.ndarray, mask: np.ndarray, *, timings: Timings | None = None
    ) -> Reference:
        """Encode one reference shot (cacheable; depends only on the DINOv2 encoder).

        Args:
            image: uint8 [H, W, 3] RGB (see `as_rgb` for grey/RGBA).
            mask: [H, W] bool (or integer non-zero / float 0-1) object mask.
            timings: optional dict receiving seconds under ``"dinov2_encoder"``.

        Raises:
            ValueError: invalid image or mask, or a mask that vanishes at 1024 x 1024.
        """
        rgb = as_rgb(image)
        binary = as_mask(mask, rgb.shape[:2])
        framed = mask_to_frame(binary)  # (S, S) bool
        if not framed.any() or framed.all():
            raise ValueError("reference mask is empty or full after resizing to 1024x1024")
        with timed_stage(timings, "dinov2_encoder", self.device):
            frame = to_frame(rgb)[None].to(self.device)  # (1, 3, S, S)
            tokens = self.dino.tokens(frame, precision=self.precision)[0]  # (T, C)
        fg, bg = reference_weights(framed)  # (T,), (T,)
        if not bool(fg.any()):
            logger.warning("reference mask touches no 37x37 sample point; it adds no foreground")
        return Reference(
            tokens=tokens.cpu().numpy().astype(self.token_dtype),
            fg=fg.numpy(),
            bg=bg.numpy(),
            mask_area=int(binary.sum()),
            image_size=(rgb.shape[0], rgb.shape[1]),
            encoder=self.dino.spec.name,
        )

    @torch.inference_mode()
    def encode_target(self, image: np.ndarray, *, timings: Timings | None = None) -> TargetEncoding:
        """Encode a target once: SAM embedding and DINOv2 tokens (cacheable).

        Args:
            image: uint8 [H, W, 3] RGB (see `as_rgb`).
            timings: optional dict receiving ``"sam_encoder"`` and ``"dinov2_encoder"`` seconds.
        """
        return self.encode_targets([image], timings=timings)[0]

    @torch.inference_mode()
    def encode_targets(
        self,
        images: Sequence[np.ndarray],
        *,
        batch_size: int = ENCODE_BATCH,
        timings: Timings | None = None,
    ) -> list[TargetEncoding]:
        """Encode several targets, `batch_size` images per encoder call.

        Equal to `encode_target` image by image up to float summation order (batched GEMMs).

        Args:
            images: uint8 [H, W, 3] RGB images, any sizes.
            batch_size: images per SAM / DINOv2 call (a memory knob).
            timings: optional dict receiving ``"sam_encoder"`` and ``"dinov2_encoder"`` seconds.

        Returns:
            One `TargetEncoding` per image, in order.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        rgbs = [as_rgb(image) for image in images]
        out: list[TargetEncoding] = []
        for i in range(0, len(rgbs), batch_size):
            out += self._encode_batch(rgbs[i : i + batch_size], timings)
        return out

    @torch.inference_mode()
    def encode_mask_engine(self, image: np.ndarray, *, precision: str | None = None) -> np.ndarray:
        """The mask engine's image embedding alone (no feature engine): what a cold click
        needs, bit-identical to the ``embedding`` of `encode_target` of the same image at the
        pipeline's own precision.

        Args:
            image: uint8 [H, W, 3] RGB.
            precision: ``"fp32"``, ``"bf16"`` or ``"auto"`` (`gfsam.precision.resolve_precision`);
                None: the pipeline's.

        Returns:
            float32 [E', 64, 64].
        """
        run = self.precision if precision is None else resolve_precision(precision, self.device)
        frame = to_frame(as_rgb(image)).to(self.device)  # (3, S, S)
        pixels = frame_to_sam_uint8(frame)[None]  # (1, S, S, 3)
        return self.sam.embed(pixels, precision=run)[0].cpu().numpy()

    def _encode_batch(
        self, rgbs: list[np.ndarray], timings: Timings | None
    ) -> list[TargetEncoding]:
        frames = torch.stack([to_frame(rgb) for rgb in rgbs]).to(self.device)  # (B, 3, S, S)
        pixels = torch.stack([frame_to_sam_uint8(f) for f in frames])  # (B, S, S, 3)
        with timed_stage(timings, "sam_encoder", self.device):
            embeddings = self.sam.embed(pixels, precision=self.precision)  # (B, E', 64, 64)
        with timed_stage(timings, "dinov2_encoder", self.device):
            tokens = self.dino.tokens(frames, precision=self.precision)  # (B, T, C)
        embeddings_np = embeddings.cpu().numpy()
        tokens_np = tokens.cpu().numpy().astype(self.token_dtype)
        return [
            TargetEncoding(
                embedding=embeddings_np[b].copy(),
                tokens=tokens_np[b].copy(),
                image_size=(rgb.shape[0], rgb.shape[1]),
                sam_encoder=self.sam.spec.name,
                dino_encoder=self.dino.spec.name,
            )
            for b, rgb in enumerate(rgbs)
        ]

    @torch.inference_mode()
    def predict(
        self,
        target: TargetEncoding | np.ndarray,
        references: Sequence[Reference],
        *,
        decoded: DecodedMasks | None = None,
        timings: Timings | None = None,
    ) -> Prediction:
        """Segment the target's instances of the object the references show.

        Args:
            target: a `TargetEncoding`, or a uint8 RGB image to encode first.
            references: K >= 1 `Reference` shots of one label, from this DINOv2 encoder.
            decoded: the target's `DecodedMasks`: prompts already in it are not decoded again,
                new ones are added (it is emptied first if it belongs to another target).
            timings: optional dict receiving seconds per stage.

        Returns:
            `Prediction` with a bool [H, W] mask at the target's original size.

        Raises:
            ValueError: no references, or encodings from other encoders.
        """
        self._check_references(references)  # before paying for a target encoding
        if isinstance(target, np.ndarray):
            target = self.encode_target(target, timings=timings)
        self._check_target(target)
        dev = self.device
        ref = torch.from_numpy(np.stack([r.tokens for r in references])).to(dev, torch.float32)
        fg = torch.from_numpy(np.stack([r.fg for r in references])).to(dev)  # (K, T)
        bg = torch.from_numpy(np.stack([r.bg for r in references])).to(dev)  # (K, T)
        tgt = read_tensor(target.tokens).to(dev, torch.float32)  # (T, C)
        emb = torch.from_numpy(target.embedding).to(dev)[None]  # (1, E', 64, 64)

        def decode(prompt_xy: np.ndarray) -> torch.Tensor:
            batch = self.config.prompt_batch
            return self.sam.decode_points(emb, prompt_xy, batch, precision=self.precision)

        def mask_fn(prompt_xy: np.ndarray) -> torch.Tensor:
            return decode(prompt_xy) if decoded is None else decoded.masks(prompt_xy, decode, dev)

        if decoded is not None:
            decoded.bind(decoder_key(target, self.precision))
        seg = segment_weighted(ref, fg, bg, tgt, mask_fn, self.config, timings=timings)
        return Prediction(
            mask=mask_from_frame(seg.mask, target.image_size),
            score=float(seg.score),
            abstained=bool(seg.abstained),
            fallback=bool(seg.fallback),
            segmentation=seg,
        )

    @torch.inference_mode()
    def predict_labels(
        self,
        target: TargetEncoding | np.ndarray,
        references: Mapping[str, Sequence[Reference]],
        *,
        decoded: DecodedMasks | None = None,
        timings: Timings | None = None,
    ) -> dict[str, Prediction]:
        """Predict several labels on one target, encoding it once and decoding each prompt once.

        Args:
            target: a `TargetEncoding`, or a uint8 RGB image (encoded once for all labels).
            references: label -> its K >= 1 reference shots.
            decoded: the target's `DecodedMasks` (see `predict`); None: a store for this call
                only, so labels still share the prompts they have in common.
            timings: optional dict receiving seconds per stage, summed over labels.

        Returns:
            label -> `Prediction`, in the mapping's order.
        """
        if isinstance(target, np.ndarray):
            target = self.encode_target(target, timings=timings)
        if decoded is None:
            decoded = DecodedMasks(max(1, len(references)) * self.config.max_points)
        return {
            label: self.predict(target, refs, decoded=decoded, timings=timings)
            for label, refs in references.items()
        }

    def _check_references(self, references: Sequence[Reference]) -> None:
        if len(references) == 0:
            raise ValueError("references must hold at least one Reference")
        names = {r.encoder for r in references}
        if names != {self.dino.spec.name}:
            raise ValueError(
                f"references come from other encoders ({sorted(names)}, expected "
                f"{self.dino.spec.name!r}); re-encode them with this pipeline"
            )

    def _check_target(self, target: TargetEncoding) -> None:
        ours = (self.sam.spec.name, self.dino.spec.name)
        if (target.sam_encoder, target.dino_encoder) != ours:
            raise ValueError(
                f"target comes from other encoders ({target.sam_encoder!r}, "
                f"{target.dino_encoder!r}, expected {ours}); re-encode it"
            )


def reference_from_target(target: TargetEncoding, mask: np.ndarray) -> Reference:
    """A reference shot of an object in an image already encoded as a target, with no encoder
    pass: the target's DINOv2 tokens and the mask's cell weights ("find all like this": the
    clicked object becomes a temporary shot of its own image).

    Args:
        target: the image's `TargetEncoding`.
        mask: bool [H, W] at the target's `image_size`.

    Raises:
        ValueError: the mask is empty or full after resizing to the frame, or of another size.
    """
    binary = as_mask(mask, target.image_size)
    framed = mask_to_frame(binary)  # (S, S) bool
    if not framed.any() or framed.all():
        raise ValueError("reference mask is empty or full after resizing to 1024x1024")
    fg, bg = reference_weights(framed)  # (T,), (T,)
    return Reference(
        tokens=target.tokens,
        fg=fg.numpy(),
        bg=bg.numpy(),
        mask_area=int(binary.sum()),
        image_size=target.image_size,
        encoder=target.dino_encoder,
    )


def _engine_names(
    sam: str | None, dino: str | None, preset: str | None, random_weights: bool
) -> tuple[str, str, Preset | None]:
    """Validated (mask engine, feature engine) names: explicit names, else the preset's, else
    the defaults; and the preset."""
    chosen = None
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
        chosen = PRESETS[preset]
        if chosen.toy and not random_weights:
            raise ValueError(f"preset {preset!r} has no weights; pass random_weights=True")
    sam = sam or (chosen.sam if chosen else DEFAULT_SAM)
    dino = dino or (chosen.dino if chosen else DEFAULT_DINO)
    for name, role, families in (
        (sam, "sam encoder (mask engine)", MASK_FAMILIES),
        (dino, "dino encoder (feature engine)", FEATURE_FAMILIES),
    ):
        if name not in SPECS or SPECS[name].family not in families:
            choices = sorted(n for n, s in SPECS.items() if s.family in families)
            raise ValueError(f"unknown {role} {name!r}; choose from {choices}")
    return sam, dino, chosen


def preset_config(preset: Preset | None, config: GFSAMConfig | None) -> GFSAMConfig | None:
    """`config` with the preset's prompt cap, unless the caller set a cap of its own."""
    if preset is None or preset.max_points is None:
        return config
    base = config or GFSAMConfig()
    if base.max_points != GFSAMConfig().max_points:
        return base  # the caller's cap wins
    return dataclasses.replace(base, max_points=preset.max_points)


def build_pipeline(
    *,
    sam: str | None = None,
    dino: str | None = None,
    model_dir: Path | str | None = None,
    device: torch.device | str = "cpu",
    random_weights: bool = False,
    preset: str | None = None,
    config: GFSAMConfig | None = None,
    precision: str = "fp32",
) -> GFSAM:
    """Build encoders (official weights from `model_dir`, or random) and wrap them in `GFSAM`.

    Args:
        sam, dino: engine registry names (`gfsam.encoders.ENCODERS`); None: the preset's, else
            SAM ViT-H and DINOv2 ViT-L.
        model_dir: checkpoint directory; None searches ``$MODEL_DIR``, ``./models`` and the torch
            hub cache (see `gfsam.encoders.weights.default_model_dirs`).
        device: compute device (CPU unless told otherwise; never guessed).
        random_weights: build random-init encoders (smoke tests only: outputs are meaningless).
        preset: a key of `PRESETS`: ``"fast"``, ``"default"``, ``"quality"`` (engines and a
            prompt cap; explicit `sam` / `dino` win), or the test-only toys ``"tiny"`` and
            ``"tiny_sam2"`` (require ``random_weights=True``).
        config: algorithm switches; default `GFSAMConfig()` (``prompt_batch`` = prompts per
            decoder call: 64 official; ``max_points`` puts all prompts of a label in one call).
        precision: ``"fp32"`` (parity) or ``"bf16"`` autocast (see `GFSAM`).

    Raises:
        ValueError: unknown preset/encoder. WeightsNotFoundError: a checkpoint is missing.
    """
    global _warned_random
    sam, dino, chosen = _engine_names(sam, dino, preset, random_weights)
    config = preset_config(chosen, config)
    if random_weights and not _warned_random:  # once per process, however many pipelines
        _warned_random = True
        logger.warning(
            "RANDOM WEIGHTS: %s and %s are randomly initialised; every mask and score "
            "is MEANINGLESS (smoke tests and timing only)",
            sam,
            dino,
        )
    if random_weights:
        ckpts: list[Path | None] = [None, None]
    else:
        ckpts = [resolve_checkpoint(SPECS[name], model_dir) for name in (sam, dino)]
    sam_enc = build_encoder(sam, checkpoint=ckpts[0], device=device)
    dino_enc = build_encoder(dino, checkpoint=ckpts[1], device=device)
    assert isinstance(sam_enc, SamEncoder | Sam2Encoder) and isinstance(dino_enc, Dinov2Encoder)
    return GFSAM(sam_enc, dino_enc, config, device=device, precision=precision)
