"""Found by scripts/soak.py (issue 7): a /predict whose waiter was orphaned (its reply failed on
a Redis restart) leaves the posting to the worker's delayed check; that post must leave a
delivery claim, or a later /predict answers the same (task, version) inline again and Label
Studio stores it twice."""

from __future__ import annotations

from backend.state.keys import key
from backend.state.schemas import DeliverJob, PredictJob
from tests.fakes import png_bytes
from tests.project_helpers import SEED, H, W, annotate, setup_project
from tests.service_fixtures import Service


def test_a_post_after_an_orphaned_waiter_is_never_answered_inline_again(svc: Service) -> None:
    tasks = setup_project(svc, 1)
    annotate(svc, tasks[0], SEED)
    svc.run_worker()
    v = svc.store.data.current_version(1)
    t = svc.ls.add_task(1, png_bytes(W, H, seed=7))["id"]
    svc.store.coord.waiter_enter(1, t, v, ttl_s=60)  # a /predict that never came back
    svc.jobs.enqueue_predict(PredictJob(project=1, task=t, version=v, interactive=True), high=True)
    svc.run_worker()  # computed; a waiter exists, so only a delayed check is scheduled
    assert not svc.ls.predictions_for(t)
    svc.conn.delete(key("waiters:{p}:{t}:{v}", p=1, t=t, v=v))  # the waiter's key expires
    svc.jobs.enqueue_deliver(DeliverJob(project=1, task=t, version=v))  # the check runs
    svc.run_worker()
    assert len(svc.ls.predictions_for(t)) == 1
    body = {"project": "1.1", "tasks": [{"id": t, "data": {"image": "ignored"}}]}
    reply = svc.client.post("/predict", json=body)
    assert reply.status_code == 200
    assert "result" not in reply.json()["results"][0]  # LS would store an inline result again
    svc.run_worker()
    assert len(svc.ls.predictions_for(t)) == 1
