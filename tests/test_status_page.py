"""The status pages (issue 13): auth, bounded Redis reads, thumbnails, the discovery hook, and
the project page in a real headless Chromium (screenshot + DOM checked against /projects)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI
from rq import Queue, SimpleWorker

from backend.app import create_app
from backend.state.keys import key
from backend.state.schemas import LabelConfigSummary, LabelRejects
from backend.state.store import Store
from backend.state.versions import model_version
from tests.fakes import box_mask
from tests.project_helpers import SEED, annotate, setup_project
from tests.service_fixtures import Service, free_port, wait_until

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def commands_per_load(svc: Service, path: str) -> int:
    """Redis commands the server ran to answer one GET of `path` (INFO commandstats), after a
    first load (connection set-up commands are not the page's)."""
    assert svc.client.get(path).status_code == 200
    svc.conn.config_resetstat()
    assert svc.client.get(path).status_code == 200
    stats = svc.conn.info("commandstats")
    return sum(
        int(v["calls"]) for k, v in stats.items() if k not in ("cmdstat_info", "cmdstat_config")
    )


def register(store: Store) -> None:
    """Project 1 known to the backend (what /setup or a sync leaves behind)."""
    summary = LabelConfigSummary(from_name="tag", to_name="image", data_key="image", labels=["A"])
    store.data.put_config(1, summary, "digest")


def populate(store: Store, tasks: int) -> None:
    """Project 1 with `tasks` predict jobs at v1 and v2: half ended, 5% failed."""
    for t in range(tasks):
        store.progress.job_queued(1, f"predict-1-{t}-{1 + t % 2}")
    for t in range(0, tasks, 2):
        store.progress.job_started(1, f"predict-1-{t}-1")
        store.progress.job_ended(1, f"predict-1-{t}-1", "failed" if t % 20 == 0 else "done")
        if t % 20 == 0:
            store.progress.record_failure(1, f"task:{t}", "ValueError: cannot decode image")
        store.data.mark_labeled(1, t)


@pytest.mark.parametrize("path", ["/", "/status/projects/1"])
def test_redis_commands_per_page_do_not_grow_with_tasks(
    make_service: Callable[..., Service], path: str
) -> None:
    svc = make_service()
    register(svc.store)
    worker = SimpleWorker([Queue("q", connection=svc.conn)], connection=svc.conn, name="gfsam-w1")
    worker.register_birth()
    populate(svc.store, 100)
    small = commands_per_load(svc, path)
    svc.conn.flushdb()
    register(svc.store)
    worker.register_birth()
    populate(svc.store, 10_000)
    assert svc.store.progress.counts(1).queued == 5_000
    assert commands_per_load(svc, path) == small
    assert small < 40  # a handful of pipelined reads, whatever the project's size


def test_pages_need_the_same_auth_as_projects(make_service: Callable[..., Service]) -> None:
    svc = make_service(basic_auth_user="u", basic_auth_pass="p")
    register(svc.store)
    for path in ("/", "/status/projects/1", "/status/thumbs/" + "0" * 64 + ".png"):
        assert svc.client.get(path).status_code == 401
    assert svc.client.get("/", auth=("u", "p")).status_code == 200
    assert svc.client.get("/status/projects/1", auth=("u", "p")).status_code == 200
    assert svc.client.get("/status/projects/9", auth=("u", "p")).status_code == 404


def test_thumbnails_groups_and_failures_on_the_page(svc: Service) -> None:
    tasks = setup_project(svc, 3)
    annotate(svc, tasks[0], SEED)
    svc.run_worker()
    (shot,) = svc.store.data.reference_set(1).shots["Object"]
    page = svc.client.get("/status/projects/1").text
    assert f"/status/thumbs/{shot.ref}.png" in page and 'id="groups"' not in page
    thumb = svc.client.get(f"/status/thumbs/{shot.ref}.png")
    assert thumb.headers["content-type"] == "image/png" and thumb.content[:4] == b"\x89PNG"
    assert "immutable" in thumb.headers["cache-control"]
    assert svc.client.get("/status/thumbs/nothex.png").status_code == 404
    svc.conn.set(key("p:{p}:groups", p=1), json.dumps([{"name": "<b>round</b>", "size": 4}]))
    svc.store.progress.record_failure(1, "task:3", "ValueError: <script>x</script>")
    page = svc.client.get("/status/projects/1").text
    assert 'id="groups"' in page and "&lt;b&gt;round&lt;/b&gt;" in page
    assert "&lt;script&gt;" in page and "<script>" not in page


def test_reject_counts_table_and_warning(svc: Service) -> None:
    """Per-label reject counts of the current version on the page and in /projects, the
    warning only for the label whose reject removed most of what its GF-SAM run found."""
    register(svc.store)
    store = svc.store
    store.progress.job_queued(1, "predict-1-1-1")
    version = model_version(1, 1)
    rows = {
        "A": LabelRejects(
            label="A",
            found_instances=4,
            found_pixels=1000,
            rejected_instances=3,
            rejected_pixels=900,
        ),
        "<B>": LabelRejects(label="<B>", found_instances=2, found_pixels=500),
    }
    for task in (7, 8):
        store.progress.record_rejects(1, version, task, rows)
    store.progress.record_rejects(1, version, 8, rows)  # a task again: its row replaced
    page = svc.client.get("/status/projects/1").text
    assert 'id="rejects"' in page and "2 tasks" in page and "&lt;B&gt;" in page
    assert page.count("rejects most of what GF-SAM found") == 1
    (v,) = svc.client.get("/projects/1").json()["rejects"]
    by = {r["label"]: r for r in v["labels"]}
    assert v["tasks"] == 2 and by["A"]["rejected_pixels"] == 1800 and by["A"]["warning"]
    assert by["A"]["rejected_share"] == 0.9 and by["<B>"]["rejected_share"] == 0.0
    assert not by["<B>"]["warning"]


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Run `app` with uvicorn on a free loopback port in a thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 20, "uvicorn to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def chromium(url: str, out: Path, *args: str) -> str:
    """Run headless Chromium on `url` (a fresh profile under `out`); returns its stdout."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (scripts/setup.sh installs it)")
    profile = out / f"profile-{len(list(out.glob('profile-*')))}"
    argv = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def project_in_several_states(svc: Service) -> None:
    """v1 from a seed, pre-annotated (one image corrupt: failed), then a correction (v2 with
    acceptance IoU of v1) whose re-predictions are partly done, one running, the rest queued;
    one worker registered with its lease."""
    tasks = setup_project(svc, 12)
    svc.ls.media[svc.ls.tasks[tasks[5]]["data"]["image"]] = b"not an image"
    annotate(svc, tasks[0], SEED)
    svc.run_worker()
    annotate(svc, tasks[1], box_mask(48, 64, 5, 40, 5, 40))  # a correction: v2
    svc.run_worker(max_jobs=5)
    queued = [j for j in svc.jobs.batch.job_ids if j.startswith("predict-")]
    svc.store.progress.job_started(1, queued[0])  # as a worker picking it up would
    worker = SimpleWorker(svc.jobs.queues, connection=svc.conn, name="gfsam-gpu0-4711-a1b2c3")
    worker.register_birth()
    worker.set_state("idle")
    svc.store.coord.renew_lease(worker.name, svc.settings.worker_lease_s)


def test_status_page_in_headless_chromium(svc: Service, tmp_path: Path) -> None:
    project_in_several_states(svc)
    status = svc.client.get("/projects/1").json()
    counts = status["counts"]
    assert counts["done"] and counts["queued"] and counts["failed"] and counts["running"]
    with serve(create_app(svc.settings)) as url:
        dom = chromium(f"{url}/status/projects/1", tmp_path, "--dump-dom")
        shot = tmp_path / "status-page.png"
        chromium(
            f"{url}/status/projects/1", tmp_path, f"--screenshot={shot}", "--window-size=1280,1600"
        )
        chromium(
            f"{url}/", tmp_path, f"--screenshot={tmp_path / 'index.png'}", "--window-size=1280,500"
        )
    assert shot.stat().st_size > 10_000
    if os.environ.get("GFSAM_UPDATE_SCREENSHOT"):  # refresh the README's picture on request
        shutil.copyfile(shot, REPO / "docs" / "status-page.png")
    version = re.search(r'id="model-version">([^<]+)<', dom)
    assert version is not None and version[1] == status["model_version"] == "gfsam-p1-v2"
    progress = re.search(r'<div class="card" id="progress"([^>]*)>', dom)
    assert progress is not None
    shown = {k: int(v) for k, v in re.findall(r'data-(\w+)="(\d+)"', progress[1])}
    assert shown == counts
    assert 'data-version="gfsam-p1-v1"' in dom and 'data-version="gfsam-p1-v2"' in dom
    assert "cannot decode" in dom or "image" in dom  # the corrupt image's failure reason
    assert "gfsam-gpu0-4711-a1b2c3" in dom and "<svg" in dom


def test_pages_send_security_headers_and_a_plain_title(svc: Service) -> None:
    """Issue 22, item 8: the project page's <title> held raw markup (a <p> with links), and no
    page forbade framing or sniffing or set a Content-Security-Policy."""
    register(svc.store)
    for path in ("/", "/status/projects/1"):
        reply = svc.client.get(path)
        assert reply.status_code == 200
        assert reply.headers["X-Frame-Options"] == "DENY"
        assert reply.headers["X-Content-Type-Options"] == "nosniff"
        csp = reply.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        title = re.search(r"<title>(.*?)</title>", reply.text, re.S)
        assert title is not None and "<" not in title.group(1), title
    assert "Project 1 · GF-SAM backend" in svc.client.get("/status/projects/1").text


@pytest.mark.parametrize("project", ["0", "-3", str(2**31), "9" * 40])
def test_project_page_bounds_the_id(svc: Service, project: str) -> None:
    """Issue 22, item 8: ids outside LS's 1..2^31-1 are refused like on /projects/{id}."""
    reply = svc.client.get(f"/status/projects/{project}")
    assert reply.status_code == 422, reply.text


def measured(store: Store) -> None:
    """Project 1 measured at v1 and v2 (issue 19), reports as the worker writes them."""
    from backend.state.schemas import (
        LabelQuality,
        LabelTuning,
        PreviousQuality,
        QualityReport,
        Tuning,
    )

    for n, (iou, tuned) in enumerate(((0.5, 0.6), (0.7, 0.9)), start=1):
        report = QualityReport(
            project=1,
            version=f"gfsam-p1-v{n}",
            n=n,
            tasks=[3, 2, 1],
            default={
                "A": LabelQuality(n=3, tasks=3, iou=iou, precision=0.8, recall=0.9),
                "<b>B</b>": LabelQuality(n=1, tasks=3, iou=0.25, false_paint=0.5),
                "C": LabelQuality(n=3, tasks=3, iou=0.4),
            },
            tuned={"A": LabelQuality(n=3, tasks=3, iou=tuned), "<b>B</b>": LabelQuality(n=1)},
            choices={
                "A": LabelTuning(offset=0.125, how="tuned", n=3),
                "<b>B</b>": LabelTuning(mode="argmax", how="tuned", n=1),
                "C": LabelTuning(how="unchecked", n=3),  # every task holds C: no looser move
            },
            previous=None
            if n == 1
            else PreviousQuality(
                version="gfsam-p1-v1", n=1, tasks=3, default={"A": LabelQuality(n=3, iou=0.45)}
            ),
        )
        store.quality.put_report(report, Tuning(version=report.version, offsets={"A": 0.125}))


def test_quality_section_in_headless_chromium(svc: Service, tmp_path: Path) -> None:
    register(svc.store)
    page = svc.client.get("/status/projects/1").text
    assert 'id="quality"' in page and "Not measured yet" in page
    measured(svc.store)
    api = svc.client.get("/projects/1/quality").json()
    assert [v["version"] for v in api["versions"]] == ["gfsam-p1-v1", "gfsam-p1-v2"]
    assert api["versions"][1]["default"]["A"]["n"] == 3 and api["tuning"]["offsets"] == {"A": 0.125}
    with serve(create_app(svc.settings)) as url:
        dom = chromium(f"{url}/status/projects/1", tmp_path, "--dump-dom")
    section = dom[dom.index('id="quality"') :]
    rows = re.findall(r'<tr class="quality-row" data-label="([^"]+)" data-n="(\d+)"', section)
    assert rows == [("A", "3"), ("&lt;b&gt;B&lt;/b&gt;", "1"), ("C", "3")]  # escaped, in order
    assert "default (a looser setting needs tasks without the label)" in section
    assert "0.700" in section and "0.900" in section and "tuned +0.125" in section
    assert "0.450" in section and "gfsam-p1-v1 on the same 3 task(s)" in section  # previous
    assert "mode argmax" in section
    assert api["versions"][1]["previous"]["default"]["A"]["iou"] == 0.45
    assert 'aria-label="held-out IoU per version"' in section
    assert "v1: mean IoU 0.600 over 3 annotated task(s)" in section  # the tuned IoU per version
    metrics = svc.client.get("/metrics").text
    assert 'gfsam_quality{figure="iou",label="A",project="1"} 0.7' in metrics
    assert 'gfsam_threshold_offset{label="A",project="1"} 0.125' in metrics
    assert 'gfsam_quality{figure="previous_iou",label="A",project="1"} 0.45' in metrics
