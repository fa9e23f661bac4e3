"""Output of the protocols: IoU accumulators, a progress bar, tagged lines, JSON and a PNG plot.

Every line a protocol writes carries the model's note (oracle: "logic, not model quality";
random weights: "meaningless"), and so does every JSON file. The plot is drawn with PIL (no
matplotlib dependency).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar

import numpy as np
from PIL import Image, ImageDraw

T = TypeVar("T")


@dataclass
class IoUMeter:
    """Per-class intersection and union accumulated over samples (HSNet's AverageMeter).

    ``fg[c]`` and ``bg[c]`` hold [intersection, union] pixel counts of class c's foreground and
    of its background (FB-IoU).
    """

    fg: dict[int, list[int]] = field(default_factory=dict)
    bg: dict[int, list[int]] = field(default_factory=dict)

    def add(
        self, cls: int, pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None
    ) -> None:
        """Accumulate one binary prediction of class `cls`.

        Args:
            cls: class id. pred, gt: bool [H, W]. valid: bool [H, W] pixels that count.
        """
        if valid is not None:
            pred, gt = pred & valid, gt & valid
        v = valid if valid is not None else np.ones_like(gt)
        for acc, p, g in ((self.fg, pred, gt), (self.bg, ~pred & v, ~gt & v)):
            i_u = acc.setdefault(cls, [0, 0])
            i_u[0] += int(np.count_nonzero(p & g))
            i_u[1] += int(np.count_nonzero(p | g))

    def per_class(self) -> dict[int, float]:
        """class -> foreground IoU in % (classes never present nor predicted are left out)."""
        return {c: 100.0 * i / u for c, (i, u) in sorted(self.fg.items()) if u > 0}

    def miou(self) -> float:
        """Mean over classes of the accumulated foreground IoU, in %."""
        per = self.per_class()
        return float(np.mean(list(per.values()))) if per else 0.0

    def fbiou(self) -> float:
        """HSNet FB-IoU in %: mean of (sum I / sum U) over {background, foreground}."""
        if not self.fg:
            return 0.0
        parts = [
            sum(i for i, _ in a.values()) / max(sum(u for _, u in a.values()), 1)
            for a in (self.bg, self.fg)
        ]
        return 100.0 * float(np.mean(parts))


class Output:
    """Writes the protocol's lines, each tagged with the model's note when there is one."""

    def __init__(self, note: str | None, stream: TextIO | None = None) -> None:
        self.note, self.stream = note, stream or sys.stdout

    def line(self, text: str) -> None:
        tag = f"[{self.note}] " if self.note else ""
        self.stream.write(f"{tag}{text}\n")
        self.stream.flush()


def progress(items: Sequence[T], what: str, stream: TextIO | None = None) -> Iterator[T]:
    """Yield `items` while drawing a one-line progress bar on stderr."""
    out = stream or sys.stderr
    total, start = len(items), time.perf_counter()
    for k, item in enumerate(items):
        yield item
        done = k + 1
        bar = "#" * (30 * done // max(total, 1))
        rate = done / max(time.perf_counter() - start, 1e-9)
        out.write(f"\r{what} [{bar:<30}] {done}/{total} {rate:.1f}/s")
        out.flush()
    out.write("\n")


def write_json(path: Path, payload: dict[str, Any], note: str | None) -> None:
    """Write named numbers; the note goes in first so nobody reads them without it."""
    body = ({"note": note} if note else {}) | payload
    path.write_text(json.dumps(body, indent=2, sort_keys=False) + "\n")


def plot_curve(
    path: Path,
    ys: Iterable[float],
    title: str,
    note: str | None,
    size: tuple[int, int] = (640, 400),
) -> None:
    """Draw y (in %, 0-100) against the step index as a line chart PNG.

    Args:
        path: output file. ys: one value per step. title: top line. note: second line.
        size: (width, height) in pixels.
    """
    values = list(ys)
    w, h = size
    left, right, top, bottom = 48, 16, 44, 32
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    draw.text((left, 6), title, fill="black")
    if note:
        draw.text((left, 22), note, fill=(200, 0, 0))
    draw.rectangle((left, top, w - right, h - bottom), outline="black")
    for pct in (0, 25, 50, 75, 100):
        y = h - bottom - (h - top - bottom) * pct / 100
        draw.line((left, y, w - right, y), fill=(220, 220, 220))
        draw.text((8, y - 6), f"{pct:3d}%", fill="black")
    n = max(len(values) - 1, 1)
    pts = [
        (
            left + (w - left - right) * k / n,
            h - bottom - (h - top - bottom) * min(max(v, 0), 100) / 100,
        )
        for k, v in enumerate(values)
    ]
    if len(pts) > 1:
        draw.line(pts, fill=(0, 90, 200), width=2)
    draw.text(
        (left, h - bottom + 8), f"step 0 .. {len(values) - 1} (images annotated)", fill="black"
    )
    img.save(path)
