"""Oracle encoders: DINOv2 tokens and SAM masks made from ground-truth label maps.

They measure the LOGIC of the pipeline (PNA, PMC, gates, assignment, discovery), never model
quality. Both sit behind the interfaces `gfsam.pipeline.GFSAM` uses, in the same squashed 1024
frame (`gfsam.image`: a label map is squashed with torch nearest, like `mask_to_frame`).

**Tokens** (`OracleDino.tokens`): each 37x37 cell (the 1024-frame pixels x * 1024 / 37 ..
(x + 1) * 1024 / 37, which is what one 14 px patch of the 518 px DINOv2 input sees) gets
``normalize(sum_i h_i v_i) + sigma * n / sqrt(d)``: ``h`` the cell's area histogram over the
image's identities, ``v_i`` their unit vectors (dimension ``d``), ``n`` seeded standard Gaussian
noise. An identity is an 8-connected component: of a class (an *instance*), or of the
background (label 0 and 255 together).

**Knobs** and the exact cosines they produce (``e_c`` = seeded class vector; two independent
random unit vectors in ``d`` dimensions have cosine mean 0, sd ``1 / sqrt(d)`` = 0.125 at d = 64):

- ``class_cos`` C (``--oracle-class-cos``, 1.0 = every instance is its class vector): instance
  k of class c in an image is ``sqrt(C) e_c + sqrt(1 - C) u``, ``u`` a seeded unit vector made
  orthogonal to ``e_c``. Cosine instance / class vector = ``sqrt(C)`` exactly; between two
  instances ``C + (1 - C) u1.u2``: mean C, sd ``(1 - C) / sqrt(d - 1)`` (C = 0.8: 0.80 +- 0.025).
- ``rho`` R (``--oracle-confuse``): every even class c >= 2 looks like c - 1,
  ``e_c = normalize(e_c0 + R e_{c-1})``, cosine ``(g + R) / sqrt(1 + 2 R g + R^2)`` with
  ``g = e_c0.e_{c-1}`` (mean 0, sd 0.125): about ``R / sqrt(1 + R^2)``, i.e. R = 0.6 gives
  0.51 and R = 0.95 gives 0.69, not R. Between instances of the two classes: C times that.
- ``bg_share`` B (``--oracle-bg-share``): each background component, with probability B, takes
  one of ``n_stuff`` (4) shared "stuff" identities (sky, road, wall) that recur across images,
  varied per component like an instance (``sqrt(C) s + sqrt(1 - C) u``), instead of a fresh
  random vector (B = 0: today). Two background components of different images share a stuff
  identity with probability ``B^2 / n_stuff``; their cosine is then C on average, else ~0.
- ``sam_error`` P (``--oracle-sam-error``): see `OracleSam`.

`knob_cosines` measures these cosines on the seeded vectors; the eval CLI prints them.

**SAM** (`OracleSam`): ``embed`` returns the framed map of 8-connected components (class
components numbered >= 1, background components <= -1; float32, exact below 2^24) and
``decode_points`` the component under each prompt pixel: an ideal SAM for semantic regions.
With ``sam_error`` P, each (image, prompt pixel) decode is, with probability P (seeded by the
embedding and the pixel, so a prompt always gives the same mask, as real SAM does), degraded in
one of three ways chosen uniformly: a **part** (the object cut by a line at a random angle
through its centroid, the prompt's side kept), a **merge** with a touching non-background
component (a bleed when there is none), a **bleed** into the background (the background
pixels within ``BLEED`` (5 %) of the object's larger bbox side, square dilation, at least
2 px; on a background component a part instead). `decode_prompts`
answers a box + points prompt (discovery) with the component most positive points fall in,
scored by how well the prompt agrees with it, degraded the same way.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from gfsam.types import FRAME, GRID, TOKENS

ORACLE_NOTE = "oracle encoders: measures the pipeline's logic, NOT model quality"
EIGHT = np.ones((3, 3), dtype=bool)
# Background identities of the token map live above every class instance id.
BG_BASE = 1 << 40
# Class instance identity = class id * INSTANCE_BASE + component index (1-based).
INSTANCE_BASE = 1 << 20
# Bleed radius as a share of the object's larger bbox side (origin: the issue's "a few percent
# of the object's size"; not tuned).
BLEED = 0.05
# Seed streams (the first entries of every seeded generator; fixed, never reused).
_CLASS, _BG, _NOISE, _INST, _STUFF_PICK, _STUFF, _STUFF_VAR, _SAM, _SAM_PROMPT = range(9)


@dataclass(frozen=True)
class OracleParams:
    """Oracle knobs (module docstring: the cosines each one gives).

    Attributes:
        sigma: noise-to-signal norm ratio of the tokens (``--oracle-noise``).
        rho: look-alike strength of even classes towards c - 1 (``--oracle-confuse``).
        dim: token channels d.
        seed: seeds every vector, the noise, the stuff draws and the SAM errors.
        class_cos: expected cosine between two instances of one class (``--oracle-class-cos``).
        bg_share: probability that a background component is a shared stuff identity
            (``--oracle-bg-share``).
        sam_error: probability that a decode is degraded (``--oracle-sam-error``).
        n_stuff: number of shared stuff identities.
    """

    sigma: float = 0.0
    rho: float = 0.0
    dim: int = 64
    seed: int = 0
    class_cos: float = 1.0
    bg_share: float = 0.0
    sam_error: float = 0.0
    n_stuff: int = 4

    def __post_init__(self) -> None:
        ok = self.sigma >= 0 and self.rho >= 0 and self.dim >= 2 and self.n_stuff >= 1
        ok = ok and 0.0 <= self.class_cos <= 1.0
        ok = ok and 0.0 <= self.bg_share <= 1.0 and 0.0 <= self.sam_error <= 1.0
        if not ok:
            raise ValueError(
                "oracle needs sigma >= 0, rho >= 0, dim >= 2, n_stuff >= 1 and class_cos, "
                f"bg_share, sam_error in [0, 1]: {self}"
            )

    def describe(self) -> str:
        """One line: the knobs and the cosines they give (`knob_cosines`)."""
        cos = knob_cosines(self)
        return (
            f"oracle knobs: noise {self.sigma:g}, class-cos {self.class_cos:g} "
            f"(instance pairs: cosine {cos['instance_mean']:.3f} +- {cos['instance_sd']:.3f}), "
            f"confuse {self.rho:g} (cosine of even class to c - 1: {cos['confuse_mean']:.3f}), "
            f"bg-share {self.bg_share:g} ({self.n_stuff} stuff identities), "
            f"sam-error {self.sam_error:g}, seed {self.seed}"
        )


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
    """8-connected components of equal label, numbered from 1 (ascending order of values).

    Args:
        labels: int [H, W] (non-negative).

    Returns:
        int32 [H, W] component ids >= 1.
    """
    out = np.zeros(labels.shape, dtype=np.int32)
    offset = 0
    present = np.flatnonzero(np.bincount(np.asarray(labels, dtype=np.int64).ravel()))
    for value in present.tolist():
        comp, n = ndimage.label(labels == value, structure=EIGHT)
        out[comp > 0] = comp[comp > 0] + offset
        offset += n
    return out


def _unit(rng: np.random.Generator, dim: int) -> np.ndarray:
    v = rng.standard_normal(dim)
    return v / np.linalg.norm(v)


def _key(image_key: str) -> int:
    return zlib.crc32(image_key.encode())


def class_vector(cls: int, params: OracleParams) -> np.ndarray:
    """Unit vector of a class (with ``rho``: even classes pulled towards c - 1).

    Returns:
        float64 [d].
    """
    e = _unit(np.random.default_rng([params.seed, _CLASS, cls]), params.dim)
    if params.rho > 0 and cls % 2 == 0 and cls >= 2:
        prev = _unit(np.random.default_rng([params.seed, _CLASS, cls - 1]), params.dim)
        e = (e + params.rho * prev) / np.linalg.norm(e + params.rho * prev)
    return e


def _vary(base: np.ndarray, rng: np.random.Generator, cos: float) -> np.ndarray:
    """``sqrt(cos) base + sqrt(1 - cos) u``, u a unit vector orthogonal to base (unit result)."""
    if cos >= 1.0:
        return base
    u = rng.standard_normal(len(base))
    u -= (u @ base) * base
    u /= np.linalg.norm(u)
    return math.sqrt(cos) * base + math.sqrt(1.0 - cos) * u


def instance_vector(cls: int, k: int, image_key: str, params: OracleParams) -> np.ndarray:
    """Unit vector of instance `k` (component index) of class `cls` in one image."""
    rng = np.random.default_rng([params.seed, _INST, _key(image_key), cls, k])
    return _vary(class_vector(cls, params), rng, params.class_cos)


def stuff_vector(s: int, params: OracleParams) -> np.ndarray:
    """Unit vector of shared stuff identity `s` (0 .. n_stuff - 1)."""
    return _unit(np.random.default_rng([params.seed, _STUFF, s]), params.dim)


def background_vector(k: int, image_key: str, params: OracleParams) -> np.ndarray:
    """Unit vector of background component `k` of one image: a varied stuff identity with
    probability ``bg_share``, else a fresh random vector (exactly today's when bg_share = 0)."""
    key = _key(image_key)
    if params.bg_share > 0:
        pick = np.random.default_rng([params.seed, _STUFF_PICK, key, k])
        if pick.random() < params.bg_share:
            s = int(pick.integers(params.n_stuff))
            rng = np.random.default_rng([params.seed, _STUFF_VAR, key, k])
            return _vary(stuff_vector(s, params), rng, params.class_cos)
    return _unit(np.random.default_rng([params.seed, _BG, key, (1 << 20) + k]), params.dim)


def identity_vectors(ids: np.ndarray, image_key: str, params: OracleParams) -> np.ndarray:
    """Unit vectors of one image's identities (`identity_map` ids).

    Args:
        ids: int64 [M]: ``c * INSTANCE_BASE + k`` (instance k of class c) or ``BG_BASE + k``
            (background component k).
        image_key: seeds the instances and the background components (they differ per image).
        params: the knobs.

    Returns:
        float64 [M, d].
    """
    out = np.empty((len(ids), params.dim))
    for m, ident in enumerate(ids.tolist()):
        if ident >= BG_BASE:
            out[m] = background_vector(ident - BG_BASE, image_key, params)
        else:
            cls, k = divmod(ident, INSTANCE_BASE)
            out[m] = instance_vector(cls, k, image_key, params)
    return out


def identity_map(framed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Identity of each pixel: 8-connected components of classes and of background.

    Args:
        framed: int [S, S] label map (0 and 255 are background).

    Returns:
        (int64 [S, S] index into the ids, int64 [M] ids as `identity_vectors` reads them).
    """
    bg = (framed == 0) | (framed == 255)
    comp = components(np.where(bg, 0, framed))  # background (value 0) numbered first
    values = np.zeros(int(comp.max()) + 1, dtype=np.int64)  # component -> its label value
    values[comp.ravel()] = np.where(bg, 0, framed).ravel()
    ids = np.empty(len(values) - 1, dtype=np.int64)
    for value in np.unique(values[1:]).tolist():
        members = np.flatnonzero(values[1:] == value)  # contiguous, ascending
        base = BG_BASE if value == 0 else value * INSTANCE_BASE
        ids[members] = base + np.arange(1, len(members) + 1)
    return comp.astype(np.int64) - 1, ids


def knob_cosines(params: OracleParams, n: int = 64) -> dict[str, float]:
    """The cosines the knobs give on this seed's vectors (`n` classes / images sampled).

    Returns:
        ``instance_mean`` / ``instance_sd``: two instances of one class (different images);
        ``confuse_mean``: even class vector to its c - 1 (nan without rho); ``stuff_mean``:
        two components of one stuff identity in different images.
    """
    inst = [
        instance_vector(c, 1, "a", params) @ instance_vector(c, 1, "b", params)
        for c in range(1, n + 1)
    ]
    conf = [class_vector(c, params) @ class_vector(c - 1, params) for c in range(2, 2 * n, 2)]
    stuff = [
        _vary(
            stuff_vector(0, params), np.random.default_rng([params.seed, 99, i]), params.class_cos
        )
        @ _vary(
            stuff_vector(0, params), np.random.default_rng([params.seed, 98, i]), params.class_cos
        )
        for i in range(n)
    ]
    return {
        "instance_mean": float(np.mean(inst)),
        "instance_sd": float(np.std(inst)),
        "confuse_mean": float(np.mean(conf)) if params.rho > 0 else float("nan"),
        "stuff_mean": float(np.mean(stuff)),
    }


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
            image_key: seeds the instances, background identities and the noise.

        Returns:
            float32 [T, d].
        """
        p = self.params
        inverse, uniq = identity_map(framed)  # (S, S), (M,)
        m = len(uniq)
        hist = np.bincount(cell_index().ravel() * m + inverse.ravel(), minlength=TOKENS * m)
        hist = hist.reshape(TOKENS, m).astype(np.float64)  # (T, M)
        signal = hist @ identity_vectors(uniq, image_key, p)  # (T, d)
        signal /= np.linalg.norm(signal, axis=1, keepdims=True) + 1e-12
        rng = np.random.default_rng([p.seed, _NOISE, _key(image_key)])
        noise = rng.standard_normal((TOKENS, p.dim)) * p.sigma / np.sqrt(p.dim)
        return (signal + noise).astype(np.float32)  # (T, d)


def _box(mask: np.ndarray, pad: int) -> tuple[slice, slice]:
    """The bounding box of a non-empty mask widened by `pad` (clipped to the frame)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    h, w = mask.shape
    return (
        slice(max(int(rows[0]) - pad, 0), min(int(rows[-1]) + pad + 1, h)),
        slice(max(int(cols[0]) - pad, 0), min(int(cols[-1]) + pad + 1, w)),
    )


def degrade(
    comp: np.ndarray, obj: np.ndarray, xy: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """One degraded SAM answer (module docstring): a part, a merge or a bleed of `obj`.

    Args:
        comp: [S, S] component ids (`OracleSam.embed`, background <= -1). obj: bool [S, S]
            the ideal mask (non-empty). xy: the prompt pixel (its side of a cut is kept).
        rng: the decode's draw.

    Returns:
        bool [S, S] (a new array). A bleed of a background component is a part instead.
    """
    mode = int(rng.integers(3))
    angle = float(rng.uniform(0.0, math.pi))
    pick = float(rng.random())
    on_background = bool(comp[xy[1], xy[0]] < 0)
    if mode == 1:
        by, bx = _box(obj, 1)
        inner = obj[by, bx]
        ring = ndimage.binary_dilation(inner, structure=EIGHT) & ~inner
        near = np.unique(comp[by, bx][ring])
        near = near[near > 0]
        if len(near):
            other = near[min(int(pick * len(near)), len(near) - 1)]
            return obj | (comp == other)
        mode = 2
    by, bx = _box(obj, 0)
    if mode == 2 and not on_background:
        radius = max(2, math.ceil(BLEED * max(by.stop - by.start, bx.stop - bx.start)))
        cy, cx = _box(obj, radius)
        near = ndimage.maximum_filter1d(obj[cy, cx].view(np.uint8), 2 * radius + 1, axis=0)
        near = ndimage.maximum_filter1d(near, 2 * radius + 1, axis=1).astype(bool)
        out = obj.copy()
        out[cy, cx] |= near & (comp[cy, cx] < 0)
        return out
    ys, xs = np.nonzero(obj[by, bx])
    ys, xs = ys + by.start, xs + bx.start
    cy_, cx_ = ys.mean(), xs.mean()
    ny, nx = math.sin(angle), math.cos(angle)
    side = (xy[1] - cy_) * ny + (xy[0] - cx_) * nx >= 0
    keep = ((ys - cy_) * ny + (xs - cx_) * nx >= 0) == side
    out = np.zeros_like(obj)
    out[ys[keep], xs[keep]] = True
    return out


class OracleSam:
    """SAM stand-in: the 8-connected label component under each prompt pixel (with
    ``params.sam_error``: sometimes a part, a merge or a bleed of it; module docstring)."""

    name = "oracle_sam"

    def __init__(self, params: OracleParams | None = None) -> None:
        self.params = params or OracleParams()

    def embed(self, framed: np.ndarray) -> np.ndarray:
        """'Embedding' of a framed label map: its component ids.

        Args:
            framed: int32 [S, S].

        Returns:
            float32 [1, S, S]: class components >= 1, background components (0 and 255)
            <= -1 (exact: ids < 2^24).
        """
        comp = components(framed)
        bg = (framed == 0) | (framed == 255)
        comp[bg] = -comp[bg]
        return comp.astype(np.float32)[None]

    def _maybe_degrade(
        self, comp: np.ndarray, obj: np.ndarray, xy: tuple[int, int], salt: list[int]
    ) -> np.ndarray:
        p = self.params
        if p.sam_error <= 0:
            return obj
        rng = np.random.default_rng([p.seed, *salt])
        if rng.random() >= p.sam_error:
            return obj
        return degrade(comp, obj, xy, rng)

    def decode_points(self, embedding: np.ndarray, prompt_xy: np.ndarray) -> torch.Tensor:
        """One mask per prompt: the component containing it (sometimes degraded).

        Args:
            embedding: float32 [1, S, S] from `embed`.
            prompt_xy: int [P, 2] pixels (x, y) in the 1024 frame.

        Returns:
            bool [P, S, S].
        """
        comp = torch.from_numpy(np.ascontiguousarray(embedding[0]))  # (S, S)
        xy = np.clip(np.asarray(prompt_xy, dtype=np.int64).reshape(-1, 2), 0, FRAME - 1)
        values = comp[torch.from_numpy(xy[:, 1]), torch.from_numpy(xy[:, 0])]  # (P,)
        masks = comp[None] == values[:, None, None]  # (P, S, S)
        if self.params.sam_error <= 0 or len(xy) == 0:
            return masks
        ids = embedding[0]
        digest = zlib.crc32(np.ascontiguousarray(ids).tobytes())
        for i, (x, y) in enumerate(xy.tolist()):
            obj = masks[i].numpy()
            out = self._maybe_degrade(ids, obj, (x, y), [_SAM, digest, x, y])
            if out is not obj:
                masks[i] = torch.from_numpy(out)
        return masks

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
        if self.params.sam_error > 0:
            ys, xs = np.nonzero(mask)
            at = (int(xy[0, 0]), int(xy[0, 1])) if len(pts) else (int(xs[0]), int(ys[0]))
            where = np.clip(np.round(pts), 0, FRAME).astype(np.int64).ravel().tolist()
            where += [] if box is None else np.clip(np.round(box), 0, FRAME).astype(int).tolist()
            ident = int(chosen) + (1 << 24)  # background ids are negative; seeds are not
            digest = zlib.crc32(np.ascontiguousarray(comp).tobytes())
            mask = self._maybe_degrade(comp, mask, at, [_SAM_PROMPT, digest, ident, *where])
        in_box = float((mask & inside).sum() / mask.sum()) if box is not None else 1.0
        return mask, float(agree * in_box), np.zeros((256, 256), dtype=np.float32)

    def decode_boxes(
        self, embedding: np.ndarray, points_xy: np.ndarray, boxes_xyxy: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """One mask per (point, box) pair: `decode_prompts` of each pair (as
        `SamEncoder.decode_boxes`: masks bool [B, S, S], scores float32 [B])."""
        from gfsam.find_all import decode_boxes_one_by_one

        return decode_boxes_one_by_one(self.decode_prompts, embedding, points_xy, boxes_xyxy)
