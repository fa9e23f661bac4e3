"""The store reads behind the status page: per-version progress (bounded), recent failures,
thumbnails, candidate groups, workers; and the per-job log line and thumbnail rendering."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest
from PIL import Image

from backend.state.fleet import list_workers
from backend.state.keys import key
from backend.state.logs import JsonFormatter
from backend.state.progress import VERSIONS_KEPT
from backend.state.schemas import AcceptanceSample
from backend.state.store import Store
from worker.joblog import describe
from worker.thumbs import thumbnail_png


def test_per_version_counts_follow_the_project_counts(store: Store) -> None:
    prog = store.progress
    for t in range(5):
        prog.job_queued(1, f"predict-1-{t}-1")
    for t in range(3):
        prog.job_queued(1, f"predict-1-{t}-2")
    prog.job_started(1, "predict-1-0-1")
    prog.job_ended(1, "predict-1-0-1", "done")
    prog.job_started(1, "predict-1-1-1")
    prog.job_ended(1, "predict-1-1-1", "failed", requeued=True)
    prog.job_started(1, "predict-1-2-1")
    prog.job_ended(1, "predict-1-2-1", "stale")
    prog.job_started(1, "predict-1-0-2")
    v2, v1 = prog.version_progress(1)
    assert (v1.version, v1.queued, v1.running, v1.done, v1.stale) == ("gfsam-p1-v1", 3, 0, 1, 1)
    assert (v2.n, v2.queued, v2.running, v2.done) == (2, 2, 1, 0)
    counts = prog.counts(1)
    assert counts.queued == v1.queued + v2.queued and counts.running == 1
    assert counts.done == 1 and counts.stale == 1


def test_old_versions_are_pruned(store: Store) -> None:
    for n in range(VERSIONS_KEPT + 5):
        store.progress.job_queued(2, f"predict-2-1-{n}")
    shown = store.progress.version_progress(2)
    assert [v.n for v in shown] == list(range(VERSIONS_KEPT + 4, 4, -1))
    assert not store.r.exists(key("p:{p}:v:{n}:queued", p=2, n=0))
    store.progress.job_ended(2, "predict-2-1-0", "done")  # a late job of a pruned version
    assert len(store.progress.version_progress(2)) == VERSIONS_KEPT
    assert not store.r.exists(key("p:{p}:v:{n}:counts", p=2, n=0))


def test_acceptance_per_version(store: Store) -> None:
    for a, iou in ((1, 0.5), (2, 1.0)):
        sample = AcceptanceSample(annotation=a, task=a, model_version="gfsam-p1-v3", iou={"X": iou})
        store.progress.record_acceptance(1, sample)
    (v3,) = store.progress.version_progress(1)
    assert v3.acceptance_count == 2 and v3.acceptance_mean_iou == pytest.approx(0.75)


def test_recent_failures_newest_first_and_resolved(store: Store) -> None:
    store.progress.record_failure(1, "task:1", "ValueError: bad image")
    store.progress.record_failure(1, "task:2", "LabelStudioError: 404")
    store.progress.clear_failure(1, "task:1")
    records, standing = store.progress.recent_failures(1)
    assert [r.what for r in records] == ["task:2", "task:1"]
    assert [r.current for r in records] == [True, False] and standing == 1


def test_thumbnail_outlines_the_mask_and_expires_with_its_blob(store: Store) -> None:
    image = np.full((300, 400, 3), 40, np.uint8)
    mask = np.zeros((300, 400), bool)
    mask[100:200, 100:300] = True
    png = thumbnail_png(image, mask)
    thumb = np.asarray(Image.open(io.BytesIO(png)))
    assert thumb.shape == (120, 160, 3)
    assert (thumb[40, 60] == (255, 64, 160)).all()  # on the outline
    assert (thumb[5, 5] == 40).all()  # outside: the image
    store.data.put_thumbnail("ab", png)
    assert store.data.get_thumbnail("ab") == png
    store.data.expire_blobs({"ab"}, set())
    assert store.r.ttl(key("thumb:{sha}", sha="ab")) > 0


def test_thumbnail_of_a_crop_view_is_the_thumbnail_of_its_pixels() -> None:
    """Discovery passes crops as strided views of the image: the same PNG as from a copy."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    mask = rng.random((240, 320)) < 0.3
    view, part = image[30:200, 50:290], mask[30:200, 50:290]
    assert not view.flags.c_contiguous
    png = thumbnail_png(view, part, 96)
    assert png == thumbnail_png(view.copy(), part.copy(), 96)
    assert np.asarray(Image.open(io.BytesIO(png))).shape == (68, 96, 3)


def test_discovery_crop_is_a_jpeg_of_the_same_picture_and_sheets_paste_both_formats() -> None:
    """Discovery's crops are JPEGs of the thumbnail's picture (lossy: close, not equal); a
    contact sheet pastes them beside the PNG crops that workers before them stored."""
    from backend.api.candidates import CELL_PX, sheet_png
    from worker.thumbs import thumbnail_jpeg, thumbnail_pixels

    yy, xx = np.mgrid[0:240, 0:320]
    image = np.stack([xx * 255 // 320, yy * 255 // 240, (xx + yy) % 256], -1).astype(np.uint8)
    image[100:140, 20:300] = (200, 180, 40)  # a flat band across the mask's edge
    mask = np.zeros((240, 320), bool)
    mask[60:180, 80:240] = True
    jpeg, png = thumbnail_jpeg(image, mask, 96), thumbnail_png(image, mask, 96)
    with Image.open(io.BytesIO(jpeg)) as im:
        assert im.format == "JPEG"
        decoded = np.asarray(im.convert("RGB")).astype(int)
    exact = thumbnail_pixels(image, mask, 96).astype(int)
    assert decoded.shape == exact.shape == (72, 96, 3)
    assert np.abs(decoded - exact).mean() < 4  # lossy, but the same picture
    with Image.open(io.BytesIO(sheet_png([jpeg, png]))) as sheet:
        assert sheet.size == (2 * CELL_PX, CELL_PX)
    grey = image[..., 0]  # a grey image: replicated, as PIL's convert("RGB") did
    assert np.array_equal(
        thumbnail_pixels(grey, mask, 96),
        thumbnail_pixels(np.repeat(grey[..., None], 3, axis=2), mask, 96),
    )


def test_candidate_groups_hook(store: Store) -> None:
    assert store.data.candidate_groups(1) == []
    store.r.set(key("p:{p}:groups", p=1), json.dumps([{"name": "round things", "size": 12}]))
    (group,) = store.data.candidate_groups(1)
    assert group.name == "round things" and group.size == 12


def test_workers_with_lease(store: Store) -> None:
    from rq import Queue, SimpleWorker

    w = SimpleWorker([Queue("q", connection=store.r)], connection=store.r, name="gfsam-test-1")
    w.register_birth()
    store.coord.renew_lease("gfsam-test-1", 15)
    (info,), total = list_workers(store.r, 15)
    assert total == 1 and info.name == "gfsam-test-1" and info.alive
    assert info.lease_age_s is not None and 0 <= info.lease_age_s < 5
    w.register_death()


def test_log_line_text_and_json() -> None:
    fields = {"job": "predict-1-7-2", "func": "predict_task", "project": 1, "outcome": "ok"}
    assert describe(fields) == "job predict-1-7-2 predict_task project=1 outcome=ok"
    record = logging.LogRecord("worker.joblog", logging.INFO, "", 0, "%s", ("x",), None)
    record.fields = fields
    line = json.loads(JsonFormatter("worker").format(record))
    assert line["project"] == 1 and line["role"] == "worker" and line["msg"] == "x"
