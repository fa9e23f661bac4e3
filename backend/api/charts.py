"""Server-side pictures for the status page: progress-bar segments and the acceptance chart.

Inline SVG built from numbers only (no array or image library in the API), cached by value:
the same data gives the same string without rebuilding it.
"""

from __future__ import annotations

from functools import lru_cache
from html import escape

from backend.state.schemas import ProjectCounts

# state -> bar colour, in the order the segments are drawn
SEGMENTS: dict[str, str] = {
    "done": "#2e9e5b",
    "stale": "#9aa5b1",
    "failed": "#d64545",
    "running": "#3b82f6",
    "queued": "#d9e2ec",
}
CHART_W, CHART_H = 560, 190
_PAD_L, _PAD_R, _PAD_T, _PAD_B = 40, 14, 14, 34


def segments(counts: ProjectCounts) -> list[dict[str, object]]:
    """The bar's segments: state, colour, count and width in percent (empty states dropped)."""
    total = sum(getattr(counts, s) for s in SEGMENTS)
    out: list[dict[str, object]] = []
    for state, colour in SEGMENTS.items():
        value = getattr(counts, state)
        if value and total:
            out.append(
                {"state": state, "colour": colour, "count": value, "pct": 100 * value / total}
            )
    return out


def percent_done(counts: ProjectCounts) -> float:
    """Share of predict jobs that have ended (done, stale or failed), in percent."""
    ended = counts.done + counts.stale + counts.failed
    total = ended + counts.queued + counts.running
    return 100 * ended / total if total else 0.0


@lru_cache(maxsize=256)
def acceptance_svg(points: tuple[tuple[int, float, int], ...]) -> str:
    """A line chart of mean acceptance IoU per version.

    Args:
        points: (n, mean IoU in [0, 1], samples) per version, in increasing n.

    Returns:
        An `<svg>` element (text), sized `CHART_W` x `CHART_H`.
    """
    return _iou_svg(points, "acceptance IoU per version", "label(s)")


@lru_cache(maxsize=256)
def quality_svg(points: tuple[tuple[int, float, int], ...]) -> str:
    """A line chart of the held-out IoU per measured version (issue 19).

    Args:
        points: (n, mean over labels of the held-out IoU in [0, 1], tasks scored) per version,
            in increasing n.
    """
    return _iou_svg(points, "held-out IoU per version", "annotated task(s)")


def _iou_svg(points: tuple[tuple[int, float, int], ...], aria: str, counted: str) -> str:
    w, h = CHART_W - _PAD_L - _PAD_R, CHART_H - _PAD_T - _PAD_B
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{CHART_W}" '
        f'height="{CHART_H}" viewBox="0 0 {CHART_W} {CHART_H}" role="img" '
        f'aria-label="{escape(aria)}">'
    ]
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = _PAD_T + h * (1 - tick)
        parts.append(
            f'<line x1="{_PAD_L}" y1="{y:.1f}" x2="{_PAD_L + w}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{_PAD_L - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">'
            f"{tick:.2f}</text>"
        )
    step = w / max(1, len(points) - 1) if len(points) > 1 else 0.0
    xy = []
    for i, (n, iou, count) in enumerate(points):
        x = _PAD_L + (step * i if len(points) > 1 else w / 2)
        y = _PAD_T + h * (1 - min(1.0, max(0.0, iou)))
        xy.append((x, y, n, iou, count))
    if len(xy) > 1:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y, *_ in xy)
        parts.append(f'<polyline points="{path}" class="line"/>')
    every = max(1, len(xy) // 12)  # at most ~12 version labels on the axis
    for i, (x, y, n, iou, count) in enumerate(xy):
        title = escape(f"v{n}: mean IoU {iou:.3f} over {count} {counted}")
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" class="dot"><title>{title}</title>')
        parts.append("</circle>")
        if i % every == 0 or i == len(xy) - 1:
            parts.append(
                f'<text x="{x:.1f}" y="{_PAD_T + h + 18}" class="tick" '
                f'text-anchor="middle">v{n}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)
