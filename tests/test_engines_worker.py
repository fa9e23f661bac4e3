"""GFSAM_PRESET=fast end to end on the fake Label Studio (issue 21): SAM 2.1 Hiera-T and DINOv3
ViT-S/16 at full size with RANDOM weights (wiring only: every mask is meaningless): a shot by
webhook, pre-annotation of the other tasks, a smart-tool click on the interactive lane, and the
target cache keyed by the engines."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rq import SimpleWorker
from rq.serializers import JSONSerializer

from tests.fakes import box_mask, brush_region, png_bytes
from tests.service_fixtures import Service, wait_until
from worker import runtime
from worker.clicks import click as click_lane
from worker.labelstudio.brush_rle import rle_to_mask

FIXTURES = Path(__file__).parent / "fixtures" / "ls_requests"
H, W = 48, 64
P = 2


def webhook(svc: Service, ann: dict[str, Any]) -> None:
    body = copy.deepcopy(json.loads((FIXTURES / "webhook_annotation_created.json").read_text()))
    body["annotation"].update({k: ann[k] for k in ("id", "task", "result", "updated_at")})
    body["task"].update(id=ann["task"], data=svc.ls.tasks[ann["task"]]["data"])
    body["project"].update(id=P, label_config=svc.ls.configs[P])
    assert svc.client.post("/webhook", json=body).status_code == 200


def click_body(svc: Service, task: int) -> dict[str, Any]:
    region = {
        "from_name": "kp",
        "to_name": "image",
        "type": "keypointlabels",
        "original_width": W,
        "original_height": H,
        "is_positive": True,
        "value": {"x": 40.0, "y": 50.0, "width": 0.5, "keypointlabels": ["Dog"]},
    }
    return {
        "tasks": [{"id": task, "data": {"image": "ignored"}, "project": P}],
        "project": f"{P}.1700000000",
        "label_config": svc.ls.configs[P],
        "params": {"login": None, "password": None, "context": {"result": [region]}},
    }


def test_fast_preset_pre_annotates_and_answers_a_click(
    make_service: Callable[..., Service],
) -> None:
    svc = make_service(model="tiny", gfsam_preset="fast", gfsam_random_weights=True)
    rt = runtime.get()
    pipe = rt.model.pipeline
    assert (pipe.sam.spec.name, pipe.dino.spec.name) == (  # type: ignore[attr-defined]
        "sam2.1_hiera_tiny",
        "dinov3_vits16",
    )
    assert pipe.config.max_points == 32  # the preset's prompt cap
    setup = json.loads((FIXTURES / "setup_multilabel.json").read_text())
    svc.ls.configs[P] = setup["schema"]
    svc.client.post("/setup", json=setup)
    images = [png_bytes(W, H, seed=i) for i in range(2)]
    a, b = (svc.ls.add_task(P, img)["id"] for img in images)
    webhook(svc, svc.ls.annotate(a, [brush_region(box_mask(H, W, 5, 30, 5, 40), "Cat")]))
    svc.run_worker()
    refs = svc.store.data.reference_set(P)
    assert refs.version == f"gfsam-p{P}-v1"
    posted = [p for p in svc.ls.posts if p["task"] == b and p["model_version"] == refs.version]
    assert len(posted) == 1
    for region in posted[0]["result"]:
        assert rle_to_mask(region["value"]["rle"], W, H).shape == (H, W)

    # The target cache holds the fast engines' encodings, under a key naming them.
    blob = rt.targets.get(hashlib.sha256(images[1]).hexdigest())
    assert blob is not None
    target = rt.model.target_from_bytes(blob)
    assert (target.sam_encoder, target.dino_encoder) == ("sam2.1_hiera_tiny", "dinov3_vits16")
    assert target.embedding.shape == (1024, 64, 64)
    assert rt.targets.dir.name == rt.model.key

    click_lane._memory.clear()
    with ThreadPoolExecutor(1) as pool:
        reply = pool.submit(svc.client.post, "/predict", json=click_body(svc, b))
        wait_until(lambda: svc.jobs.interactive.count or reply.done(), 30, "click queued")
        worker = SimpleWorker(
            [svc.jobs.interactive], connection=svc.conn, serializer=JSONSerializer
        )
        worker.work(burst=True, logging_level="WARNING")
        answer = reply.result(timeout=120)
    assert answer.status_code == 200, answer.text
    (item,) = answer.json()["results"]
    (region,) = item["result"]
    assert region["value"]["brushlabels"] == ["Dog"]
    assert rle_to_mask(region["value"]["rle"], W, H).shape == (H, W)
    stats = svc.store.progress.stats()
    assert stats.get("target_cache_hit", 0) >= 1  # pre-annotation's encoding: decoder only
