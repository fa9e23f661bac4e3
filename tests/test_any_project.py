"""Any segmentation project through the worker (issue 20), on the fake Label Studio and the fake
pipeline: polygon and rectangle references and predictions, a smart rectangle seeding a brush
project, geometry cleaned before posting, and the find-all / teach gestures of the click lane."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from gfsam.decoded import DecodedMasks
from gfsam.encodings import Prediction, TargetEncoding
from gfsam.types import GRID
from tests.fakes import (
    FAKE_DINO,
    FAKE_SAM,
    NO_EMBEDDING,
    FakePipeline,
    box_mask,
    brush_region,
    fake_model,
    no_segmentation,
    png_bytes,
)
from tests.project_helpers import FIXTURES
from tests.service_fixtures import Service, wait_until
from worker import runtime
from worker.clicks import click as click_lane
from worker.labelstudio.brush_rle import rle_to_mask

P = 3
W, H = 80, 60


def config(control: str, labels: tuple[str, ...] = ("Object",), extra: str = "") -> str:
    inner = "".join(f'<Label value="{lb}"/>' for lb in labels)
    return (
        f'<View><Image name="image" value="$image"/><{control} name="tag" toName="image">'
        f"{inner}</{control}>{extra}</View>"
    )


SMART = (
    '<RectangleLabels name="smart" toName="image" smart="true"><Label value="Object"/>'
    '</RectangleLabels><KeyPointLabels name="kp" toName="image" smart="true">'
    '<Label value="Object"/><Label value="Object (all)"/><Label value="Object (teach)"/>'
    "</KeyPointLabels>"
)


def start(svc: Service, xml: str, n: int = 3) -> list[int]:
    svc.ls.configs[P] = xml
    setup = json.loads((FIXTURES / "setup.json").read_text())
    reply = svc.client.post("/setup", json={**setup, "project": f"{P}.1", "schema": xml})
    assert reply.status_code == 200
    svc.run_worker()  # the sync registers the project
    return [svc.ls.add_task(P, png_bytes(W, H, seed=i))["id"] for i in range(n)]


def save(svc: Service, task: int, result: list[dict[str, Any]]) -> None:
    ann = svc.ls.annotate(task, result)
    body = copy.deepcopy(json.loads((FIXTURES / "webhook_annotation_created.json").read_text()))
    body["annotation"].update({k: ann[k] for k in ("id", "task", "result", "updated_at")})
    body["task"].update(id=task, data=svc.ls.tasks[task]["data"])
    body["project"].update(id=P, label_config=svc.ls.configs[P])
    assert svc.client.post("/webhook", json=body).status_code == 200
    svc.run_worker()


def base(kind: str, name: str = "tag") -> dict[str, Any]:
    return {
        "from_name": name,
        "to_name": "image",
        "type": kind,
        "original_width": W,
        "original_height": H,
        "image_rotation": 0,
    }


def polygon(points: list[list[float]], label: str = "Object") -> dict[str, Any]:
    return {**base("polygonlabels"), "value": {"points": points, "polygonlabels": [label]}}


def rectangle(x: float, y: float, w: float, h: float, name: str = "tag") -> dict[str, Any]:
    value = {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": ["Object"]}
    return {**base("rectanglelabels", name), "value": value}


def posts(svc: Service, task: int) -> list[dict[str, Any]]:
    return [p for p in svc.ls.posts if p["task"] == task]


def test_a_polygon_project_gets_polygons(make_service: Callable[..., Service]) -> None:
    svc = make_service()
    tasks = start(svc, config("PolygonLabels"))
    save(svc, tasks[0], [polygon([[10, 10], [60, 10], [60, 70], [10, 70]])])
    shot = svc.store.data.reference_set(P).shots["Object"][0]
    assert not shot.box_derived and svc.pipeline.calls["reference"] == 1
    for task in tasks[1:]:
        (pred,) = posts(svc, task)
        (region,) = pred["result"]
        assert region["type"] == "polygonlabels" and region["from_name"] == "tag"
        assert region["value"]["polygonlabels"] == ["Object"]
        points = region["value"]["points"]
        assert len(points) >= 3 and all(0 <= x <= 100 and 0 <= y <= 100 for x, y in points)


def test_a_rectangle_project_learns_from_boxes_and_answers_boxes(
    make_service: Callable[..., Service],
) -> None:
    svc = make_service()
    tasks = start(svc, config("RectangleLabels"))
    save(svc, tasks[0], [rectangle(20, 20, 50, 40)])
    (shot,) = svc.store.data.reference_set(P).shots["Object"]
    assert shot.box_derived
    (call,) = svc.pipeline.sam.calls  # the box became a SAM box prompt on the reference image
    assert call["box"] is not None and call["points"] is None
    for task in tasks[1:]:
        (pred,) = posts(svc, task)
        (region,) = pred["result"]
        assert region["type"] == "rectanglelabels"
        v = region["value"]
        assert 0 < v["width"] <= 100 and 0 < v["height"] <= 100 and v["rotation"] == 0


def test_a_smart_rectangle_seeds_a_brush_project(make_service: Callable[..., Service]) -> None:
    svc = make_service()
    tasks = start(svc, config("BrushLabels", extra=SMART))
    save(svc, tasks[0], [rectangle(10, 10, 40, 50, name="smart")])
    (shot,) = svc.store.data.reference_set(P).shots["Object"]
    assert shot.box_derived and svc.pipeline.sam.calls[-1]["box"] is not None
    for task in tasks[1:]:
        (pred,) = posts(svc, task)
        assert [r["type"] for r in pred["result"]] == ["brushlabels"]


@dataclass
class SpeckledPipeline(FakePipeline):
    """FakePipeline whose masks carry a 2-pixel speck and a 1-pixel hole."""

    def predict_labels(
        self,
        target: TargetEncoding,
        references: Any,
        *,
        decoded: DecodedMasks | None = None,
    ) -> dict[str, Prediction]:
        out = super().predict_labels(target, references, decoded=decoded)
        for label, pred in out.items():
            mask = pred.mask.copy()
            ys, xs = np.nonzero(mask)
            mask[int(ys.mean()), int(xs.mean())] = False  # a hole
            mask[0, 0:2] = True  # a speck
            out[label] = Prediction(mask, pred.score, False, False, no_segmentation())
        return out


def test_posted_geometry_has_no_specks_or_small_holes(
    make_service: Callable[..., Service],
) -> None:
    svc = make_service()
    runtime.install(svc.settings, fake_model(SpeckledPipeline()), runtime.get().ls)
    tasks = start(svc, config("BrushLabels"))
    save(svc, tasks[0], [brush_region(box_mask(H, W, 10, 40, 10, 50), "Object")])
    (pred,) = posts(svc, tasks[1])
    mask = rle_to_mask(pred["result"][0]["value"]["rle"], W, H)
    assert not mask[0, 0:2].any()  # the speck is gone
    ys, xs = np.nonzero(mask)
    assert mask[int(ys.mean()), int(xs.mean())]  # the hole is filled


def keypoint(label: str, x: float = 50, y: float = 50) -> dict[str, Any]:
    return {
        **base("keypointlabels", "kp"),
        "is_positive": True,
        "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": [label]},
    }


def smart_click(svc: Service, task: int, label: str) -> httpx.Response:
    body = {
        "tasks": [{"id": task, "data": {"image": "ignored"}, "project": P}],
        "project": f"{P}.1",
        "label_config": svc.ls.configs[P],
        "params": {"context": {"result": [keypoint(label)]}},
    }
    lane = SimpleWorker([svc.jobs.interactive], connection=svc.conn, serializer=JSONSerializer)
    with ThreadPoolExecutor(1) as pool:
        reply = pool.submit(svc.client.post, "/predict", json=body)
        wait_until(lambda: svc.jobs.interactive.count or reply.done(), 10, "click queued")
        lane.work(burst=True, logging_level="WARNING")
        return reply.result(timeout=30)


@dataclass
class TwoObjects(FakePipeline):
    """Feature tokens showing two alike objects: the one under the centre click (frame cells
    17-19, inside `FakeSam`'s disk of radius 64 around the frame centre) and one in the
    top-left corner (cells 3-5, which the disk around their centre covers); every other cell its
    own random direction (256 channels: cosines to the object about +-0.06)."""

    def encode_target(self, image: np.ndarray) -> TargetEncoding:
        self.calls["target"] += 1
        rng = np.random.default_rng(0)
        tokens = rng.standard_normal((GRID * GRID, 256)).astype(np.float32)  # (T, C)
        grid = tokens.reshape(GRID, GRID, 256)
        alike = rng.standard_normal(256).astype(np.float32) * 4
        grid[17:20, 17:20] = alike
        grid[3:6, 3:6] = alike
        size = (int(image.shape[0]), int(image.shape[1]))
        return TargetEncoding(NO_EMBEDDING, tokens, size, FAKE_SAM, FAKE_DINO)


def test_find_all_answers_one_region_per_instance(make_service: Callable[..., Service]) -> None:
    svc = make_service()
    pipeline = TwoObjects()
    runtime.install(svc.settings, fake_model(pipeline), runtime.get().ls)
    click_lane._memory.clear()
    tasks = start(svc, config("BrushLabels", extra=SMART))
    reply = smart_click(svc, tasks[1], "Object (all)")
    assert reply.status_code == 200, reply.text
    (item,) = reply.json()["results"]
    regions = item["result"]
    assert len(regions) == 2 and all(r["value"]["brushlabels"] == ["Object"] for r in regions)
    masks = [rle_to_mask(r["value"]["rle"], W, H) for r in regions]
    assert masks[0][H // 2, W // 2]  # the clicked object first
    assert masks[1][7, 7] and not (masks[0] & masks[1]).any()  # the alike one, top left
    assert pipeline.calls["predict"] == 0  # no GF-SAM prediction: one decode per region
    assert pipeline.calls["reference"] == 0  # the clicked object is a shot without an encoder
    boxes = [c for c in pipeline.sam.calls if c["box"] is not None]
    assert len(boxes) <= 2  # the corner region (and at most one stray region)
    assert not svc.jobs.batch.count  # find all teaches nothing


def test_teach_adds_the_clicked_object_to_the_references(
    make_service: Callable[..., Service],
) -> None:
    svc = make_service()
    tasks = start(svc, config("BrushLabels", extra=SMART))
    reply = smart_click(svc, tasks[1], "Object (teach)")
    assert reply.status_code == 200, reply.text
    svc.run_worker()  # the teach job on the batch queue, then pre-annotation
    refs = svc.store.data.reference_set(P)
    (shot,) = refs.shots["Object"]
    assert shot.clicked and shot.annotation < 0 and shot.task == tasks[1]
    assert refs.shot_ids() == {"Object": []}  # no LS annotation backs it: a sync keeps it
    assert refs.version == f"gfsam-p{P}-v1"
    assert {p["task"] for p in svc.ls.posts} == set(tasks)  # the whole project predicted
    svc.jobs.enqueue_sync(P)  # a sync finds no LS annotation for it, and keeps it
    svc.run_worker()
    assert svc.store.data.reference_set(P).shots["Object"] == [shot]
