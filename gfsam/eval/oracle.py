"""Oracle encoders: DINOv2 tokens and SAM masks made from ground-truth label maps.

They measure the LOGIC of the pipeline (PNA, PMC, gates, assignment), never model quality.
Both sit behind the interfaces `gfsam.pipeline.GFSAM` uses, in the same squashed 1024 frame
(`gfsam.image`: a label map is squashed with torch nearest, like `mask_to_frame`):

- `OracleDino.tokens`: each 37x37 cell (the 1024-frame pixels x * 1024 / 37 .. (x + 1) * 1024 / 37,
  which is what one 14 px patch of the 518 px DINOv2 input sees) gets
  ``normalize(sum_c h_c e_c) + sigma * n / sqrt(d)``: ``h`` the cell's identity-area histogram,
  ``e_c`` seeded unit vectors of dimension ``d``, ``n`` seeded standard Gaussian noise. Every
  class is one identity; every 8-connected background component is an identity of its own.
  With ``rho > 0`` every even class c looks like c - 1: ``e_c = normalize(e_c + rho e_{c-1})``.
- `OracleSam.embed` returns the framed map of 8-connected components (ids as float32, exact
  below 2^24) and `decode_points` the component under each prompt pixel: an ideal SAM for
  semantic regions. `decode_prompts` answers a box + points prompt (discovery) with the
  component most positive points fall in, scored by how well the prompt agrees with it.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from gfsam.types import FRAME, GRID, TOKENS

ORACLE_NOTE = "oracle encoders: measures the pipeline's logic, NOT model quality"
EIGHT = np.ones((3, 3), dtype=bool)
# Background identities live above every class id (uint16 label maps stay below 65536).
BG_BASE = 1 << 20


@dataclass(frozen=True)
class OracleParams:
    """Oracle knobs.

    Attributes:
        sigma: noise-to-signal norm ratio of the tokens (``--oracle-noise``).
        rho: look-alike strength of even classes towards c - 1 (``--oracle-confuse``).
        dim: token channels d.
        seed: seeds the class vectors and the per-image noise.
    """

    sigma: float = 0.0
    rho: float = 0.0
    dim: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.sigma < 0 or self.rho < 0 or self.dim < 2:
            raise ValueError(f"oracle needs sigma >= 0, rho >= 0, dim >= 2: {self}")


def frame_labels(labels: np.ndarray) -> np.ndarray:
    """Squash a label map to the 1024 frame with torch nearest (as `gfsam.image.mask_to_frame`).

    Args:
        labels: int [H, W] class ids.

    Returns:
        int32 [S, S].
    """
    t = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(FRAME, FRAME), mode="nearest")[0, 0].numpy().astype(np.int32)


def components(labels: np.ndarray) -> np.ndarray:
    """8-connected components of equal label, numbered from 1 (row-major order of values).

    Args:
        labels: int [H, W].

    Returns:
        int32 [H, W] component ids >= 1.
    """
    out = np.zeros(labels.shape, dtype=np.int32)
    offset = 0
    for value in np.unique(labels):
        comp, n = ndimage.label(labels == value, structure=EIGHT)
        out[comp > 0] = comp[comp > 0] + offset
        offset += n
    return out


def _unit(rng: np.random.Generator, dim: int) -> np.ndarray:
    v = rng.standard_normal(dim)
    return v / np.linalg.norm(v)


def identity_vectors(ids: np.ndarray, image_key: str, params: OracleParams) -> np.ndarray:
    """Unit vectors of identities: classes (< BG_BASE) and this image's background components.

    Args:
        ids: int64 [M] identity ids.
        image_key: seeds the background components (they differ between images).
        params: seed, dim, rho.

    Returns:
        float64 [M, d].
    """
    key = zlib.crc32(image_key.encode())
    out = np.empty((len(ids), params.dim))
    for m, ident in enumerate(ids.tolist()):
        if ident >= BG_BASE:
            out[m] = _unit(np.random.default_rng([params.seed, 1, key, ident]), params.dim)
            continue
        e = _unit(np.random.default_rng([params.seed, 0, ident]), params.dim)
        if params.rho > 0 and ident % 2 == 0 and ident >= 2:
            prev = _unit(np.random.default_rng([params.seed, 0, ident - 1]), params.dim)
            e = (e + params.rho * prev) / np.linalg.norm(e + params.rho * prev)
        out[m] = e
    return out


def cell_index() -> np.ndarray:
    """int64 [S, S]: the 37x37 cell (flat y * G + x) each 1024-frame pixel belongs to."""
    axis = np.arange(FRAME) * GRID // FRAME  # (S,)
    return axis[:, None] * GRID + axis[None, :]


class OracleDino:
    """DINOv2 stand-in: tokens from a framed label map (see the module docstring)."""

    def __init__(self, params: OracleParams) -> None:
        self.params = params
        self.name = "oracle_dino"

    def tokens(self, framed: np.ndarray, image_key: str) -> np.ndarray:
        """Oracle patch tokens of one image.

        Args:
            framed: int32 [S, S] label map in the 1024 frame (255 = ignore counts as background).
            image_key: seeds the background identities and the noise.

        Returns:
            float32 [T, d].
        """
        p = self.params
        bg = (framed == 0) | (framed == 255)
        ident = framed.astype(np.int64)  # (S, S)
        bg_comp, _ = ndimage.label(bg, structure=EIGHT)
        ident[bg] = BG_BASE + bg_comp[bg]
        uniq, inverse = np.unique(ident.ravel(), return_inverse=True)  # (M,), (S*S,)
        m = len(uniq)
        hist = np.bincount(cell_index().ravel() * m + inverse, minlength=TOKENS * m)
        hist = hist.reshape(TOKENS, m).astype(np.float64)  # (T, M)
        signal = hist @ identity_vectors(uniq, image_key, p)  # (T, d)
        signal /= np.linalg.norm(signal, axis=1, keepdims=True) + 1e-12
        rng = np.random.default_rng([p.seed, 2, zlib.crc32(image_key.encode())])
        noise = rng.standard_normal((TOKENS, p.dim)) * p.sigma / np.sqrt(p.dim)
        return (signal + noise).astype(np.float32)  # (T, d)


class OracleSam:
    """SAM stand-in: the 8-connected label component under each prompt pixel."""

    name = "oracle_sam"

    def embed(self, framed: np.ndarray) -> np.ndarray:
        """'Embedding' of a framed label map: its component ids.

        Args:
            framed: int32 [S, S].

        Returns:
            float32 [1, S, S] component ids (exact: ids < 2^24).
        """
        return components(framed).astype(np.float32)[None]

    def decode_points(self, embedding: np.ndarray, prompt_xy: np.ndarray) -> torch.Tensor:
        """One mask per prompt: the component containing it.

        Args:
            embedding: float32 [1, S, S] from `embed`.
            prompt_xy: int [P, 2] pixels (x, y) in the 1024 frame.

        Returns:
            bool [P, S, S].
        """
        comp = torch.from_numpy(np.ascontiguousarray(embedding[0]))  # (S, S)
        xy = np.clip(np.asarray(prompt_xy, dtype=np.int64).reshape(-1, 2), 0, FRAME - 1)
        values = comp[torch.from_numpy(xy[:, 1]), torch.from_numpy(xy[:, 0])]  # (P,)
        return comp[None] == values[:, None, None]  # (P, S, S)

    def decode_prompts(
        self,
        embedding: np.ndarray,
        points_xy: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box_xyxy: np.ndarray | None = None,
        mask_logits: np.ndarray | None = None,
        *,
        multimask: bool = False,
    ) -> tuple[np.ndarray, float, np.ndarray]:
        """One mask from points and a box (as `SamEncoder.decode_prompts`, one call). The oracle
        ignores `mask_logits` and `multimask`: the component under the prompts is its only answer.

        The mask is the component holding most positive points (ties: the lower id); with a
        box only, the component with most pixels in the box. Score (SAM's predicted IoU stand-in)
        = share of positive points inside the mask x share of the mask inside the box: low when
        the points straddle objects or the box cuts the region.

        Args:
            embedding: float32 [1, S, S] from `embed`.
            points_xy: float [N, 2] frame pixels (x, y), or None.
            point_labels: int [N], 1 = positive (None: all positive); negatives are ignored.
            box_xyxy: float [4] x0, y0, x1, y1 in frame pixels, or None.

        Returns:
            (mask bool [S, S], score in [0, 1], float32 [256, 256] zeros: no low-res logits).

        Raises:
            ValueError: no positive point and no box.
        """
        comp = embedding[0]  # (S, S)
        pts = np.zeros((0, 2)) if points_xy is None else np.asarray(points_xy).reshape(-1, 2)
        if point_labels is not None:
            pts = pts[np.asarray(point_labels).reshape(-1) == 1]
        box = None if box_xyxy is None else np.asarray(box_xyxy, dtype=np.float64).reshape(4)
        if len(pts) == 0 and box is None:
            raise ValueError("decode_prompts needs a positive point or a box")
        inside = np.zeros(comp.shape, dtype=bool)
        if box is not None:
            x0, y0, x1, y1 = np.clip(np.round(box).astype(np.int64), 0, FRAME)
            inside[y0:y1, x0:x1] = True
        if len(pts):
            xy = np.clip(np.floor(pts).astype(np.int64), 0, FRAME - 1)
            values, counts = np.unique(comp[xy[:, 1], xy[:, 0]], return_counts=True)
            chosen, agree = values[np.argmax(counts)], counts.max() / len(xy)
        elif inside.any():
            values, counts = np.unique(comp[inside], return_counts=True)
            chosen, agree = values[np.argmax(counts)], 1.0
        else:
            raise ValueError(f"decode_prompts: empty box {box_xyxy!r} and no point")
        mask = comp == chosen  # (S, S)
        in_box = float((mask & inside).sum() / mask.sum()) if box is not None else 1.0
        return mask, float(agree * in_box), np.zeros((256, 256), dtype=np.float32)
