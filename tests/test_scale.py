"""worker.correction.debounce: corrections at project scale (debounced re-fits, look-ahead and the
feed)."""

from __future__ import annotations

from collections.abc import Callable

from tests.fakes import box_mask
from tests.project_helpers import SEED, H, W, annotate, seeded, setup_project, status, version
from tests.service_fixtures import Service, tick_scheduler, wait_until


def run_scheduled(svc: Service, func: str) -> None:
    """Tick the scheduler until a scheduled job of `func` is due and queued, then run it all."""

    def queued() -> bool:
        tick_scheduler(svc.conn, svc.settings)
        return any(j.func_name == func for q in svc.jobs.queues for j in q.jobs)

    wait_until(queued, 10, f"a scheduled {func} job to be due")
    svc.run_worker()


def test_a_burst_of_corrections_yields_one_version(make_service: Callable[..., Service]) -> None:
    svc = make_service(refit_debounce_s=0.2)
    tasks = setup_project(svc, 4)
    svc.run_worker()  # the first /setup's sync
    seed = annotate(svc, tasks[0], SEED)
    fixes = [
        annotate(svc, t, box_mask(H, W, 0, 20 + 5 * i, 0, 30)) for i, t in enumerate(tasks[1:3])
    ]
    svc.run_worker()  # three annotation events: pending, one re-fit scheduled
    assert version(svc) == "gfsam-p1-v0"
    scheduled = svc.jobs.batch.scheduled_job_registry.get_job_ids()
    assert len(scheduled) == 1 and scheduled[0].startswith("refit-1-")
    run_scheduled(svc, "worker.tasks.refit_project")
    assert version(svc) == "gfsam-p1-v1"  # one version for the burst, not three
    assert status(svc)["shots"] == {"Object": [seed["id"], *[f["id"] for f in fixes]]}
    assert [p["task"] for p in svc.ls.posts] == [tasks[3]]  # the only unlabeled task
    assert svc.store.data.pending(1) == []


def test_an_event_during_a_running_refit_opens_a_new_window(
    make_service: Callable[..., Service],
) -> None:
    svc = make_service(refit_debounce_s=0.2)
    tasks = setup_project(svc, 3)
    svc.run_worker()
    annotate(svc, tasks[0], SEED)
    svc.run_worker()
    svc.store.coord.close_refit_window(1)  # the scheduled re-fit has started...
    late = annotate(svc, tasks[1], box_mask(H, W, 0, 40, 0, 60))  # ...when this arrives
    svc.run_worker()
    assert len(svc.jobs.batch.scheduled_job_registry.get_job_ids()) == 2

    def applied() -> bool:
        tick_scheduler(svc.conn, svc.settings)
        svc.run_worker()
        return version(svc) == "gfsam-p1-v1" and not svc.store.data.pending(1)

    wait_until(applied, 10, "both windows' re-fits")  # the second finds the state applied
    assert late["id"] in status(svc)["shots"]["Object"]


def test_lookahead_first_then_the_feed_in_label_studio_order(
    make_service: Callable[..., Service],
) -> None:
    svc = make_service(lookahead_tasks=2, feed_chunk=2)
    tasks = seeded(svc, 7)
    assert [p["task"] for p in svc.ls.posts] == tasks[1:]  # all six, in LS order
    assert svc.jobs.background.count == 0 and svc.store.data.peek_feed(1, "gfsam-p1-v1", 9) == (
        [],
        0,
    )


def test_the_lookahead_is_queued_before_the_rest(make_service: Callable[..., Service]) -> None:
    svc = make_service(lookahead_tasks=2, feed_chunk=2)
    tasks = setup_project(svc, 7)
    svc.run_worker()  # the first /setup's sync: nothing annotated yet
    annotate(svc, tasks[0], SEED)
    svc.run_worker(max_jobs=1)  # the re-fit: v1, pre-annotation queued
    batch = [j.args[0]["task"] for j in svc.jobs.batch.jobs]
    assert batch == tasks[1:3]  # the next two in LS order, at once
    assert [j.id for j in svc.jobs.background.jobs] == ["feed-1-1-0"]


def test_a_newer_version_stops_the_old_feed(make_service: Callable[..., Service]) -> None:
    svc = make_service(lookahead_tasks=1, feed_chunk=1)
    tasks = setup_project(svc, 6)
    svc.run_worker()
    annotate(svc, tasks[0], SEED)
    svc.run_worker(max_jobs=2)  # the re-fit (v1), the look-ahead task predicted
    assert [p["task"] for p in svc.ls.posts] == [tasks[1]]
    annotate(svc, tasks[1], box_mask(H, W, 0, 40, 0, 60))  # a correction: v2
    svc.run_worker()
    v1 = [p["task"] for p in svc.ls.posts if p["model_version"] == "gfsam-p1-v1"]
    v2 = [p["task"] for p in svc.ls.posts if p["model_version"] == "gfsam-p1-v2"]
    assert v1 == [tasks[1]]  # the v1 feed stopped: nothing more of v1
    assert v2 == tasks[2:]  # every unlabeled task got v2, in order


def test_an_annotation_of_another_project_never_blocks_the_refits(
    make_service: Callable[..., Service],
) -> None:
    """A pending state that fails for good is recorded and dropped; the others are applied."""
    svc = make_service(refit_debounce_s=0.2)
    tasks = setup_project(svc, 3)
    svc.run_worker()
    foreign_task = svc.ls.add_task(2, None)["id"]
    foreign = svc.ls.annotate(foreign_task, [])
    svc.store.data.add_pending(1, foreign["id"], foreign["updated_at"])  # a forged event
    seed = annotate(svc, tasks[0], SEED)
    svc.run_worker()
    run_scheduled(svc, "worker.tasks.refit_project")
    assert version(svc) == "gfsam-p1-v1" and status(svc)["shots"] == {"Object": [seed["id"]]}
    assert "not in project 1" in status(svc)["failures"][f"annotation:{foreign['id']}"]
    assert svc.store.data.pending(1) == []


def test_the_feed_keeps_entries_until_they_are_queued(
    make_service: Callable[..., Service],
) -> None:
    svc = make_service(lookahead_tasks=0, feed_chunk=2)
    svc.store.data.put_feed(1, "gfsam-p1-v1", ["a", "b", "c"])
    assert svc.store.data.peek_feed(1, "gfsam-p1-v1", 2) == (["a", "b"], 1)
    assert svc.store.data.peek_feed(1, "gfsam-p1-v1", 2) == (["a", "b"], 1)  # still there
    svc.store.data.drop_feed_head(1, "gfsam-p1-v1", 2)
    assert svc.store.data.peek_feed(1, "gfsam-p1-v1", 2) == (["c"], 0)
