"""The worker's assignment (issue 10) on oracle encoders: per-instance regions with scores, an
undefined look-alike left unpainted, thresholds computed once per shot set, candidates returned,
and an accepted multi-instance prediction read back as one mask per label (not a correction).

The scene (red channel = class id, `tests.fakes.OraclePipeline`): class 1 is "Cat", 3 is "Dog",
class 2 is not in the project and looks like class 1 (oracle rho 0.6).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from backend.state.schemas import ReferenceSet
from tests.fakes import brush_region, class_png
from tests.service_fixtures import Service
from worker import runtime
from worker.labelstudio.brush_rle import annotation_masks, rle_to_mask
from worker.prediction import inference
from worker.prediction.assignment import THRESHOLDS

FIXTURES = Path(__file__).parent / "fixtures" / "ls_requests"
H, W = 96, 128
P = 2  # the multi-label project


def scene(*boxes: tuple[int, int, int, int, int]) -> np.ndarray:
    """int32 [H, W] class map: (class, y0, y1, x0, x1) boxes on background 0."""
    labels = np.zeros((H, W), dtype=np.int32)
    for c, y0, y1, x0, x1 in boxes:
        labels[y0:y1, x0:x1] = c
    return labels


SEED = scene((1, 10, 50, 10, 50), (3, 40, 80, 70, 110))
CROWD = scene((1, 8, 38, 8, 40), (1, 55, 88, 10, 45), (3, 50, 85, 80, 118), (2, 8, 40, 70, 110))
NO_CAT = scene((3, 50, 85, 80, 118), (2, 8, 40, 20, 60))


def region(mask: np.ndarray, label: str) -> dict[str, Any]:
    return {**brush_region(mask, label), "id": f"r{label}{int(mask.argmax())}"}


def start(make_service: Callable[..., Service], **changes: object) -> tuple[Service, list[int]]:
    """Project 2 (Cat, Dog) on the oracle pipeline, seeded on SEED; CROWD and NO_CAT predicted."""
    svc = make_service(model="oracle", **changes)
    THRESHOLDS.clear()
    setup = json.loads((FIXTURES / "setup_multilabel.json").read_text())
    svc.ls.configs[P] = setup["schema"]
    svc.client.post("/setup", json=setup)
    tasks = [svc.ls.add_task(P, class_png(lab))["id"] for lab in (SEED, CROWD, NO_CAT)]
    ann = svc.ls.annotate(tasks[0], [region(SEED == 1, "Cat"), region(SEED == 3, "Dog")])
    webhook(svc, ann, "ANNOTATION_CREATED")
    svc.run_worker()
    return svc, tasks


def webhook(svc: Service, ann: dict[str, Any], action: str) -> None:
    body = copy.deepcopy(json.loads((FIXTURES / "webhook_annotation_created.json").read_text()))
    body["action"] = action
    body["annotation"].update({k: ann[k] for k in ("id", "task", "result", "updated_at")})
    body["task"].update(id=ann["task"], data=svc.ls.tasks[ann["task"]]["data"])
    body["project"].update(id=P, label_config=svc.ls.configs[P])
    assert svc.client.post("/webhook", json=body).status_code == 200


def posted(svc: Service, task: int) -> dict[str, Any]:
    (pred,) = [p for p in svc.ls.posts if p["task"] == task]
    return pred


def regions_by_label(pred: dict[str, Any]) -> dict[str, list[tuple[np.ndarray, float]]]:
    out: dict[str, list[tuple[np.ndarray, float]]] = {}
    for r in pred["result"]:
        mask = rle_to_mask(r["value"]["rle"], W, H)
        out.setdefault(r["value"]["brushlabels"][0], []).append((mask, r["score"]))
    return out


def test_split_paints_instances_with_scores_and_leaves_the_look_alike(
    make_service: Callable[..., Service],
) -> None:
    svc, (_, crowd, no_cat) = start(make_service)
    got = regions_by_label(posted(svc, crowd))
    assert sorted((label, len(r)) for label, r in got.items()) == [("Cat", 2), ("Dog", 1)]
    for label, cls in (("Cat", 1), ("Dog", 3)):
        for mask, score in got[label]:
            assert 0.5 < score <= 1.0
            assert (CROWD[mask] == cls).mean() > 0.9  # each region is one instance of its class
    cats = [m for m, _ in got["Cat"]]
    assert (
        not (cats[0] & cats[1]).any() and len({r["id"] for r in posted(svc, crowd)["result"]}) == 3
    )
    assert THRESHOLDS.computed == 2  # once per label's shot set, not per task


def test_a_lone_look_alike_is_left_unpainted_once_two_cat_shots_agree(
    make_service: Callable[..., Service],
) -> None:
    """With ONE Cat shot the cross-image level of Cat is unknown, so the presence floor sits a
    small step above the shot's background and the look-alike alone on NO_CAT is painted Cat
    (the recall-first choice, README "How it behaves"). Annotating CROWD gives Cat a second
    shot; the two agree, the floor rises to their cross-image level, and the re-prediction of
    NO_CAT leaves the look-alike unpainted while the Dog stays."""
    svc, (_, crowd, no_cat) = start(make_service)
    first = regions_by_label(posted(svc, no_cat))
    assert set(first) == {"Cat", "Dog"}
    (cat,) = [m for m, _ in first["Cat"]]
    assert (NO_CAT[cat] == 2).mean() > 0.9  # what was painted Cat is the look-alike
    ann = svc.ls.annotate(crowd, [region(CROWD == 1, "Cat"), region(CROWD == 3, "Dog")])
    webhook(svc, ann, "ANNOTATION_CREATED")
    svc.run_worker()
    refs = svc.store.data.reference_set(P)
    assert len(refs.shots["Cat"]) == 2
    (latest,) = [
        p for p in svc.ls.posts if p["task"] == no_cat and p["model_version"] == refs.version
    ]
    lone = regions_by_label(latest)
    assert list(lone) == ["Dog"]  # the look-alike (class 2) is nobody's: left unpainted
    painted = np.logical_or.reduce([m for rs in lone.values() for m, _ in rs])
    assert not (painted & (NO_CAT == 2)).any()


def test_reject_counts_per_label_reach_the_api_without_double_counting(
    make_service: Callable[..., Service],
) -> None:
    """Once Cat has two agreeing shots (CROWD annotated), the look-alike Cat's GF-SAM finds on
    NO_CAT is rejected: counted for Cat at that version, in instances and pixels; predicting
    the task again overwrites its row."""
    svc, (_, crowd, no_cat) = start(make_service)
    ann = svc.ls.annotate(crowd, [region(CROWD == 1, "Cat"), region(CROWD == 3, "Dog")])
    webhook(svc, ann, "ANNOTATION_CREATED")
    svc.run_worker()
    refs = svc.store.data.reference_set(P)

    def cat_row() -> dict[str, Any]:
        st = svc.client.get(f"/projects/{P}").json()
        (v,) = [r for r in st["rejects"] if r["version"] == refs.version]
        assert v["tasks"] == 1  # NO_CAT, the one unlabeled task, was predicted at it
        (cat,) = [r for r in v["labels"] if r["label"] == "Cat"]
        return cat

    cat = cat_row()
    assert cat["rejected_instances"] >= 1
    assert cat["rejected_pixels"] >= 0.9 * int((NO_CAT == 2).sum())
    assert cat["rejected_share"] == 1.0 and cat["warning"]  # all Cat found there was rejected
    rt, cfg = runtime.get(), svc.store.data.config(P)
    assert cfg is not None
    image = svc.ls.media[svc.ls.tasks[no_cat]["data"]["image"]]
    inference.predict_task(rt, svc.store, cfg, refs, no_cat, image)
    assert cat_row() == cat  # the same task again: its row replaced, nothing counted twice


def test_argmax_absorbs_the_look_alike(make_service: Callable[..., Service]) -> None:
    """The same scene under ASSIGN=argmax: the look-alike is painted Cat (what split prevents)."""
    svc, (_, crowd, no_cat) = start(make_service, assign="argmax")
    masks = annotation_masks(posted(svc, no_cat)["result"], from_name="tag")
    assert (NO_CAT[masks["Cat"]] == 2).mean() > 0.9
    assert [len(r) for r in regions_by_label(posted(svc, crowd)).values()] == [1, 1]
    assert THRESHOLDS.computed == 0


def test_candidates_and_stable_region_ids(make_service: Callable[..., Service]) -> None:
    svc, (_, crowd, no_cat) = start(make_service)
    rt, cfg = runtime.get(), svc.store.data.config(P)
    assert cfg is not None
    crowd_image = svc.ls.media[svc.ls.tasks[crowd]["data"]["image"]]
    refs: ReferenceSet = svc.store.data.reference_set(P)
    again = inference.predict_task(rt, svc.store, cfg, refs, crowd, crowd_image).prediction
    assert [r["id"] for r in again.result] == [r["id"] for r in posted(svc, crowd)["result"]]
    assert THRESHOLDS.computed == 2
    # two agreeing Cat shots: NO_CAT's look-alike becomes a candidate (kept for discovery)
    ann = svc.ls.annotate(crowd, [region(CROWD == 1, "Cat"), region(CROWD == 3, "Dog")])
    webhook(svc, ann, "ANNOTATION_CREATED")
    svc.run_worker()
    refs = svc.store.data.reference_set(P)
    image = svc.ls.media[svc.ls.tasks[no_cat]["data"]["image"]]
    out = inference.predict_task(rt, svc.store, cfg, refs, no_cat, image)
    (cand,) = [c for c in out.candidates if (NO_CAT[c.mask] == 2).mean() > 0.9]
    assert cand.label == "Cat" and cand.source == "Cat" and cand.similarity < 0.6
    (latest,) = [
        p for p in svc.ls.posts if p["task"] == no_cat and p["model_version"] == refs.version
    ]
    assert out.prediction.result == latest["result"]  # same ids, same regions


def test_accepted_multi_instance_prediction_is_not_a_correction(
    make_service: Callable[..., Service],
) -> None:
    svc, (seed, crowd, _) = start(make_service)
    version = svc.store.data.reference_set(P).version
    pred = posted(svc, crowd)
    (ls_pred,) = svc.ls.predictions_for(crowd)
    accepted = svc.ls.annotate(
        crowd, copy.deepcopy(pred["result"]), parent_prediction=ls_pred["id"]
    )
    webhook(svc, accepted, "ANNOTATION_CREATED")
    svc.run_worker()
    refs = svc.store.data.reference_set(P)
    assert refs.version == version  # no new shot: the annotator changed nothing
    assert {label: [s.annotation for s in shots] for label, shots in refs.shots.items()} == {
        "Cat": [seed_ann(svc, seed)],
        "Dog": [seed_ann(svc, seed)],
    }
    st = svc.client.get(f"/projects/{P}").json()
    (sample,) = [s for s in st["acceptance"] if s["annotation"] == accepted["id"]]
    assert sample["iou"] == {"Cat": 1.0, "Dog": 1.0}  # per label, over the union of its regions


def seed_ann(svc: Service, task: int) -> int:
    (ann,) = [a for a in svc.ls.annotations.values() if a["task"] == task]
    return int(ann["id"])
