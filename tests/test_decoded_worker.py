"""The worker keeps each target's decoded SAM masks next to its encoding (issue 12): a
re-prediction after a re-fit decodes only new prompts. Tiny RANDOM-weight pipeline (wiring and
counts only; the masks are meaningless)."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gfsam.decoded import DecodedMasks
from tests.fakes import box_mask, brush_region, png_bytes
from tests.service_fixtures import Service
from worker import runtime
from worker.prediction import decoded_masks, inference

FIXTURES = Path(__file__).parent / "fixtures" / "ls_requests"
H, W = 48, 64
P = 2


def webhook(svc: Service, ann: dict[str, Any]) -> None:
    body = copy.deepcopy(json.loads((FIXTURES / "webhook_annotation_created.json").read_text()))
    body["annotation"].update({k: ann[k] for k in ("id", "task", "result", "updated_at")})
    body["task"].update(id=ann["task"], data=svc.ls.tasks[ann["task"]]["data"])
    body["project"].update(id=P, label_config=svc.ls.configs[P])
    assert svc.client.post("/webhook", json=body).status_code == 200


def multilabel_project(
    make_service: Callable[..., Service], n: int
) -> tuple[Service, list[bytes], list[int]]:
    """A service with the tiny model, project P set up with the multilabel config and `n`
    tasks of distinct random images: (service, the images, their task ids)."""
    svc = make_service(model="tiny", gfsam_max_points=12)
    setup = json.loads((FIXTURES / "setup_multilabel.json").read_text())
    svc.ls.configs[P] = setup["schema"]
    svc.client.post("/setup", json=setup)
    images = [png_bytes(W, H, seed=i) for i in range(n)]
    return svc, images, [svc.ls.add_task(P, img)["id"] for img in images]


def prompt_stats(svc: Service) -> tuple[int, int]:
    stats = svc.store.progress.stats()
    return stats.get("prompt_cache_hit", 0), stats.get("prompt_cache_miss", 0)


def test_repredict_after_refit_decodes_only_new_prompts(
    make_service: Callable[..., Service],
) -> None:
    svc, images, (a, b, c) = multilabel_project(make_service, 3)
    rt = runtime.get()
    webhook(svc, svc.ls.annotate(a, [brush_region(box_mask(H, W, 5, 30, 5, 40), "Cat")]))
    svc.run_worker()  # v1 (Cat): b and c predicted, every prompt decoded once per target
    hit1, miss1 = prompt_stats(svc)
    assert miss1 > 0
    sha = hashlib.sha256(images[2]).hexdigest()
    assert (rt.targets.dir / f"{sha}{decoded_masks.SUFFIX}.bin").exists()  # next to the encoding
    assert (rt.targets.dir / f"{sha}.bin").exists()

    webhook(svc, svc.ls.annotate(b, [brush_region(box_mask(H, W, 20, 45, 30, 60), "Dog")]))
    svc.run_worker()  # v2 (Cat + Dog): only c is re-predicted
    refs = svc.store.data.reference_set(P)
    assert refs.version == f"gfsam-p{P}-v2" and set(refs.shots) == {"Cat", "Dog"}
    assert [p["task"] for p in svc.ls.posts if p["model_version"] == refs.version] == [c]
    hit2, miss2 = prompt_stats(svc)
    warm_hits, warm_misses = hit2 - hit1, miss2 - miss1

    # The same prediction from scratch: what it would have decoded without the stored masks.
    cfg = svc.store.data.config(P)
    assert cfg is not None
    target = inference.target_encoding(rt, svc.store, images[2])
    cold = DecodedMasks(decoded_masks.capacity(rt.model.pipeline.config, 2))
    refs_by_label = inference.load_references(rt, svc.store, refs, cfg.labels)
    rt.model.pipeline.predict_labels(target, refs_by_label, decoded=cold)
    assert warm_hits + warm_misses == cold.hits + cold.misses  # the same prompts were asked for
    assert warm_misses < cold.misses  # Cat's prompts of v1 came from the stored masks
    assert warm_hits > cold.hits
    # A third prediction of c at v2 decodes nothing: everything is stored now.
    third = inference.predict_task(rt, svc.store, cfg, refs, c, images[2]).decoded
    assert third is not None  # counted when the job saves it (`decoded_masks.save`), once
    assert third.misses == 0 and third.hits == cold.hits + cold.misses


def test_a_predict_job_ends_with_its_cache_writes_on_disk(
    make_service: Callable[..., Service], monkeypatch: Any
) -> None:
    """The target encoding and the mask store are written on the cache's writer thread while
    the job goes on (`TargetCache.put_later`); the job waits for them before it ends, so
    another process finds them the moment the job is done, however slow the writes are."""
    import time

    from gfsam.encodings import TargetEncoding

    svc, images, (a, b) = multilabel_project(make_service, 2)
    rt = runtime.get()
    serialise = TargetEncoding.to_bytes

    def slow_to_bytes(self: TargetEncoding) -> bytes:
        time.sleep(0.5)  # a slow disk or a huge target
        return serialise(self)

    monkeypatch.setattr(TargetEncoding, "to_bytes", slow_to_bytes)
    webhook(svc, svc.ls.annotate(a, [brush_region(box_mask(H, W, 5, 30, 5, 40), "Cat")]))
    svc.run_worker()  # b is pre-annotated: its target and masks are written later, then waited for
    assert [p["task"] for p in svc.ls.posts] == [b]
    sha = hashlib.sha256(images[1]).hexdigest()
    assert (rt.targets.dir / f"{sha}.bin").exists()
    assert (rt.targets.dir / f"{sha}{decoded_masks.SUFFIX}.bin").exists()


def test_a_job_failing_after_decoding_keeps_the_masks_for_its_retry(
    make_service: Callable[..., Service], monkeypatch: Any
) -> None:
    """The mask store is saved once a job's discovery is done, and also when something after
    the decoder raises: the retry reads the masks instead of decoding them again."""
    from worker.discovery import candidates

    svc, images, (a, b) = multilabel_project(make_service, 2)
    rt = runtime.get()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("a bug after the decoder")

    monkeypatch.setattr(candidates, "after_predict", broken)
    webhook(svc, svc.ls.annotate(a, [brush_region(box_mask(H, W, 5, 30, 5, 40), "Cat")]))
    svc.run_worker()  # b's prediction fails (and is left to RQ's retry)
    assert svc.ls.posts == []
    sha = hashlib.sha256(images[1]).hexdigest()
    assert (rt.targets.dir / f"{sha}{decoded_masks.SUFFIX}.bin").exists()
    assert prompt_stats(svc)[1] > 0  # its decodes were counted
