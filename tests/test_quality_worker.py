"""Self-measurement and tuning in the worker (issue 19) on the oracle pipeline.

The scene (`tests.fakes.OraclePipeline`, red channel = class id): Cat is class 1, Dog class 3,
class 2 is in no label and looks like Cat (oracle rho 2.0: cosine ~0.89), close enough that the
default presence floor (from the shots alone, even lifted by agreeing shots to 0.8 x their
cross-image cosine, issue 18) accepts it as Cat. Twelve annotated tasks show the
project what Cat is and is not; the calibrate job must find a stricter Cat threshold from them,
measured held out (each task scored with thresholds chosen on the others, with references
without its own shots), and the next predictions must use it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backend.state.keys import key
from backend.state.schemas import QualityReport
from gfsam.calibrate import ScoreMap
from gfsam.eval.oracle import OracleParams
from tests.fakes import OraclePipeline, brush_region, class_png, oracle_model
from tests.service_fixtures import Service
from worker import runtime
from worker.labelstudio.brush_rle import rle_to_mask
from worker.prediction.assignment import THRESHOLDS

FIXTURES = Path(__file__).parent / "fixtures" / "ls_requests"
H, W = 96, 128
P = 2
NAMES = {1: "Cat", 3: "Dog"}
PROBE = np.zeros((H, W), dtype=np.int32)
PROBE[10:40, 10:45] = 1
PROBE[50:85, 60:100] = 2  # the look-alike
PROBE[10:40, 80:120] = 3


def scenes(n: int, seed: int = 1) -> list[np.ndarray]:
    """n random scenes of 1-3 boxes of classes 1, 2, 3."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        lab = np.zeros((H, W), np.int32)
        for c in rng.choice([1, 2, 3], size=rng.integers(1, 4), replace=True):
            y0, x0 = rng.integers(0, H - 30), rng.integers(0, W - 30)
            h, w = rng.integers(15, 35, 2)
            lab[y0 : y0 + h, x0 : x0 + w] = c
        out.append(lab)
    return out


def webhook(svc: Service, ann: dict[str, Any]) -> None:
    body = copy.deepcopy(json.loads((FIXTURES / "webhook_annotation_created.json").read_text()))
    body["annotation"].update({k: ann[k] for k in ("id", "task", "result", "updated_at")})
    body["task"].update(id=ann["task"], data=svc.ls.tasks[ann["task"]]["data"])
    body["project"].update(id=P, label_config=svc.ls.configs[P])
    assert svc.client.post("/webhook", json=body).status_code == 200


def annotate(svc: Service, task: int, labels: np.ndarray) -> None:
    result = [
        {**brush_region(labels == c, name), "id": f"r{task}{c}"}
        for c, name in NAMES.items()
        if (labels == c).any()
    ]
    webhook(svc, svc.ls.annotate(task, result))


def cat_on_look_alike(svc: Service, task: int, version: str) -> float:
    """Share of the probe's look-alike pixels painted Cat by its prediction at `version`."""
    (pred,) = [p for p in svc.ls.posts if p["task"] == task and p["model_version"] == version]
    painted = np.zeros((H, W), dtype=bool)
    for r in pred["result"]:
        if r["value"]["brushlabels"] == ["Cat"]:
            painted |= rle_to_mask(r["value"]["rle"], W, H)
    return float(painted[PROBE == 2].mean())


def test_tuning_on_held_out_annotations_beats_the_defaults(
    make_service: Callable[..., Service],
) -> None:
    svc = make_service(model="oracle", calibrate=True, calibrate_tasks=20)
    runtime.install(svc.settings, oracle_model(OraclePipeline(OracleParams(sigma=0.1, rho=2.0))))
    THRESHOLDS.clear()
    setup = json.loads((FIXTURES / "setup_multilabel.json").read_text())
    svc.ls.configs[P] = setup["schema"]
    svc.client.post("/setup", json=setup)
    svc.run_worker()
    probe = svc.ls.add_task(P, class_png(PROBE))["id"]
    seen = scenes(13)
    tasks = [svc.ls.add_task(P, class_png(lab))["id"] for lab in seen]
    for task, lab in zip(tasks[:12], seen[:12], strict=True):
        annotate(svc, task, lab)
    svc.run_worker()

    refs = svc.store.data.reference_set(P)
    before = refs.version
    reports = svc.store.quality.reports(P)
    assert reports and reports[-1].version == before  # the newest version was measured
    rep: QualityReport = reports[-1]
    assert sorted(rep.tasks) == sorted(tasks[:12])  # all 12 (CALIBRATE_TASKS 20), newest first
    cat, dog = rep.choices["Cat"], rep.choices["Dog"]
    assert cat.how == "tuned" and cat.offset > 0  # stricter: the look-alike is not a Cat
    assert cat.n >= 3 and rep.default["Cat"].n == cat.n
    assert cat.floor_default is not None and cat.floor is not None  # the thresholds themselves
    assert cat.floor == pytest.approx(cat.floor_default + cat.offset)
    d, t = rep.default["Cat"], rep.tuned["Cat"]
    assert d.iou is not None and t.iou is not None
    assert t.iou > d.iou + 0.1, (d, t)  # held out: each task tuned on the others only
    assert t.false_paint is not None and d.false_paint is not None
    assert t.false_paint <= d.false_paint
    assert dog.n >= 3 and rep.tuned["Dog"].iou is not None
    assert rep.score_map.n == 12 and rep.score_map.x  # the score map was fitted
    tuning = svc.store.quality.tuning(P)
    assert tuning is not None and tuning.version == before
    assert tuning.offsets["Cat"] == cat.offset
    api = svc.client.get(f"/projects/{P}/quality").json()
    assert api["versions"][-1]["tuned"]["Cat"]["iou"] == t.iou
    assert api["tuning"]["offsets"]["Cat"] == cat.offset
    (old,) = [p for p in svc.ls.posts if p["task"] == probe and p["model_version"] == before]

    annotate(svc, tasks[12], seen[12])  # a new version: predicted with the tuning
    svc.run_worker()
    after = svc.store.data.reference_set(P).version
    assert after != before
    assert cat_on_look_alike(svc, probe, after) < 0.1
    (pred,) = [p for p in svc.ls.posts if p["task"] == probe and p["model_version"] == after]
    labels = {r["value"]["brushlabels"][0] for r in pred["result"]}
    assert labels == {"Cat", "Dog"}  # the real cat and dog are still painted
    # scores are the map's expected IoU (the raw value before it was measured)
    sm = ScoreMap.from_json(rep.score_map.model_dump())
    assert sm.fitted
    assert pred["score"] == sm.post(old["score"])  # same masks, same raw value: now calibrated
    assert pred["score"] != old["score"]
    rep2 = svc.store.quality.reports(P)[-1]  # the new version, compared on its own tasks
    assert rep2.version == after and rep2.previous is not None
    assert rep2.previous.version == before and rep2.previous.tasks == len(rep2.tasks)
    assert rep2.previous.default["Cat"].iou is not None


def test_measurement_waits_behind_every_other_queue(make_service: Callable[..., Service]) -> None:
    """A new version queues its measurement on the calibrate queue, the last one a worker
    listens to; one job per version; CALIBRATE=false queues none."""
    from backend.state.schemas import CalibrateJob
    from tests.project_helpers import SEED, annotate, setup_project

    svc = make_service(calibrate=True)
    assert [q.name for q in svc.jobs.queues][-1] == svc.settings.queue_calibrate
    tasks = setup_project(svc, 3)
    annotate(svc, tasks[0], SEED)
    svc.run_worker(max_jobs=1)  # the re-fit: v1, pre-annotation queued, measurement behind it
    assert svc.jobs.calibrate.job_ids == ["calibrate-1-1"]
    assert svc.jobs.batch.count >= 1  # predictions are taken first
    payload = CalibrateJob(project=1, version="gfsam-p1-v1")
    assert svc.jobs.enqueue_calibrate(payload) is None  # the same version: collapsed
    off = make_service(calibrate=False)
    assert off.jobs.enqueue_calibrate(CalibrateJob(project=1, version="gfsam-p1-v2")) is None


def boxes_measured(
    make_service: Callable[..., Service], annotated: int, total: int
) -> tuple[Service, list[int], str, QualityReport]:
    """A fake-pipeline project of `total` tasks, the first `annotated` annotated with a box each
    (the worker run after each); its newest version and that version's report."""
    from tests.fakes import box_mask
    from tests.project_helpers import annotate, setup_project

    svc = make_service(calibrate=True)
    tasks = setup_project(svc, total)
    for k, task in enumerate(tasks[:annotated]):
        annotate(svc, task, box_mask(48, 64, 5 + k, 30 + k, 10, 40 + k))
        svc.run_worker()
    version = svc.store.data.current_version(1)
    (report,) = [r for r in svc.store.quality.reports(1) if r.version == version]
    return svc, tasks, version, report


def test_measurement_stops_at_a_task_boundary_when_predictions_wait(
    make_service: Callable[..., Service],
) -> None:
    """Three annotated tasks measured in full when the worker is idle; with other work waiting
    the job stops after one task, stores nothing (the tuning in force stays, never replaced by
    one tuned on fewer tasks) and is queued again; a version measured in full is not measured
    again (fake pipeline: wiring only)."""
    from rq import SimpleWorker
    from rq.serializers import JSONSerializer

    from backend.state.schemas import CalibrateJob
    from worker.quality import measure

    svc, tasks, version, report = boxes_measured(make_service, 3, 4)
    assert len(report.tasks) == 3 and not report.skipped
    assert report.default["Object"].n == 3 and report.default["Object"].iou is not None
    rt = runtime.get()
    assert measure.calibrate_project(rt, svc.store, 1, version) == measure.MEASURED
    tuning = svc.store.quality.tuning(1)
    assert tuning is not None and tuning.version == version
    # an annotation updated without a new version (accepted unchanged): measured again, still
    # compared with the version measured before it
    newest = svc.store.data.recent_annotations(1)[0]
    svc.store.data.set_annotation_fingerprint(1, newest, "2999-01-01T00:00:00Z")
    assert measure.calibrate_project(rt, svc.store, 1, version) == "measured 3 task(s)"
    (remeasured,) = [r for r in svc.store.quality.reports(1) if r.version == version]
    assert remeasured.basis != report.basis
    assert remeasured.previous is not None and report.previous is not None
    assert remeasured.previous.version == report.previous.version != version
    report = remeasured

    # the version not measured yet (its report gone), predictions waiting
    svc.conn.hdel(key("p:{p}:quality", p=1), str(report.n))
    calls: list[int] = []

    def busy() -> bool:
        calls.append(1)
        return True

    assert measure.calibrate_project(rt, svc.store, 1, version, busy) == measure.STOPPED
    assert calls == [1]  # asked once, after the first task
    assert not [r for r in svc.store.quality.reports(1) if r.version == version]
    assert svc.store.quality.tuning(1) == tuning  # untouched
    assert measure.calibrate_project(rt, svc.store, 1, "gfsam-p1-v0", busy) == "stale"

    # through the worker's entry point: stopped, then queued again as its next attempt
    svc.jobs.batch.enqueue("os.getcwd")  # a waiting job (never run here)
    payload = CalibrateJob(project=1, version=version)
    assert svc.jobs.enqueue_calibrate(payload) is None  # still known from the first run
    again = CalibrateJob(project=1, version=version, attempt=7)
    assert svc.jobs.enqueue_calibrate(again) == f"calibrate-1-{report.n}-7"
    worker = SimpleWorker([svc.jobs.calibrate], connection=svc.conn, serializer=JSONSerializer)
    worker.work(burst=True, max_jobs=1, logging_level="WARNING")
    assert svc.jobs.calibrate.job_ids == [f"calibrate-1-{report.n}-8"]
    assert not [r for r in svc.store.quality.reports(1) if r.version == version]
    svc.jobs.batch.empty()  # the predictions served: the next attempt measures in full
    worker.work(burst=True, max_jobs=1, logging_level="WARNING")
    (measured,) = [r for r in svc.store.quality.reports(1) if r.version == version]
    assert len(measured.tasks) == 3 and not svc.jobs.calibrate.job_ids


def test_a_task_whose_image_cannot_be_read_is_skipped(
    make_service: Callable[..., Service],
) -> None:
    """An annotated task whose image is not an image (or is gone) is listed as skipped; the
    others are measured (it used to fail the whole measurement of every later version)."""
    from worker.quality import measure

    svc, tasks, version, report = boxes_measured(make_service, 4, 5)
    assert len(report.tasks) == 4
    broken, gone = tasks[1], tasks[2]
    svc.ls.media[svc.ls.tasks[broken]["data"]["image"]] = b"not an image"
    del svc.ls.media[svc.ls.tasks[gone]["data"]["image"]]
    svc.conn.hdel(key("p:{p}:quality", p=1), str(report.n))
    done = measure.calibrate_project(runtime.get(), svc.store, 1, version)
    assert done == "measured 2 task(s), 2 skipped", done
    (again,) = [r for r in svc.store.quality.reports(1) if r.version == version]
    assert sorted(again.skipped) == sorted([broken, gone])
    assert sorted(again.tasks) == sorted(t for t in tasks[:4] if t not in (broken, gone))
    page = svc.client.get("/status/projects/1").text
    assert "Not scored (image gone or unreadable)" in page
    # every image unreadable: the job fails with the cause instead of measuring nothing
    for t in tasks[:4]:
        svc.ls.media[svc.ls.tasks[t]["data"]["image"]] = b"not an image"
    svc.conn.hdel(key("p:{p}:quality", p=1), str(report.n))
    with pytest.raises(ValueError, match="decode"):
        measure.calibrate_project(runtime.get(), svc.store, 1, version)


def test_each_version_is_compared_with_the_previous_one_on_the_same_tasks(
    make_service: Callable[..., Service],
) -> None:
    """Issue 19 "and the same for the previous version": a version's report scores the version
    measured before it again, on the very tasks it was scored on (same leave-one-out, defaults
    on both sides); when that version's shots are gone it says so instead (fake pipeline:
    wiring only)."""
    from tests.fakes import box_mask
    from tests.project_helpers import annotate, setup_project
    from worker.quality import measure

    svc = make_service(calibrate=True)
    tasks = setup_project(svc, 4)
    versions = []
    for k, task in enumerate(tasks[:3]):
        annotate(svc, task, box_mask(48, 64, 5 + k, 30 + k, 10, 40 + k))
        svc.run_worker()
        versions.append(svc.store.data.current_version(1))
    ordered = svc.store.quality.reports(1)  # v1 (one task, its own shot) has nothing to score
    assert len(ordered) >= 2 and ordered[0].previous is None  # the first: nothing before it
    reports = {r.version: r for r in ordered}
    last = reports[versions[-1]]
    prev = last.previous
    assert prev is not None and prev.reason == ""
    measured_before = max(
        (r for r in reports.values() if r.n < last.n), key=lambda r: r.n
    )  # the version measured just before
    assert prev.version == measured_before.version and prev.n == measured_before.n
    assert prev.tasks == len(last.tasks)  # every task this version was scored on
    assert prev.default["Object"].n == last.default["Object"].n  # the same tasks hold it
    assert prev.default["Object"].iou is not None
    measured = svc.store.quality.measured(1)
    assert measured is not None and measured.version == versions[-1]
    api = svc.client.get("/projects/1/quality").json()
    assert api["versions"][-1]["previous"]["version"] == prev.version
    # the measured set's shots expired: not silently skipped, the reason is recorded
    gone = measured.model_copy(update={"n": measured.n - 1})
    shot = next(iter(gone.shots.values()))[0]
    gone.shots = {"Object": [shot.model_copy(update={"ref": "0" * 64})]}
    svc.store.quality.put_report(last, None, gone)
    svc.conn.hdel(key("p:{p}:quality", p=1), str(last.n))  # measured again: its report gone
    assert measure.calibrate_project(runtime.get(), svc.store, 1, versions[-1]).startswith(
        "measured"
    )
    again = [r for r in svc.store.quality.reports(1) if r.version == versions[-1]][0]
    assert again.previous is not None and again.previous.tasks == 0
    assert "no longer stored" in again.previous.reason and again.previous.default == {}


def test_a_label_tuned_to_another_mode_is_predicted_in_it(
    make_service: Callable[..., Service],
) -> None:
    """Predictions apply the per-label mode the measurement chose (`Tuning.modes`): with two
    agreeing Cat shots split leaves NO_CAT's look-alike unpainted; once Cat is tuned to argmax
    it paints Cat's whole mask there, while Dog keeps split."""
    from backend.state.schemas import Tuning
    from tests.test_assign_worker import CROWD, NO_CAT, region, regions_by_label, start
    from tests.test_assign_worker import webhook as ann_webhook
    from worker.prediction import inference

    svc, (_, crowd, no_cat) = start(make_service, calibrate=True)
    ann = svc.ls.annotate(crowd, [region(CROWD == 1, "Cat"), region(CROWD == 3, "Dog")])
    ann_webhook(svc, ann, "ANNOTATION_CREATED")
    svc.run_worker()
    rt, cfg, refs = runtime.get(), svc.store.data.config(P), svc.store.data.reference_set(P)
    assert cfg is not None
    image = svc.ls.media[svc.ls.tasks[no_cat]["data"]["image"]]

    def cat_on_look_alike(modes: dict[str, str]) -> float:
        tuning = Tuning(version=refs.version, modes=modes)
        svc.store.quality.put_report(
            QualityReport(project=P, version=refs.version, n=refs.n), tuning
        )
        got = inference.predict_task(rt, svc.store, cfg, refs, no_cat, image).prediction
        cats = [m for m, _ in regions_by_label(got.model_dump()).get("Cat", [])]
        return float(np.logical_or.reduce(cats)[NO_CAT == 2].mean()) if cats else 0.0

    assert cat_on_look_alike({}) == 0.0
    assert cat_on_look_alike({"Cat": "argmax"}) > 0.9


def test_the_measurement_scores_the_geometry_a_prediction_posts(service_settings: Any) -> None:
    """`cleaned_assignment` (what both a prediction and the measurement use): a nested
    duplicate joins its host, a speck goes, scores and candidates stay; GEOMETRY_CLEAN=false
    leaves the assignment as it is."""
    from gfsam.assign import Assignment, Instance
    from tests.service_fixtures import changed
    from worker.prediction.inference import cleaned_assignment

    def inst(mask: np.ndarray, score: float) -> Instance:
        return Instance("A", mask, score, 0.5, 1.0, "A")

    big, inner, speck = (np.zeros((64, 64), dtype=bool) for _ in range(3))
    big[10:40, 10:40] = True
    inner[15:25, 15:25] = True
    speck[60:62, 60:62] = True
    cand = inst(np.zeros((64, 64), dtype=bool), 0.1)
    asg = Assignment({"A": [inst(big, 0.9), inst(inner, 0.4), inst(speck, 0.8)]}, [cand])
    out = cleaned_assignment(asg, service_settings)
    assert [i.score for i in out.accepted["A"]] == [0.9]
    assert (out.label_masks()["A"] == big).all() and out.candidates == [cand]
    assert len(asg.accepted["A"]) == 3 and asg.accepted["A"][2].mask.sum() == 4  # untouched
    off = changed(service_settings, geometry_clean=False)
    assert cleaned_assignment(asg, off) is asg
