"""Synthetic label-map folders for the assignment's hardest case: a seen object and an unseen
look-alike in the same image (issue 18).

`draw_dataset` writes our label-map folder layout (`gfsam.eval.data`: ``images/``, ``masks/``,
``classes.txt``). Classes come in pairs (1, 2), (3, 4), ...: with the oracle's
``--oracle-confuse R`` every even class c looks like c - 1, so a project with ``--seen`` the odd
classes has an unseen look-alike for every label. Each image holds 1 to ``max_objects``
non-overlapping objects (ellipses or rectangles, 0.5 % to 12 % of the image each); with
probability ``pair_share`` it holds an odd class AND its even look-alike side by side. Class
draws are uniform, so every label is also absent from most images (the absence case).

The pixels are flat class colours plus noise: enough for a real encoder to run on, but the
folder exists for the ORACLE encoders (their tokens and masks come from the label maps), which
measure the assignment's logic, never model quality.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# Image size of every drawn image (H, W): a common photo aspect.
SIZE = (384, 512)


@dataclass(frozen=True)
class SyntheticSpec:
    """What `draw_dataset` draws.

    Attributes:
        images: number of images. pairs: class pairs (classes 1 .. 2 * pairs).
        max_objects: objects per image at most. pair_share: probability that an image holds a
            seen (odd) object beside its look-alike (even). seed: every draw.
    """

    images: int = 60
    pairs: int = 3
    max_objects: int = 4
    pair_share: float = 0.4
    seed: int = 0

    def __post_init__(self) -> None:
        ok = self.images >= 1 and 1 <= self.pairs <= 100 and self.max_objects >= 2
        if not ok or not 0.0 <= self.pair_share <= 1.0:
            raise ValueError(f"synthetic spec out of range: {self}")


def _shape(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """bool [h, w]: one ellipse or rectangle covering 0.5-12 % of the image."""
    area = rng.uniform(0.005, 0.12) * h * w
    aspect = rng.uniform(0.5, 2.0)
    bh = min(h - 2, max(4, int(np.sqrt(area / aspect))))
    bw = min(w - 2, max(4, int(np.sqrt(area * aspect))))
    y0, x0 = int(rng.integers(0, h - bh)), int(rng.integers(0, w - bw))
    yy, xx = np.mgrid[:h, :w]
    if rng.random() < 0.5:
        cy, cx = y0 + bh / 2, x0 + bw / 2
        return ((yy - cy) / (bh / 2)) ** 2 + ((xx - cx) / (bw / 2)) ** 2 <= 1.0
    return (yy >= y0) & (yy < y0 + bh) & (xx >= x0) & (xx < x0 + bw)


def draw_labels(spec: SyntheticSpec, index: int) -> np.ndarray:
    """Label map uint8 [H, W] of image `index` (0 background, classes 1 .. 2 * pairs)."""
    rng = np.random.default_rng([spec.seed, index])
    h, w = SIZE
    labels = np.zeros((h, w), dtype=np.uint8)
    classes: list[int] = []
    if rng.random() < spec.pair_share:
        odd = 2 * int(rng.integers(0, spec.pairs)) + 1
        classes += [odd, odd + 1]
    n = int(rng.integers(1, spec.max_objects + 1))
    classes += [int(c) for c in rng.integers(1, 2 * spec.pairs + 1, max(0, n - len(classes)))]
    for cls in classes:
        for _ in range(20):  # place without overlap; give up on a crowded image
            shape = _shape(rng, h, w)
            if not (labels[shape] != 0).any():
                labels[shape] = cls
                break
    return labels


def draw_dataset(out: Path, spec: SyntheticSpec) -> list[str]:
    """Write the folder (images, masks, classes.txt); returns the image names."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    names = [f"syn_{i:04d}" for i in range(spec.images)]
    palette = np.random.default_rng([spec.seed, 1 << 30]).integers(0, 256, (2 * spec.pairs + 1, 3))
    for i, name in enumerate(names):
        labels = draw_labels(spec, i)
        noise = np.random.default_rng([spec.seed, i, 1]).normal(0, 12, (*labels.shape, 3))
        rgb = np.clip(palette[labels] + noise, 0, 255).astype(np.uint8)
        Image.fromarray(rgb).save(out / "images" / f"{name}.png")
        Image.fromarray(labels).save(out / "masks" / f"{name}.png")
    lines = [f"{kind}{k}" for k in range(1, spec.pairs + 1) for kind in ("seen", "lookalike")]
    (out / "classes.txt").write_text("\n".join(lines) + "\n")
    return names
