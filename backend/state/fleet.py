"""The workers as RQ and our leases see them, for the status page (docs/architecture.md §3).

RQ registers every worker (`rq:workers`) with its state, heartbeat and current execution; our
`worker.main` processes also hold a lease (`worker:{name}`, renewed every second). Reading them
costs a few Redis commands per worker, never per task.
"""

from __future__ import annotations

from datetime import datetime, timezone

from pydantic import BaseModel
from redis import Redis
from rq import Worker
from rq.serializers import JSONSerializer

from backend.state.coordination import WORKER_PREFIX
from backend.state.keys import key

MAX_WORKERS = 64  # shown on the page; a larger fleet is summarised by its count


class WorkerInfo(BaseModel):
    """One worker process."""

    name: str
    state: str  # RQ's: idle, busy, suspended, ...
    queues: list[str]
    current_job: str | None
    heartbeat_age_s: float | None  # since RQ's last heartbeat
    lease_age_s: float | None  # since our lease was last renewed; None: no lease
    leased: bool  # started by worker.main (holds leases)

    @property
    def alive(self) -> bool:
        """A `gfsam-` worker is alive while it holds its lease; others by RQ's heartbeat."""
        return self.lease_age_s is not None if self.leased else self.heartbeat_age_s is not None


def list_workers(conn: Redis, lease_s: int) -> tuple[list[WorkerInfo], int]:
    """The registered workers (at most `MAX_WORKERS`, by name) and how many there are.

    Args:
        conn: the Redis connection (binary replies).
        lease_s: `Settings.worker_lease_s`: the lease's TTL when just renewed.
    """
    found = sorted(Worker.all(connection=conn, serializer=JSONSerializer), key=lambda w: w.name)
    shown = found[:MAX_WORKERS]
    with conn.pipeline() as pipe:
        for w in shown:
            pipe.pttl(key("worker:{name}", name=w.name))
        ttls = pipe.execute()
    now = datetime.now(timezone.utc)
    out = []
    for w, ttl_ms in zip(shown, ttls, strict=True):
        beat = w.last_heartbeat
        if beat is not None and beat.tzinfo is None:
            beat = beat.replace(tzinfo=timezone.utc)
        out.append(
            WorkerInfo(
                name=w.name,
                state=str(w.get_state()),
                queues=[q.name for q in w.queues],
                current_job=w.get_current_job_id(),
                heartbeat_age_s=(now - beat).total_seconds() if beat else None,
                lease_age_s=max(0.0, lease_s - ttl_ms / 1000) if ttl_ms and ttl_ms > 0 else None,
                leased=w.name.startswith(WORKER_PREFIX),
            )
        )
    return out, len(found)
