"""Discovery's endpoints (issue 11): candidate groups, their contact sheets, promotion.

- `GET /projects/{id}/candidates`: the groups (size, member tasks and regions, a
  representative, similarity to each label), read from what the workers wrote.
- `GET /projects/{id}/candidates/{group}.png`: a contact sheet of member crops (mask outlined),
  pasted together with Pillow from the workers' JPEG crops (no numpy here).
- `POST /projects/{id}/candidates/{group}/promote` `{"label": "Bicycle"}`: validated here, done
  by `worker.tasks.promote_group` (202 with the job id).

Same basic auth as `/projects`.
"""

from __future__ import annotations

import io
import unicodedata
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Response
from PIL import Image
from pydantic import BaseModel, Field

from backend.api.deps import BasicAuth, JobsDep, SettingsDep, StoreDep
from backend.api.protocol import ERROR_RESPONSES, MAX_ID
from backend.state.schemas import CandidateGroup, CandidateMember, PromoteJob
from backend.state.store import Store

router = APIRouter(dependencies=[BasicAuth], responses=ERROR_RESPONSES)
ProjectId = Annotated[int, Path(ge=1, le=MAX_ID)]
GroupId = Annotated[int, Path(ge=0, le=MAX_ID)]

MEMBERS_SHOWN = 24  # members listed per group in the JSON (the group's `size` counts all)
SHEET_COLUMNS = 6
SHEET_MAX = 24  # crops on one contact sheet
CELL_PX = 100  # crops are at most 96 px (worker.discovery.candidates.CROP_PX) plus a margin
MAX_LABEL_CHARS = 100


class GroupOut(BaseModel):
    id: int
    size: int
    tasks: list[int]
    representative: CandidateMember | None
    members: list[CandidateMember]
    similarity: dict[str, float]
    contact_sheet: str


class CandidatesResponse(BaseModel):
    project: int
    groups: list[GroupOut]


class PromoteRequest(BaseModel):
    label: str = Field(max_length=1000)


class PromoteResponse(BaseModel):
    job_id: str
    project: int
    group: int
    label: str


def _group(store: Store, project: int, group: int) -> CandidateGroup:
    if store.data.config(project) is None:
        raise HTTPException(404, f"project {project} is unknown (no /setup or event seen)")
    found = store.candidates.group(project, group)
    if found is None:
        raise HTTPException(404, f"project {project} has no candidate group {group}")
    return found


@router.get("/projects/{project}/candidates", response_model=CandidatesResponse)
def candidates(project: ProjectId, store: StoreDep) -> CandidatesResponse:
    """Candidate groups found by discovery, largest first."""
    if store.data.config(project) is None:
        raise HTTPException(404, f"project {project} is unknown (no /setup or event seen)")
    out = []
    for g in store.data.candidate_groups(project):
        keys = list(dict.fromkeys(g.central[:1] + g.members))[:MEMBERS_SHOWN]
        members = [m for m in store.candidates.members(project, keys) if m is not None]
        rep = next((m for m in members if g.central and m.key == g.central[0]), None)
        sheet = f"/projects/{project}/candidates/{g.id}.png"
        out.append(
            GroupOut(
                id=g.id,
                size=g.size,
                tasks=g.tasks,
                representative=rep,
                members=members,
                similarity=g.similarity,
                contact_sheet=sheet,
            )
        )
    return CandidatesResponse(project=project, groups=out)


@router.get(
    "/projects/{project}/candidates/{group}.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def contact_sheet(project: ProjectId, group: GroupId, store: StoreDep) -> Response:
    """The group's member crops on one PNG (central members first)."""
    g = _group(store, project, group)
    keys = list(dict.fromkeys(g.central + g.members))[:SHEET_MAX]
    crops = [c for c in store.candidates.crops(project, keys) if c]
    return Response(sheet_png(crops), media_type="image/png")


def sheet_png(crops: list[bytes]) -> bytes:
    """Crops (JPEG or PNG bytes) on a grid of `SHEET_COLUMNS`, each centred in a `CELL_PX` cell."""
    cols = max(1, min(SHEET_COLUMNS, len(crops)))
    rows = max(1, -(-len(crops) // cols))
    sheet = Image.new("RGB", (cols * CELL_PX, rows * CELL_PX), (32, 32, 32))
    for i, data in enumerate(crops):
        with Image.open(io.BytesIO(data)) as raw:
            im = raw.convert("RGB")
        im.thumbnail((CELL_PX - 4, CELL_PX - 4))
        x = (i % cols) * CELL_PX + (CELL_PX - im.width) // 2
        y = (i // cols) * CELL_PX + (CELL_PX - im.height) // 2
        sheet.paste(im, (x, y))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def valid_label(label: str, existing: list[str], candidate_label: str) -> str:
    """The label as given, or HTTPException 400 (bad) / 409 (exists already)."""
    if not label or label != label.strip() or len(label) > MAX_LABEL_CHARS:
        raise HTTPException(400, f"a label is 1-{MAX_LABEL_CHARS} characters, no outer spaces")
    if any(unicodedata.category(ch).startswith("C") for ch in label):
        raise HTTPException(400, "a label has no control characters")
    if label == candidate_label:
        raise HTTPException(400, f"{label!r} is CANDIDATE_LABEL, not a class")
    if label in existing:
        raise HTTPException(409, f"label {label!r} exists already")
    return label


@router.post(
    "/projects/{project}/candidates/{group}/promote",
    response_model=PromoteResponse,
    status_code=202,
)
def promote(
    project: ProjectId,
    group: GroupId,
    body: PromoteRequest,
    store: StoreDep,
    jobs: JobsDep,
    settings: SettingsDep,
) -> PromoteResponse:
    """Queue turning the group into a new label (`worker.discovery.promote`); 202 with the job
    id."""
    _group(store, project, group)
    cfg = store.data.config(project)
    label = valid_label(body.label, cfg.labels if cfg else [], settings.candidate_label)
    job_id = jobs.enqueue_promote(PromoteJob(project=project, group=group, label=label))
    return PromoteResponse(job_id=job_id, project=project, group=group, label=label)
