"""Promoting a candidate group against a real Label Studio 1.23.2 and `python -m backend.run`
(issue 11, "Done when": the new label shows in the project config and in the predictions of the
new version on the other tasks).

With tiny random-weight models discovery's own output is arbitrary, so the group is made
deterministic: the test starts the redis-server the backend uses (``REDIS_URL``) and writes one
group through the backend's store (`Store.candidates.update`, the compare-and-set discovery
itself uses, merged into whatever discovery wrote meanwhile). Its members are real tasks of the
LS project with real masks: the COCO elephant mask of 000000286874 and a box on each other
image. Discovery stays on (the default) and runs next to it.

Flow: a BrushLabels project with one label ("Ground"), three images, the backend connected; one
annotation (seed) so the first version pre-annotates the other tasks; the group written;
`POST /projects/{id}/candidates/{group}/promote {"label": "Discovered"}`; then LS's config has
the label, the backend moved to version n + 1 with provisional shots of "Discovered" seeded from
the group, every never-labelled task has a prediction of that version whose regions use only the
config's labels, the group is gone, and the seed annotation is still there, unchanged.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image, ImageOps

from backend.state.candidates import DiscoveryUpdate
from backend.state.jobs import connect
from backend.state.schemas import CandidateMember
from backend.state.settings import Settings
from backend.state.store import Store
from gfsam.discover import CandidateGroups
from gfsam.encoders.dinov2 import DINOV2_SPECS
from gfsam.image import mask_to_frame
from tests.e2e_helpers import (
    ELEPHANTS,
    PHASE_S,
    Backend,
    annotation_result,
    backend_env,
    natural_size,
    running_backend,
    version_n,
    wait_for,
)
from tests.lsserver import LabelStudio, free_port
from tests.service_fixtures import start_redis, stop_process
from worker.discovery.candidates import GROUP_PARAMS, crop_jpeg, groups_view, pack_mask
from worker.labelstudio.brush_rle import annotation_masks, rle_to_mask

pytestmark = pytest.mark.e2e

EXISTING = "Ground"
NEW = "Discovered"
CONFIG = (
    '<View><Image name="image" value="$image"/>'
    f'<BrushLabels name="tag" toName="image"><Label value="{EXISTING}"/></BrushLabels></View>'
)
ELEPHANT = "000000286874"  # its COCO mask is the group's real member
PROMOTE_S = 300.0  # LS config change, 3 provisional shots encoded, pre-annotation of 2 tasks


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The backend's Redis, started here so that the test can write discovery's state."""
    proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    stop_process(proc)


@pytest.fixture(scope="module")
def backend(
    ls: LabelStudio, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    """`python -m backend.run` (tiny models, discovery on) on the test's redis-server."""
    base = tmp_path_factory.mktemp("backend")
    port = free_port()
    env = backend_env(ls, port, base / "data") | {"REDIS_URL": redis_url}
    with running_backend(env, port, base) as server:
        yield server


@pytest.fixture(scope="module")
def store(redis_url: str) -> Iterator[Store]:
    """The backend's own store module on the backend's Redis."""
    conn = connect(redis_url)
    settings = Settings(redis_url=redis_url, _env_file=None)
    yield Store(conn, settings, owner="e2e-test")
    conn.close()


# ---------------------------------------------------------------------------- the group


def _image(path: Path) -> np.ndarray:
    """RGB [H, W, 3] as a browser (and the worker) decodes it: EXIF orientation applied."""
    with Image.open(path) as raw:
        return np.array(ImageOps.exif_transpose(raw).convert("RGB"))


def _box(size: tuple[int, int]) -> np.ndarray:
    w, h = size
    mask = np.zeros((h, w), dtype=bool)
    mask[int(0.3 * h) : int(0.7 * h), int(0.35 * w) : int(0.65 * w)] = True
    return mask


def _member(task: int, path: Path, mask: np.ndarray) -> tuple[CandidateMember, bytes]:
    """A member record as discovery writes it (frame mask packed) and its crop."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
    packed = pack_mask(mask_to_frame(mask).numpy())
    member = CandidateMember(
        key=f"{task}-{hashlib.sha1(packed.encode()).hexdigest()[:10]}",
        task=task,
        group=-1,
        bbox=[100 * x0 / w, 100 * y0 / h, 100 * (x1 - x0) / w, 100 * (y1 - y0) / h],
        width=w,
        height=h,
        score=0.9,
        origin="cluster",
        mask=packed,
    )
    return member, crop_jpeg(_image(path), mask, (x0, y0, x1, y1))


def _orthogonal_feature(state: CandidateGroups, dim: int) -> np.ndarray:
    """A unit feature orthogonal to every existing group's mean: the members open their own
    group and nothing discovery finds later is likely to join it."""
    v = np.random.default_rng(11).standard_normal(dim)
    means = [g.mean for g in state.groups.values()]
    if means:
        basis, _ = np.linalg.qr(np.stack(means).T.astype(np.float64))
        v -= basis @ (basis.T @ v)
    assert np.linalg.norm(v) > 1e-6, "no direction left for a new group"
    return v / np.linalg.norm(v)


def write_group(store: Store, project: int, members: list[tuple[CandidateMember, bytes]]) -> int:
    """Add one group of `members` to the project's discovery state (compare-and-set, merged
    with what discovery wrote); returns its id."""
    found: list[int] = []

    def compute(text: str | None) -> DiscoveryUpdate:
        state = CandidateGroups.from_json(text) if text else CandidateGroups(GROUP_PARAMS)
        dim = next(
            (len(g.total) for g in state.groups.values()), DINOV2_SPECS["dinov2_tiny"].out_channels
        )
        feature = _orthogonal_feature(state, dim)
        before = {k for g in state.groups.values() for k in g.members}
        gids = {state.add(m.key, feature) for m, _ in members}
        assert len(gids) == 1, gids
        found[:] = list(gids)
        after = {k for g in state.groups.values() for k in g.members}
        return DiscoveryUpdate(
            state=state.to_json(),
            groups=groups_view(state, {}),
            members={m.key: m.model_copy(update={"group": found[0]}) for m, _ in members},
            crops={m.key: png for m, png in members},
            dropped=sorted(before - after),
        )

    assert store.candidates.update(project, compute)
    return found[0]


# ---------------------------------------------------------------------------- probes


def _candidates(backend: Backend, project: int) -> list[dict[str, Any]]:
    reply = requests.get(f"{backend.url}/projects/{project}/candidates", timeout=10)
    reply.raise_for_status()
    groups: list[dict[str, Any]] = reply.json()["groups"]
    return groups


def _predicted(
    ls: LabelStudio, project: int, tasks: list[int], version: str
) -> dict[int, dict[str, Any]] | None:
    """Each task's prediction of `version`, once every task has one (the per-version counts
    are cheap; the predictions, noise masks of ~1 MB, are read once they can be complete)."""
    counts = ls.json("GET", f"/api/projects/{project}/model-versions/")
    if counts.get(version, 0) < len(tasks):
        return None
    out = {}
    for t in tasks:
        preds = [p for p in ls.predictions(task=t) if p["model_version"] == version]
        if not preds:
            return None
        (out[t],) = preds
    return out


# ---------------------------------------------------------------------------- the test


def test_promote_group_adds_label_and_predicts_it(
    ls: LabelStudio, backend: Backend, store: Store
) -> None:
    started = time.monotonic()
    images = sorted(ELEPHANTS.glob("*.jpg"))[:3]
    assert any(p.stem == ELEPHANT for p in images), images
    project = ls.create_project(CONFIG, title="gfsam-discovery")["id"]
    ls.import_images(project, images)
    files = {p.name: p for p in images}
    paths = {t["id"]: files[t["data"]["image"].rsplit("-", 1)[-1]] for t in ls.list_tasks(project)}
    ls.connect_ml_backend(project, backend.url)
    wait_for(
        "the worker's sync to register the project",
        lambda: backend.known_project(project),
        ls,
        backend,
        180,
    )

    # A seed annotation ("Ground": the bottom fifth) on a task that is not the elephant one.
    seed = next(t for t, p in paths.items() if p.stem != ELEPHANT)
    w, h = natural_size(paths[seed])
    ground = np.zeros((h, w), dtype=bool)
    ground[int(0.8 * h) :, :] = True
    seed_result = annotation_result({EXISTING: ground})
    annotation = ls.create_annotation(seed, seed_result)
    unlabelled = sorted(t for t in paths if t != seed)
    status = wait_for(
        "the first reference set",
        lambda: (s := backend.project(project))["ready"] and s,
        ls,
        backend,
        PHASE_S,
    )
    v1 = status["model_version"]
    wait_for(
        f"{v1} predictions on the unlabelled tasks",
        lambda: _predicted(ls, project, unlabelled, v1),
        ls,
        backend,
        PHASE_S,
    )
    print(f"first version {v1} pre-annotated at {time.monotonic() - started:.0f}s")

    # The group: the elephant's COCO mask on its task, a box on every other task.
    members = []
    for t, path in sorted(paths.items()):
        if path.stem == ELEPHANT:
            mask = np.array(Image.open(ELEPHANTS / f"{ELEPHANT}_mask.png")) > 0
            assert mask.shape == natural_size(path)[::-1]
        else:
            mask = _box(natural_size(path))
        members.append(_member(t, path, mask))
    gid = write_group(store, project, members)
    listed = {g["id"]: g for g in _candidates(backend, project)}
    assert gid in listed and sorted(listed[gid]["tasks"]) == sorted(paths), listed.get(gid)
    sheet = requests.get(f"{backend.url}/projects/{project}/candidates/{gid}.png", timeout=10)
    assert sheet.status_code == 200 and sheet.headers["content-type"] == "image/png"

    reply = requests.post(
        f"{backend.url}/projects/{project}/candidates/{gid}/promote",
        json={"label": NEW},
        timeout=10,
    )
    assert reply.status_code == 202, reply.text
    promoted = time.monotonic()

    # Label Studio's config has the label; nothing else in it changed.
    config = wait_for(
        f"<Label value={NEW!r}> in Label Studio's config",
        lambda: f'<Label value="{NEW}"' in (c := ls.get_project(project)["label_config"]) and c,
        ls,
        backend,
        PROMOTE_S,
    )
    assert config.replace(f'<Label value="{NEW}"/>', "") == CONFIG, config

    # The backend: version n + 1, the label seeded with provisional shots from the group.
    status = wait_for(
        f"a version after {v1} with {NEW!r} shots",
        lambda: (s := backend.project(project))["model_version"] != v1 and NEW in s["shots"] and s,
        ls,
        backend,
        PROMOTE_S,
    )
    v2 = status["model_version"]
    assert version_n(v2) == version_n(v1) + 1, (v1, v2)
    assert status["shots"][NEW] == []  # provisional shots have no annotation
    assert status["shots"][EXISTING] == [annotation["id"]]
    assert NEW in status["config"]["labels"]
    refs = store.data.reference_set(project)
    shots = refs.shots[NEW]
    assert refs.version == v2 and len(shots) == len(members), shots
    assert all(s.provisional and s.annotation < 0 for s in shots)
    assert {s.task for s in shots} == set(paths)
    # the group is gone (promotion swaps the version first, then drops the group)
    wait_for(
        f"group {gid} dropped after promotion",
        lambda: gid not in {g["id"] for g in _candidates(backend, project)},
        ls,
        backend,
        PROMOTE_S,
    )

    # Every never-labelled task: a prediction of v2 with the config's labels only.
    preds = wait_for(
        f"{v2} predictions on every never-labelled task",
        lambda: _predicted(ls, project, unlabelled, v2),
        ls,
        backend,
        PROMOTE_S,
    )
    allowed = {EXISTING, NEW}
    regions = {lb: 0 for lb in allowed}
    for t, pred in preds.items():
        size = natural_size(paths[t])
        for region in pred["result"]:
            assert (region["from_name"], region["to_name"]) == ("tag", "image"), region
            (label,) = region["value"]["brushlabels"]
            assert label in allowed, region
            assert rle_to_mask(region["value"]["rle"], *size).shape == size[::-1]
            regions[label] += 1
    print(f"promoted in {time.monotonic() - promoted:.0f}s; v2 regions per label {regions}")

    # The seed annotation is still valid: LS returns it unchanged under the new config.
    kept = ls.json("GET", f"/api/annotations/{annotation['id']}/")
    assert not kept.get("was_cancelled")
    masks = annotation_masks(kept["result"], from_name="tag")
    assert set(masks) == {EXISTING} and np.array_equal(masks[EXISTING], ground)
    assert not backend.project(project)["failures"]
    # Discovery ran on both versions' predictions next to the written group (no mismatch).
    assert store.progress.stats().get("discover", 0) >= 2 * len(unlabelled)
    print(f"test total {time.monotonic() - started:.0f}s")
