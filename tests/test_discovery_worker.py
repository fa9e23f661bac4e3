"""Discovery in the worker and its endpoints (issue 11), on oracle encoders.

The scene (red channel = class id, `tests.fakes.OraclePipeline`): "Cat" (class 1) and "Dog"
(class 3) are the project's labels; class 5 is in every image but in no label. Predicting the
tasks must leave a candidate group holding the class-5 objects; the endpoints show it, and a
promotion adds the label in (fake) Label Studio, seeds it with provisional shots and predicts it.
"""

from __future__ import annotations

import base64
import io
import json
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from PIL import Image

from backend.state.schemas import CandidateMember, PredictJob
from gfsam.calibrate import ScoreMap
from gfsam.taskscore import task_estimate
from tests.fakes import class_png
from tests.service_fixtures import Service
from tests.test_assign_worker import FIXTURES, H, W, region, scene, webhook
from worker.discovery.candidates import unpack_mask
from worker.discovery.promote import PromoteError, add_label
from worker.labelstudio.brush_rle import annotation_masks, rle_to_mask
from worker.prediction.assignment import THRESHOLDS

P = 2
SEED = scene((1, 10, 50, 10, 50), (3, 40, 80, 70, 110))
OTHERS = [
    scene((1, 8, 40, 8, 40), (5, 50, 86, 60, 100)),
    scene((3, 50, 85, 80, 118), (5, 10, 44, 14, 52)),
    scene((1, 55, 88, 10, 45), (5, 8, 40, 70, 108)),
]


def start(
    make_service: Callable[..., Service], config: str | None = None, **changes: object
) -> tuple[Service, list[int]]:
    """Project 2 (Cat, Dog, or `config`) seeded on SEED; the OTHERS predicted (discovery on)."""
    svc = make_service(model="oracle", **changes)
    THRESHOLDS.clear()
    setup = json.loads((FIXTURES / "setup_multilabel.json").read_text())
    svc.ls.configs[P] = config or setup["schema"]
    svc.client.post("/setup", json={**setup, "schema": svc.ls.configs[P]})
    tasks = [svc.ls.add_task(P, class_png(lab))["id"] for lab in (SEED, *OTHERS)]
    ann = svc.ls.annotate(tasks[0], [region(SEED == 1, "Cat"), region(SEED == 3, "Dog")])
    webhook(svc, ann, "ANNOTATION_CREATED")
    svc.run_worker()
    return svc, tasks


def class5_group(svc: Service) -> dict[str, Any]:
    reply = svc.client.get(f"/projects/{P}/candidates")
    assert reply.status_code == 200
    groups = reply.json()["groups"]
    assert groups, "discovery formed no group"
    return groups[0]


def test_undefined_class_forms_one_candidate_group(make_service: Callable[..., Service]) -> None:
    svc, tasks = start(make_service)
    group = class5_group(svc)
    assert group["size"] == 3 and sorted(group["tasks"]) == sorted(tasks[1:])
    for m in group["members"]:
        member = CandidateMember.model_validate(m)
        labels = OTHERS[tasks.index(member.task) - 1]
        mask = unpack_mask(member.mask, (member.height, member.width))
        assert (labels[mask] == 5).mean() > 0.9 and mask.sum() > 0.5 * (labels == 5).sum()
    assert group["representative"]["key"] in {m["key"] for m in group["members"]}
    assert set(group["similarity"]) == {"Cat", "Dog"}
    assert max(group["similarity"].values()) < 0.9
    sheet = svc.client.get(group["contact_sheet"])
    assert sheet.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(sheet.content)).size == (300, 100)  # 3 crops in a row
    assert svc.store.progress.stats().get("discover", 0) >= 3
    for t in tasks[1:]:  # no candidate region without CANDIDATE_LABEL
        (pred,) = [p for p in svc.ls.posts if p["task"] == t]
        assert {r["value"]["brushlabels"][0] for r in pred["result"]} <= {"Cat", "Dog"}


def test_discovery_is_deterministic_and_idempotent(make_service: Callable[..., Service]) -> None:
    svc, _ = start(make_service)
    first = svc.store.candidates.state(P)
    before = svc.store.progress.stats()
    assert before.get("region_cache_miss", 0) > 0  # discovery decoded its region prompts once
    svc.conn.delete(*svc.conn.keys("gfsam:pred:*"))  # predict again: same members, no duplicates
    version = svc.store.data.current_version(P)
    for t in list(svc.ls.tasks)[1:]:
        job = PredictJob(project=P, task=t, version=version, interactive=True)
        svc.jobs.enqueue_predict(job, high=True)
    svc.run_worker()
    assert svc.store.candidates.state(P) == first
    after = svc.store.progress.stats()  # ... and the same version reads them from the store
    assert after.get("region_cache_miss", 0) == before["region_cache_miss"]
    assert after.get("region_cache_hit", 0) - before.get("region_cache_hit", 0) > 0


def test_discovery_off(make_service: Callable[..., Service]) -> None:
    svc, _ = start(make_service, discover=False)
    assert svc.client.get(f"/projects/{P}/candidates").json()["groups"] == []
    assert svc.client.get(f"/projects/{P}/candidates/0.png").status_code == 404


def test_candidate_label_regions(make_service: Callable[..., Service]) -> None:
    config = json.loads((FIXTURES / "setup_multilabel.json").read_text())["schema"]
    config = config.replace(
        '<Label value="Dog" background="blue"/>', '<Label value="Dog"/><Label value="New?"/>'
    )
    svc, tasks = start(make_service, config, candidate_label="New?")
    gid = class5_group(svc)["id"]
    for t in tasks[1:]:
        (pred,) = [p for p in svc.ls.posts if p["task"] == t]
        cands = [r for r in pred["result"] if r["value"]["brushlabels"] == ["New?"]]
        assert len(cands) == 1 and cands[0]["meta"]["group"] == gid
        assert cands[0]["score"] <= 0.05
        real = [r["score"] for r in pred["result"] if r not in cands]
        # the item score counts the real labels' regions only (`gfsam.taskscore`)
        masks = [rle_to_mask(r["value"]["rle"], W, H) for r in pred["result"] if r not in cands]
        regions = list(zip(masks, real, strict=True))
        assert pred["score"] == pytest.approx(ScoreMap.raw(task_estimate(regions, (H, W))))
        mask = annotation_masks(pred["result"], from_name="tag")["New?"]
        assert (OTHERS[tasks.index(t) - 1][mask] == 5).mean() > 0.9


def test_promote_validation(make_service: Callable[..., Service]) -> None:
    svc, _ = start(make_service)
    gid = class5_group(svc)["id"]
    url = f"/projects/{P}/candidates/{gid}/promote"
    assert (
        svc.client.post(f"/projects/{P}/candidates/99/promote", json={"label": "X"}).status_code
        == 404
    )
    assert svc.client.post(url, json={"label": "Cat"}).status_code == 409
    for bad in ("", " Bird", "a\nb", "x" * 101):
        assert svc.client.post(url, json={"label": bad}).status_code == 400, bad
    assert svc.client.post(url, json={}).status_code == 422


def test_promote_adds_the_label_and_predicts_it(make_service: Callable[..., Service]) -> None:
    svc, tasks = start(make_service)
    gid = class5_group(svc)["id"]
    reply = svc.client.post(f"/projects/{P}/candidates/{gid}/promote", json={"label": "Bird"})
    assert reply.status_code == 202 and reply.json()["job_id"].startswith(f"promote-{P}-{gid}-")
    before = svc.store.data.current_version(P)
    svc.ls.posts.clear()
    svc.run_worker()
    assert '<Label value="Bird"/>' in svc.ls.configs[P]
    refs = svc.store.data.reference_set(P)
    assert refs.version != before and refs.shots["Bird"]
    assert all(s.provisional and s.annotation < 0 for s in refs.shots["Bird"])
    assert "Bird" in svc.store.data.config(P).labels  # type: ignore[union-attr]
    assert refs.shot_ids()["Bird"] == []
    birds = 0
    for t in tasks[1:]:
        (pred,) = [p for p in svc.ls.posts if p["task"] == t]
        assert pred["model_version"] == refs.version
        masks = annotation_masks(pred["result"], from_name="tag")
        if "Bird" in masks:
            birds += 1
            assert (OTHERS[tasks.index(t) - 1][masks["Bird"]] == 5).mean() > 0.9
    assert birds >= 2
    assert all(g["id"] != gid for g in svc.client.get(f"/projects/{P}/candidates").json()["groups"])
    # A person's first "Bird" replaces the provisional shots.
    t = tasks[1]
    ann = svc.ls.annotate(t, [region(OTHERS[0] == 5, "Bird")])
    webhook(svc, ann, "ANNOTATION_CREATED")
    svc.run_worker()
    shots = svc.store.data.reference_set(P).shots["Bird"]
    assert [(s.annotation, s.provisional) for s in shots] == [(ann["id"], False)]


def test_add_label_keeps_the_config() -> None:
    xml = (
        '<View><Image name="i" value="$image"/>'
        '<BrushLabels name="tag" toName="i"><Label value="A"/></BrushLabels></View>'
    )
    out = add_label(xml, "tag", 'B "x" & <y>')
    assert out.startswith(xml[: xml.index("</BrushLabels>")]) and out.endswith(
        "</BrushLabels></View>"
    )
    assert add_label(out, "tag", 'B "x" & <y>') == out
    for broken, control in ((xml, "other"), ("<View>", "tag")):
        try:
            add_label(broken, control, "B")
        except PromoteError:
            continue
        raise AssertionError("expected PromoteError")


def test_pack_mask_is_the_half_covered_blocks() -> None:
    """A member's stored mask: a 256-square block is set when at least half its pixels are
    (integer counts since issue 17; the same bits as the float mean it replaced)."""
    from gfsam.types import FRAME
    from worker.discovery.candidates import MASK_SIDE, pack_mask

    rng = np.random.default_rng(0)
    f = FRAME // MASK_SIDE
    dense = rng.random((FRAME, FRAME)) > rng.random((FRAME, 1))  # every block density
    speck = np.zeros((FRAME, FRAME), dtype=bool)
    speck[513:519, 6:7] = True  # off the block grid: a box of blocks, half of them set
    blob = np.zeros((FRAME, FRAME), dtype=bool)
    blob[200:611, 301:1024] = rng.random((411, 723)) < 0.6  # to the frame's edge
    for frame in (dense, speck, blob, np.zeros((FRAME, FRAME), dtype=bool)):
        small = frame.reshape(MASK_SIDE, f, MASK_SIDE, f).mean((1, 3)) >= 0.5
        back = unpack_mask(pack_mask(frame), (FRAME, FRAME))
        assert np.array_equal(back, np.repeat(np.repeat(small, f, 0), f, 1))
        # the very text (a member's key is its digest): zlib level 9 of the packed bits
        text = base64.b64encode(zlib.compress(np.packbits(small).tobytes(), 9)).decode()
        assert pack_mask(frame) == text


def test_parsed_states_hand_over_only_the_text_they_were_written_as() -> None:
    """The worker keeps the grouping state it wrote parsed: the same text read back gives that
    object (once: a retry parses afresh), any other text is parsed, and continuing the kept
    object writes what parsing its text and continuing would."""
    from gfsam.discover import CandidateGroups
    from worker.discovery.candidates import GROUP_PARAMS, ParsedStates

    rng = np.random.default_rng(5)
    feats = rng.standard_normal((30, 16)).astype(np.float32)
    cache, plain = ParsedStates(projects=2), None
    text: str | None = None
    for i, f in enumerate(feats):
        state = cache.take(P, text)
        fresh = CandidateGroups.from_json(text) if text else CandidateGroups(GROUP_PARAMS)
        if i:
            assert cache.take(P, text) is not state  # handed over once
        state.add(f"k{i}", f)
        fresh.add(f"k{i}", f)
        text = state.to_json()
        assert text == fresh.to_json()
        cache.keep(P, text, state)
        plain = fresh
    assert plain is not None and text is not None
    assert cache.take(P, text).to_json() == plain.to_json()
    other = CandidateGroups(GROUP_PARAMS)
    other.add("x", feats[0])
    cache.keep(P, text, plain)
    assert cache.take(P, other.to_json()) is not plain  # another writer's text: parsed
    kept = other.to_json()
    for q in (1, 2, 3):
        cache.keep(q, kept, other)
    assert cache.take(1, kept) is not other  # only the last 2 projects are kept
    assert cache.take(3, kept) is other


def test_posted_score_counts_the_assignments_near_misses(
    make_service: Callable[..., Service], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rejected candidate just below its floor lowers the task score the worker posts: half
    its unpainted area counts as possibly missed (`gfsam.taskscore.task_estimate`: the
    regions' area x score over what they paint plus that, and as work to do). The candidate is
    added to the real assignment of each task."""
    import worker.prediction.inference as inference
    from gfsam.assign import Instance
    from gfsam.taskscore import NEAR_MISS

    corner = np.zeros((H, W), dtype=bool)
    corner[:6, :6] = True  # background in every scene
    real = inference.assign

    def assign(*args: Any, **kwargs: Any) -> Any:
        asg = real(*args, **kwargs)
        asg.candidates.append(Instance("Cat", corner, 0.1, 0.49, 1.0, "Cat", 0.5))
        return asg

    monkeypatch.setattr(inference, "assign", assign)
    svc, tasks = start(make_service, discover=False)
    for t in tasks[1:]:
        (pred,) = [p for p in svc.ls.posts if p["task"] == t]
        masks = [rle_to_mask(r["value"]["rle"], W, H) for r in pred["result"]]
        regions = list(zip(masks, [r["score"] for r in pred["result"]], strict=True))
        painted = np.logical_or.reduce(masks) if masks else np.zeros((H, W), dtype=bool)
        near = int((corner & ~painted).sum())
        assert near == 36
        right = sum(float(m.sum()) * s for m, s in regions)
        shown = sum(float(m.sum()) for m, _ in regions)  # region areas summed
        iou = right / (shown + NEAR_MISS * near) if shown else 0.0
        wrong = sum(float(m.sum()) * (1 - s) for m, s in regions)
        work = (wrong + NEAR_MISS * near) / (H * W)
        assert pred["score"] == pytest.approx(iou * (1 - work))  # unmeasured: the raw value
        assert pred["score"] < ScoreMap.raw(task_estimate(regions, (H, W)))
