"""SAM image encoder and single-point mask decoding through `segment-anything` (port of
`GFSAM.extract_sam_feats` and `GFSAM.generate_sam_masks`; spec §3, §5).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from torch import Tensor, nn
from torch.nn import functional as F

from gfsam.encoders.weights import EncoderSpec, load_strict, read_checkpoint
from gfsam.precision import autocast
from gfsam.types import FRAME

SAM_MEAN = (123.675, 116.28, 103.53)
SAM_STD = (58.395, 57.12, 57.375)
SAM_PATCH = 16
EMBED_CHANNELS = 256
EMBED_SIDE = FRAME // SAM_PATCH  # 64
_URL = "https://dl.fbaipublicfiles.com/segment_anything/{}"
# A decoder call with fewer prompts is padded up to this many (copies of its last prompt): on a
# CPU, calls of 1-3 prompts take other GEMM paths and flip a few threshold pixels, so a mask
# decoded alone (a cache miss) would differ from the same prompt decoded in a full batch.
MIN_DECODE_BATCH = 8

# (embed_dim, depth, heads, global attention blocks): segment_anything.build_sam builders.
_ARCH = {
    "sam_vit_h": (1280, 32, 16, (7, 15, 23, 31)),
    "sam_vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "sam_vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "sam_tiny": (32, 2, 2, (1,)),  # test-only toy
}
# (embedding channels, decoder MLP width, decoder heads). Every official size shares SAM's one
# decoder (256, 2048, 8); the test-only toy narrows it too, because on a CPU the full-width
# decoder costs seconds per 128 prompts, and the toy exists to keep tests fast.
_DECODER = {name: (EMBED_CHANNELS, 2048, 8) for name in _ARCH} | {"sam_tiny": (32, 64, 2)}


def _spec(name: str, filename: str | None, sha256: str | None) -> EncoderSpec:
    return EncoderSpec(
        name=name,
        family="sam",
        input_size=FRAME,
        patch_size=SAM_PATCH,
        mean=SAM_MEAN,
        std=SAM_STD,
        out_channels=_DECODER[name][0],
        filename=filename,
        url=_URL.format(filename) if filename else None,
        sha256=sha256,
    )


# sha256: computational-cell-analytics/micro-sam micro_sam/util.py (see weights.py).
SAM_SPECS: dict[str, EncoderSpec] = {
    "sam_vit_h": _spec(
        "sam_vit_h",
        "sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
    ),
    "sam_vit_l": _spec(
        "sam_vit_l",
        "sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
    ),
    "sam_vit_b": _spec(
        "sam_vit_b",
        "sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
    ),
    "sam_tiny": _spec("sam_tiny", None, None),
}


def build_sam_model(name: str) -> Sam:
    """Random-init `Sam` wired as `segment_anything.build_sam._build_sam` does."""
    dim, depth, heads, global_attn = _ARCH[name]
    channels, mlp_dim, decoder_heads = _DECODER[name]
    encoder = ImageEncoderViT(
        depth=depth,
        embed_dim=dim,
        img_size=FRAME,
        mlp_ratio=4,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_heads=heads,
        patch_size=SAM_PATCH,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=global_attn,
        window_size=14,
        out_chans=channels,
    )
    prompt = PromptEncoder(
        embed_dim=channels,
        image_embedding_size=(EMBED_SIDE, EMBED_SIDE),
        input_image_size=(FRAME, FRAME),
        mask_in_chans=16,
    )
    decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(
            depth=2, embedding_dim=channels, mlp_dim=mlp_dim, num_heads=decoder_heads
        ),
        transformer_dim=channels,
        iou_head_depth=3,
        iou_head_hidden_dim=channels,
    )
    sam = Sam(
        image_encoder=encoder,
        prompt_encoder=prompt,
        mask_decoder=decoder,
        pixel_mean=list(SAM_MEAN),
        pixel_std=list(SAM_STD),
    )
    return sam.eval()


class SamEncoder(nn.Module):
    """SAM without hidden state: `embed` once per image, then `decode_points` per prompt set.

    Attributes:
        spec: the `EncoderSpec`. sam: the `segment_anything` model.
        pretrained: True when official weights were loaded.
    """

    def __init__(self, spec: EncoderSpec, sam: Sam) -> None:
        super().__init__()
        self.spec, self.sam, self.pretrained = spec, sam, False

    @property
    def device(self) -> torch.device:
        return self.sam.device

    def embed(self, image: Tensor | np.ndarray, *, precision: str = "fp32") -> Tensor:
        """Image embeddings as `SamPredictor.set_image` computes them for 1024x1024 images.

        Args:
            image: uint8 [S, S, 3] RGB (HWC, S = 1024), or a batch [B, S, S, 3]. The official
                pipeline derives it from the float frame by truncation:
                ``(frame * 255).to(torch.uint8)``.
            precision: ``"fp32"`` (parity) or ``"bf16"`` (autocast around the ViT only).

        Returns:
            [B, E, 64, 64] float32 on the model's device (B = 1 for one image; E =
            spec.out_channels: 256, toy 32).
        """
        x = torch.as_tensor(image)
        x = x[None] if x.ndim == 3 else x
        if x.dtype != torch.uint8 or x.ndim != 4 or tuple(x.shape[1:]) != (FRAME, FRAME, 3):
            raise ValueError(
                f"image must be uint8 [{FRAME}, {FRAME}, 3] or [B, {FRAME}, {FRAME}, 3], "
                f"got {x.dtype} {tuple(x.shape)}"
            )
        x = x.to(self.device).permute(0, 3, 1, 2).contiguous()  # (B, 3, S, S)
        pixels = self.sam.preprocess(x.float())  # (B, 3, S, S)
        with autocast(precision, self.device):
            out = self.sam.image_encoder(pixels)  # (B, 256, 64, 64)
        return out.float()

    def decode_points(
        self,
        embedding: Tensor,
        prompt_xy: np.ndarray | Tensor,
        batch_size: int = 64,
        *,
        precision: str = "fp32",
    ) -> Tensor:
        """One mask per single positive point, as `SamPredictor.predict_torch` with
        ``multimask_output=False`` (mask token 0, IoU ignored), upsampled and thresholded > 0.

        Args:
            embedding: [1, 256, 64, 64] (or [256, 64, 64]) image embedding.
            prompt_xy: int [P, 2] prompt pixels (x, y) in the 1024 frame.
            batch_size: prompts per decoder call (official 64); a memory knob. A call with
                fewer than `MIN_DECODE_BATCH` prompts is padded up to it when batch_size allows.
            precision: ``"fp32"`` (parity) or ``"bf16"`` (autocast around the decoder only).

        Returns:
            bool [P, S, S] on the model's device.
        """
        emb = embedding.to(self.device, torch.float32)
        emb = emb[None] if emb.ndim == 3 else emb  # (1, 256, 64, 64)
        xy = prompt_xy if isinstance(prompt_xy, Tensor) else torch.from_numpy(np.asarray(prompt_xy))
        xy = xy.to(self.device).reshape(-1, 2)  # (P, 2)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        chunks = []
        for i in range(0, xy.shape[0], batch_size):
            chunk = xy[i : i + batch_size]  # (B, 2)
            n = chunk.shape[0]
            if n < MIN_DECODE_BATCH <= batch_size:
                chunk = torch.cat([chunk, chunk[-1:].expand(MIN_DECODE_BATCH - n, 2)])
            with autocast(precision, self.device):
                low_res = self._decode_batch(emb, chunk)  # (B, 1, 256, 256)
            chunks.append(self._upsample(low_res[:n]))
        if not chunks:
            return torch.zeros((0, FRAME, FRAME), dtype=torch.bool, device=self.device)
        return torch.cat(chunks)  # (P, S, S)

    def _decode_batch(self, emb: Tensor, xy: Tensor) -> Tensor:
        coords = xy.to(torch.float32)[:, None, :]  # (B, 1, 2)
        labels = torch.ones(coords.shape[:2], dtype=torch.int, device=self.device)  # (B, 1)
        sparse, dense = self.sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        # The decoder repeats the single embedding per prompt itself (repeat_interleave).
        low_res, _ = self.sam.mask_decoder(
            image_embeddings=emb,
            image_pe=self.sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        return low_res  # (B, 1, 256, 256)

    def _upsample(self, low_res: Tensor) -> Tensor:
        # = sam.postprocess_masks(low_res, (S, S), (S, S)): its crop and its second resize
        # (S -> S, bilinear, align_corners=False) are exact identities, so upsample once, in
        # float32 also under bf16 (the threshold sees float32 logits).
        logits = F.interpolate(
            low_res.float(), (FRAME, FRAME), mode="bilinear", align_corners=False
        )  # (B, 1, S, S)
        return logits[:, 0] > self.sam.mask_threshold  # (B, S, S)

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
        """One mask from interactive prompts in one decoder call, as `SamPredictor.predict`
        (all points, at most one box and an optional low-res mask prompt together).

        Args:
            embedding: [1, 256, 64, 64] or [256, 64, 64] image embedding (numpy or torch).
            points_xy: float [N, 2] (x, y) in pixels of the 1024 frame, or None.
            point_labels: int [N], 1 = positive, 0 = negative (None: all positive).
            box_xyxy: float [4] (x0, y0, x1, y1) in frame pixels, or None.
            mask_logits: float32 [256, 256] low-res logits of an earlier mask (SAM's mask
                prompt), or None.
            multimask: SAM's three-mask output, best by predicted IoU (ambiguous single
                clicks); False: the single-mask output (token 0).
            precision: ``"fp32"`` or ``"bf16"`` (autocast around the decoder only).

        Returns:
            (mask bool [S, S], predicted IoU float, low-res logits float32 [256, 256]).

        Raises:
            ValueError: no point and no box, or shapes that do not match.
        """
        n = 0 if points_xy is None else len(points_xy)
        if n == 0 and box_xyxy is None:
            raise ValueError("decode_prompts needs at least one point or a box")
        dev = self.device
        emb = torch.as_tensor(embedding).to(dev, torch.float32)
        emb = emb[None] if emb.ndim == 3 else emb  # (1, 256, 64, 64)
        points = None
        if n:
            xy = torch.as_tensor(np.asarray(points_xy, np.float32)).reshape(1, n, 2).to(dev)
            lab = np.ones(n) if point_labels is None else np.asarray(point_labels)
            if lab.shape != (n,):
                raise ValueError(f"point_labels must be [{n}], got {lab.shape}")
            points = (xy, torch.as_tensor(lab, dtype=torch.int).reshape(1, n).to(dev))
        box = None
        if box_xyxy is not None:
            box = torch.as_tensor(np.asarray(box_xyxy, np.float32)).reshape(1, 4).to(dev)
        mask = None
        if mask_logits is not None:
            side = 4 * EMBED_SIDE  # 256
            m = np.asarray(mask_logits, np.float32)
            if m.shape != (side, side):
                raise ValueError(f"mask_logits must be [{side}, {side}], got {m.shape}")
            mask = torch.as_tensor(m).reshape(1, 1, side, side).to(dev)
        with autocast(precision, dev):
            sparse, dense = self.sam.prompt_encoder(points=points, boxes=box, masks=mask)
            low_res, iou = self.sam.mask_decoder(
                image_embeddings=emb,
                image_pe=self.sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
            )  # (1, M, 256, 256), (1, M)
        best = int(iou[0].float().argmax())
        chosen = low_res[:, best : best + 1].float()  # (1, 1, 256, 256)
        frame_mask = self._upsample(chosen)[0]  # (S, S)
        return (
            frame_mask.cpu().numpy(),
            float(iou[0, best]),
            chosen[0, 0].cpu().numpy(),
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
        """One mask per (positive point, box) pair, all pairs in one decoder call (as
        `SamPredictor.predict_torch` with batched boxes and ``multimask_output=False``): the
        region prompts of "find all like this" (`gfsam.find_all`).

        Args:
            embedding: [1, 256, 64, 64] or [256, 64, 64] image embedding.
            points_xy: float [B, 2] (x, y) frame pixels, one positive point per pair.
            boxes_xyxy: float [B, 4] x0, y0, x1, y1 frame pixels.

        Returns:
            (masks bool [B, S, S], predicted IoU float32 [B]).
        """
        xy, box = point_box_pairs(points_xy, boxes_xyxy, self.device)  # (B, 1, 2), (B, 4)
        if xy.shape[0] == 0:
            return np.zeros((0, FRAME, FRAME), dtype=bool), np.zeros(0, dtype=np.float32)
        emb = torch.as_tensor(embedding).to(self.device, torch.float32)
        emb = emb[None] if emb.ndim == 3 else emb  # (1, 256, 64, 64)
        labels = torch.ones(xy.shape[:2], dtype=torch.int, device=self.device)  # (B, 1)
        with autocast(precision, self.device):
            sparse, dense = self.sam.prompt_encoder(points=(xy, labels), boxes=box, masks=None)
            low_res, iou = self.sam.mask_decoder(
                image_embeddings=emb,
                image_pe=self.sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )  # (B, 1, 256, 256), (B, 1)
        masks = self._upsample(low_res.float())  # (B, S, S)
        return masks.cpu().numpy(), iou[:, 0].float().cpu().numpy()

    def forward(self, image: Tensor) -> Tensor:
        return self.embed(image)


def build_sam(
    name: str, *, checkpoint: Path | None, device: torch.device | str, verify: bool = True
) -> SamEncoder:
    """Build a SAM encoder, random-init when `checkpoint` is None.

    Args:
        name: a key of `SAM_SPECS`.
        checkpoint: official ``sam_vit_*.pth`` (``torch.save(sam.state_dict())``), or None.
        device: where the model lives (never defaulted).
        verify: check the file's sha256 against the published value first.

    Raises:
        KeyError, WeightsChecksumError, WeightsFormatError.
    """
    spec = SAM_SPECS[name]
    state = read_checkpoint(checkpoint, spec, verify=verify)  # before building the model
    encoder = SamEncoder(spec, build_sam_model(name))
    if state is not None:
        load_strict(encoder.sam, state, str(checkpoint))
        encoder.pretrained = True
    return encoder.eval().to(device)


def point_box_pairs(
    points_xy: np.ndarray, boxes_xyxy: np.ndarray, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Validated (points float32 [B, 1, 2], boxes float32 [B, 4]) tensors of `decode_boxes`."""
    pts = np.asarray(points_xy, np.float32).reshape(-1, 2)
    box = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
    if pts.shape[0] != box.shape[0]:
        raise ValueError(f"decode_boxes needs one point per box, got {pts.shape}, {box.shape}")
    return torch.from_numpy(pts)[:, None].to(device), torch.from_numpy(box).to(device)
