"""The operator's view: server-rendered status pages (issue 13), behind the same auth as
/projects.

- `GET /`: every known project with its live version and a progress bar.
- `GET /status/projects/{p}`: one project: progress per version, live version, each label's
  shots as thumbnails, acceptance IoU per version (inline SVG), the quality measured on the
  project's annotations (issue 19: per-label table, held-out IoU per version), candidate
  groups (when discovery wrote some), recent failures and the workers.
- `GET /status/thumbs/{sha}.png`: a shot's thumbnail (written by the worker; content-addressed,
  so cached by the browser for good).

Every page and thumbnail is sent with `SECURITY_HEADERS` (no framing, no MIME sniffing, a
Content-Security-Policy that allows only our own images and the pages' inline styles; issue 22).

Cheap by construction: no model work, and a bounded number of Redis commands per page (reads
are per version kept, per label shot and per worker, never per task; tests/test_status_page.py
counts them). Pages reload themselves every `status_refresh_s`.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Response
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from backend.api import charts
from backend.api.deps import BasicAuth, SettingsDep, StoreDep
from backend.api.protocol import MAX_ID
from backend.state.fleet import list_workers
from backend.state.settings import Settings
from backend.state.store import Store

router = APIRouter(dependencies=[BasicAuth])

MAX_PROJECTS = 200  # listed on `/`
FAILURES_SHOWN = 20
_SHA = re.compile(r"[0-9a-f]{64}")
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
}
_templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
)
_templates.filters["age"] = lambda s: _age(s)


def _age(seconds: float | None) -> str:
    """'4 s', '3 min', '2 h 5 min', '3 d'; '-' for None."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d"


def _render(name: str, settings: Settings, **context: Any) -> HTMLResponse:
    html = _templates.get_template(name).render(
        refresh_s=settings.status_refresh_s,
        now=time.strftime("%Y-%m-%d %H:%M:%S"),
        model_class=settings.model_class,
        **context,
    )
    return HTMLResponse(html, headers={"Cache-Control": "no-store", **SECURITY_HEADERS})


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def index(store: StoreDep, settings: SettingsDep) -> HTMLResponse:
    """Every known project: live version, shots, progress bar."""
    projects = []
    for p in store.data.projects()[:MAX_PROJECTS]:
        refs, counts = store.data.reference_set(p), store.progress.counts(p)
        projects.append(
            {
                "id": p,
                "version": refs.version,
                "shots": sum(len(s) for s in refs.shots.values()),
                "counts": counts,
                "segments": charts.segments(counts),
                "pct": charts.percent_done(counts),
            }
        )
    return _render("index.html", settings, projects=projects)


@router.get("/status/projects/{project}", response_class=HTMLResponse, include_in_schema=False)
def project_page(
    project: Annotated[int, PathParam(ge=1, le=MAX_ID)], store: StoreDep, settings: SettingsDep
) -> HTMLResponse:
    """One project's page (see the module docstring)."""
    cfg = store.data.config(project)
    if cfg is None:
        raise HTTPException(404, f"project {project} is unknown (no /setup or event seen)")
    return _render("project.html", settings, **project_view(store, settings, project, cfg.labels))


def project_view(store: Store, settings: Settings, p: int, labels: list[str]) -> dict[str, Any]:
    """What the project page shows, read with a bounded number of Redis commands."""
    refs, counts = store.data.reference_set(p), store.progress.counts(p)
    versions = store.progress.version_progress(p)
    failures, standing = store.progress.recent_failures(p, FAILURES_SHOWN)
    workers, total_workers = list_workers(store.r, settings.worker_lease_s)
    points = tuple(
        (v.n, round(v.acceptance_mean_iou, 4), v.acceptance_count)
        for v in reversed(versions)
        if v.acceptance_mean_iou is not None
    )
    quality = quality_view(store, p)
    shots = {label: refs.shots.get(label, []) for label in labels}
    shots.update({k: v for k, v in refs.shots.items() if k not in shots and v})  # removed labels
    now = time.time()
    return {
        "project": p,
        "version": refs.version,
        "ready": refs.ready,
        "labels": labels,
        "counts": counts,
        "segments": charts.segments(counts),
        "pct": charts.percent_done(counts),
        "versions": [
            {"v": v, "segments": charts.segments(v), "pct": charts.percent_done(v)}
            for v in versions
        ],
        "shots": shots,
        "chart": Markup(charts.acceptance_svg(points)) if points else None,
        "quality": quality,
        "groups": store.data.candidate_groups(p),
        "rejects": next(iter(store.progress.rejects(p, limit=1)), None),
        "warn_share": settings.reject_warn_share,
        "failures": [(f, now - f.at) for f in failures],
        "repeated": {f.what for f in failures if f.current},
        "standing_failures": standing,
        "workers": workers,
        "total_workers": total_workers,
    }


def quality_view(store: Store, p: int) -> dict[str, Any] | None:
    """The newest measured version's per-label table and the held-out IoU per version (issue
    19; two Redis reads); None until the project has been measured."""
    reports = store.quality.reports(p)
    if not reports:
        return None
    points = []
    for r in reports:
        ious = [q.iou for q in r.tuned.values() if q.iou is not None]
        if ious:
            points.append((r.n, round(sum(ious) / len(ious), 4), len(r.tasks)))
    last = reports[-1]
    before = last.previous.default if last.previous and last.previous.version else {}
    rows = [
        {
            "label": label,
            "n": q.n,
            "iou": q.iou,
            "tuned_iou": last.tuned[label].iou if label in last.tuned else None,
            "previous_iou": before[label].iou if label in before else None,
            "precision": q.precision,
            "recall": q.recall,
            "false_paint": q.false_paint,
            "choice": last.choices.get(label),
        }
        for label, q in last.default.items()
    ]
    return {
        "version": last.version,
        "tasks": len(last.tasks),
        "skipped": last.skipped,
        "previous": last.previous,
        "rows": rows,
        "tuning": store.quality.tuning(p),
        "chart": Markup(charts.quality_svg(tuple(points))) if points else None,
    }


@router.get("/status/thumbs/{sha}.png", include_in_schema=False)
def thumbnail(sha: str, store: StoreDep) -> Response:
    """A shot's thumbnail PNG; immutable (named by the content hash of its reference)."""
    if not _SHA.fullmatch(sha):
        raise HTTPException(404, "not a thumbnail name")
    png = store.data.get_thumbnail(sha)
    if png is None:
        raise HTTPException(404, "no thumbnail for this shot (encoded before thumbnails?)")
    cache = {"Cache-Control": "private, max-age=86400, immutable"}
    return Response(png, media_type="image/png", headers={**cache, **SECURITY_HEADERS})
