"""SAM 2.1 (Hiera) as a mask engine through the official `sam2` package: one image embedding per
target, point and box prompts decoded in batches, the same methods as `SamEncoder` (`embed`,
`decode_points`, `decode_prompts`), so GF-SAM, clicks and discovery use either.

Image path = `sam2.sam2_image_predictor.SAM2ImagePredictor.set_image` and `_predict`: ImageNet
normalisation of the 1024 frame, `forward_image` (the decoder's high-resolution projections
included), `no_mem_embed` added to the lowest-resolution map, masks upsampled bilinearly to the
frame and thresholded at 0. The model is built from the package's own Hydra configs
(``configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml``) with the predictor's post-processing overrides,
as `sam2.build_sam.build_sam2` does.

Embedding layout. SAM 2 decodes from three maps: the image embedding [E, 64, 64] and two
high-resolution maps [E/4, 128, 128] and [E/8, 256, 256]. They are stored as ONE float32 array
[4E, 64, 64] (E = 256, so [1024, 64, 64]): channels [0, E) the image embedding, [E, 2E) the
128-px map space-to-depth by 2 (`pixel_unshuffle`), [2E, 4E) the 256-px map space-to-depth by 4.
The packing is lossless (`pixel_shuffle` undoes it bit for bit), so a `TargetEncoding` keeps one
embedding array whatever the engine; it costs 16 MiB a target in float32 (SAM's: 4 MiB).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from gfsam.encoders.sam import point_box_pairs
from gfsam.encoders.weights import EncoderSpec, load_strict, read_checkpoint
from gfsam.precision import autocast
from gfsam.types import FRAME

SAM2_MEAN = (0.485, 0.456, 0.406)
SAM2_STD = (0.229, 0.224, 0.225)
SAM2_STRIDE = 16  # the image embedding's stride (64 x 64 at 1024 px)
EMBED_SIDE = FRAME // SAM2_STRIDE  # 64
LOW_RES = 4 * EMBED_SIDE  # 256: side of the decoder's mask logits
MIN_DECODE_BATCH = 8  # as `gfsam.encoders.sam.MIN_DECODE_BATCH` (batch-invariant CPU GEMMs)
_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/{}"
# The predictor's post-processing (`build_sam2(apply_postprocessing=True)`): the single-mask
# output falls back to the best multimask output when it is not stable.
_POSTPROCESS = [
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
]
# Test-only toy: the Hiera-T layout at width 8 and 5 blocks, neck and decoder 32 wide.
_TOY = [
    "model.image_encoder.trunk.embed_dim=8",
    "model.image_encoder.trunk.num_heads=1",
    "model.image_encoder.trunk.stages=[1,1,2,1]",
    "model.image_encoder.trunk.global_att_blocks=[3]",
    "model.image_encoder.neck.backbone_channel_list=[64,32,16,8]",
    "model.image_encoder.neck.d_model=32",
    "model.image_encoder.neck.position_encoding.num_pos_feats=32",
]
# name -> (package config, official file, embedding channels E, extra overrides)
_ARCH: dict[str, tuple[str, str | None, int, list[str]]] = {
    "sam2.1_hiera_tiny": ("sam2.1_hiera_t.yaml", "sam2.1_hiera_tiny.pt", 256, []),
    "sam2.1_hiera_small": ("sam2.1_hiera_s.yaml", "sam2.1_hiera_small.pt", 256, []),
    "sam2.1_hiera_base_plus": ("sam2.1_hiera_b+.yaml", "sam2.1_hiera_base_plus.pt", 256, []),
    "sam2.1_hiera_large": ("sam2.1_hiera_l.yaml", "sam2.1_hiera_large.pt", 256, []),
    "sam2_tiny": ("sam2.1_hiera_t.yaml", None, 32, _TOY),
}


def _spec(name: str) -> EncoderSpec:
    _, filename, channels, _ = _ARCH[name]
    return EncoderSpec(
        name=name,
        family="sam2",
        input_size=FRAME,
        patch_size=SAM2_STRIDE,
        mean=SAM2_MEAN,
        std=SAM2_STD,
        out_channels=4 * channels,
        filename=filename,
        url=_URL.format(filename) if filename else None,
        sha256=None,  # Meta publishes none for SAM 2.1 (see weights.py: recorded at install)
        state_key="model",  # the files hold {"model": state_dict} (build_sam._load_checkpoint)
    )


SAM2_SPECS: dict[str, EncoderSpec] = {name: _spec(name) for name in _ARCH}


def build_sam2_model(name: str) -> nn.Module:
    """Random-init `sam2.modeling.sam2_base.SAM2Base` from the package's config, in eval mode."""
    import sam2  # noqa: F401  (registers the package's Hydra config module)
    from hydra import compose
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    config, _, _, extra = _ARCH[name]
    cfg = compose(config_name=f"configs/sam2.1/{config}", overrides=[*extra, *_POSTPROCESS])
    OmegaConf.resolve(cfg)
    return cast(nn.Module, instantiate(cfg.model, _recursive_=True)).eval()


class Sam2Encoder(nn.Module):
    """SAM 2.1 without hidden state: `embed` once per image, then `decode_points` /
    `decode_prompts` on the packed embedding (module docstring).

    Attributes:
        spec: the `EncoderSpec`. model: the `SAM2Base`. pretrained: official weights loaded.
    """

    def __init__(self, spec: EncoderSpec, model: nn.Module) -> None:
        super().__init__()
        self.spec, self.model, self.pretrained = spec, model, False
        self.channels = spec.out_channels // 4  # E

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def _m(self) -> Any:  # the SAM2Base, untyped (the package ships no type hints)
        return self.model

    def embed(self, image: Tensor | np.ndarray, *, precision: str = "fp32") -> Tensor:
        """Packed image embeddings, as `SAM2ImagePredictor.set_image` computes them.

        Args:
            image: uint8 [S, S, 3] RGB (S = 1024), or a batch [B, S, S, 3].
            precision: ``"fp32"`` or ``"bf16"`` (autocast around the image encoder only).

        Returns:
            [B, 4E, 64, 64] float32 on the model's device (E = 256; toy 32).
        """
        x = torch.as_tensor(image)
        x = x[None] if x.ndim == 3 else x
        if x.dtype != torch.uint8 or x.ndim != 4 or tuple(x.shape[1:]) != (FRAME, FRAME, 3):
            raise ValueError(
                f"image must be uint8 [{FRAME}, {FRAME}, 3] or [B, {FRAME}, {FRAME}, 3], "
                f"got {x.dtype} {tuple(x.shape)}"
            )
        x = x.to(self.device).permute(0, 3, 1, 2).float() / 255.0  # (B, 3, S, S)
        mean = torch.tensor(SAM2_MEAN, device=x.device).reshape(1, 3, 1, 1)
        std = torch.tensor(SAM2_STD, device=x.device).reshape(1, 3, 1, 1)
        pixels = (x - mean) / std  # SAM2Transforms: ToTensor, Normalize
        m = self._m
        with autocast(precision, self.device):
            backbone = m.forward_image(pixels)
            _, feats, _, sizes = m._prepare_backbone_features(backbone)  # [(HW, B, C)] x 3
        feats = [f.float() for f in feats]
        if m.directly_add_no_mem_embed:
            feats[-1] = feats[-1] + m.no_mem_embed.float()
        b = x.shape[0]
        maps = [f.permute(1, 2, 0).reshape(b, -1, *hw) for f, hw in zip(feats, sizes, strict=True)]
        s0, s1, image_embed = maps  # (B, E/8, 256, 256), (B, E/4, 128, 128), (B, E, 64, 64)
        return torch.cat([image_embed, F.pixel_unshuffle(s1, 2), F.pixel_unshuffle(s0, 4)], 1)

    def unpack(self, embedding: Tensor | np.ndarray) -> tuple[Tensor, list[Tensor]]:
        """(image embedding [1, E, 64, 64], [s0 [1, E/8, 256, 256], s1 [1, E/4, 128, 128]])."""
        emb = torch.as_tensor(embedding).to(self.device, torch.float32)
        emb = emb[None] if emb.ndim == 3 else emb
        e = self.channels
        if tuple(emb.shape) != (1, 4 * e, EMBED_SIDE, EMBED_SIDE):
            raise ValueError(
                f"embedding must be [{4 * e}, {EMBED_SIDE}, {EMBED_SIDE}] ({self.spec.name}), "
                f"got {tuple(emb.shape)}"
            )
        image_embed = emb[:, :e]
        s1 = F.pixel_shuffle(emb[:, e : 2 * e], 2)
        s0 = F.pixel_shuffle(emb[:, 2 * e :], 4)
        return image_embed, [s0, s1]

    def _decode(
        self,
        image_embed: Tensor,
        high_res: list[Tensor],
        points: tuple[Tensor, Tensor] | None,
        mask: Tensor | None,
        multimask: bool,
    ) -> tuple[Tensor, Tensor]:
        m = self._m
        sparse, dense = m.sam_prompt_encoder(points=points, boxes=None, masks=mask)
        low_res, iou, _, _ = m.sam_mask_decoder(
            image_embeddings=image_embed,
            image_pe=m.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
            repeat_image=True,  # one image, B prompt sets (identity for B = 1)
            high_res_features=high_res,
        )
        return low_res, iou  # (B, M, 256, 256), (B, M)

    def _upsample(self, low_res: Tensor) -> Tensor:
        logits = F.interpolate(
            low_res.float(), (FRAME, FRAME), mode="bilinear", align_corners=False
        )  # (B, 1, S, S): SAM2Transforms.postprocess_masks at the 1024 frame
        return logits[:, 0] > 0.0  # (B, S, S); SAM2ImagePredictor.mask_threshold

    def decode_points(
        self,
        embedding: Tensor,
        prompt_xy: np.ndarray | Tensor,
        batch_size: int = 64,
        *,
        precision: str = "fp32",
    ) -> Tensor:
        """One mask per single positive point (`SAM2ImagePredictor.predict` with one point and
        ``multimask_output=False``), thresholded at 0.

        Args:
            embedding: [4E, 64, 64] or [1, 4E, 64, 64] packed embedding (`embed`).
            prompt_xy: int [P, 2] prompt pixels (x, y) in the 1024 frame.
            batch_size: prompts per decoder call; calls shorter than `MIN_DECODE_BATCH` are
                padded (as `SamEncoder.decode_points`).
            precision: ``"fp32"`` or ``"bf16"`` (autocast around the decoder only).

        Returns:
            bool [P, S, S] on the model's device.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        image_embed, high_res = self.unpack(embedding)
        xy = prompt_xy if isinstance(prompt_xy, Tensor) else torch.from_numpy(np.asarray(prompt_xy))
        xy = xy.to(self.device).reshape(-1, 2)  # (P, 2)
        chunks = []
        for i in range(0, xy.shape[0], batch_size):
            chunk = xy[i : i + batch_size]
            n = chunk.shape[0]
            if n < MIN_DECODE_BATCH <= batch_size:
                chunk = torch.cat([chunk, chunk[-1:].expand(MIN_DECODE_BATCH - n, 2)])
            coords = chunk.to(torch.float32)[:, None, :]  # (B, 1, 2)
            labels = torch.ones(coords.shape[:2], dtype=torch.int, device=self.device)
            with autocast(precision, self.device):
                low_res, _ = self._decode(image_embed, high_res, (coords, labels), None, False)
            chunks.append(self._upsample(low_res[:n]))
        if not chunks:
            return torch.zeros((0, FRAME, FRAME), dtype=torch.bool, device=self.device)
        return torch.cat(chunks)

    @torch.inference_mode()
    def decode_prompts(
        self,
        embedding: Tensor | np.ndarray,
        points_xy: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box_xyxy: np.ndarray | None = None,
        mask_logits: np.ndarray | None = None,
        *,
        multimask: bool = False,
        precision: str = "fp32",
    ) -> tuple[np.ndarray, float, np.ndarray]:
        """One mask from points, at most one box and an optional low-res mask prompt in one
        decoder call, as `SAM2ImagePredictor.predict` (the box enters as two corner points with
        labels 2 and 3, before the clicks). Same arguments and result as
        `SamEncoder.decode_prompts` (the `gfsam.types.PromptDecoder` protocol).

        Raises:
            ValueError: no point and no box, or shapes that do not match.
        """
        n = 0 if points_xy is None else len(points_xy)
        if n == 0 and box_xyxy is None:
            raise ValueError("decode_prompts needs at least one point or a box")
        dev = self.device
        image_embed, high_res = self.unpack(embedding)
        coords: list[Tensor] = []
        labels: list[Tensor] = []
        if box_xyxy is not None:
            box = np.asarray(box_xyxy, np.float32).reshape(-1)
            if box.shape != (4,):
                raise ValueError(f"box_xyxy must be [4], got {box.shape}")
            coords.append(torch.as_tensor(box).reshape(2, 2))
            labels.append(torch.tensor([2, 3], dtype=torch.int))
        if n:
            lab = np.ones(n) if point_labels is None else np.asarray(point_labels)
            if lab.shape != (n,):
                raise ValueError(f"point_labels must be [{n}], got {lab.shape}")
            coords.append(torch.as_tensor(np.asarray(points_xy, np.float32)).reshape(n, 2))
            labels.append(torch.as_tensor(lab, dtype=torch.int))
        points = (torch.cat(coords)[None].to(dev), torch.cat(labels)[None].to(dev))
        mask = None
        if mask_logits is not None:
            m = np.asarray(mask_logits, np.float32)
            if m.shape != (LOW_RES, LOW_RES):
                raise ValueError(f"mask_logits must be [{LOW_RES}, {LOW_RES}], got {m.shape}")
            mask = torch.as_tensor(m).reshape(1, 1, LOW_RES, LOW_RES).to(dev)
        with autocast(precision, dev):
            low_res, iou = self._decode(image_embed, high_res, points, mask, multimask)
        best = int(iou[0].float().argmax())
        chosen = low_res[:, best : best + 1].float()  # (1, 1, 256, 256)
        frame_mask = self._upsample(chosen)[0]
        return (
            frame_mask.cpu().numpy(),
            float(iou[0, best]),
            torch.clamp(chosen[0, 0], -32.0, 32.0).cpu().numpy(),
        )

    @torch.inference_mode()
    def decode_boxes(
        self,
        embedding: Tensor | np.ndarray,
        points_xy: np.ndarray,
        boxes_xyxy: np.ndarray,
        *,
        precision: str = "fp32",
    ) -> tuple[np.ndarray, np.ndarray]:
        """One mask per (positive point, box) pair in one decoder call (the box as two corner
        points with labels 2 and 3 before the point, as `SAM2ImagePredictor`). Same arguments
        and result as `SamEncoder.decode_boxes`."""
        xy, box = point_box_pairs(points_xy, boxes_xyxy, self.device)  # (B, 1, 2), (B, 4)
        if xy.shape[0] == 0:
            return np.zeros((0, FRAME, FRAME), dtype=bool), np.zeros(0, dtype=np.float32)
        image_embed, high_res = self.unpack(embedding)
        coords = torch.cat([box.reshape(-1, 2, 2), xy], dim=1)  # (B, 3, 2)
        labels = torch.tensor([2, 3, 1], dtype=torch.int, device=self.device)
        labels = labels.expand(coords.shape[0], 3)  # (B, 3)
        with autocast(precision, self.device):
            low_res, iou = self._decode(image_embed, high_res, (coords, labels), None, False)
        masks = self._upsample(low_res.float())  # (B, S, S)
        return masks.cpu().numpy(), iou[:, 0].float().cpu().numpy()

    def forward(self, image: Tensor) -> Tensor:
        return self.embed(image)


def build_sam2(
    name: str, *, checkpoint: Path | None, device: torch.device | str, verify: bool = True
) -> Sam2Encoder:
    """Build a SAM 2.1 engine, random-init when `checkpoint` is None.

    Args:
        name: a key of `SAM2_SPECS`.
        checkpoint: official ``sam2.1_hiera_*.pt`` (``{"model": state_dict}``), or None.
        device: where the model lives (never defaulted).
        verify: check the file's sha256 (recorded at install; none is published) first.

    Raises:
        KeyError, WeightsChecksumError, WeightsFormatError (every bad key named).
    """
    spec = SAM2_SPECS[name]
    state = read_checkpoint(checkpoint, spec, verify=verify)  # before building the model
    encoder = Sam2Encoder(spec, build_sam2_model(name))
    if state is not None:
        load_strict(encoder.model, state, str(checkpoint))
        encoder.pretrained = True
    return encoder.eval().to(device)
