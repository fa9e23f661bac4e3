"""A worker lets go of Redis within about a second of its last job, whatever the timing.

RQ's worker listens for commands (stop, kill) on a pubsub thread blocked in
`get_message(timeout=60)`; at shutdown it unsubscribes, which wakes that thread, then waits for
it at most a second. redis-py 8.2.0 made `PubSubWorkerThread.stop()` itself wait, unbounded:
when the thread has already read the unsubscribe reply (a race every burst run can lose) the
worker hangs for the full 60 s. The test suite's in-process burst workers lost it often enough
to take CI from 14 to 51 minutes; a production worker would sit 60 s on SIGTERM.
`requirements.txt` keeps redis-py below 8.2; with a version that waits, RQ's SimpleWorker case
fails here, and our `JobLoggingWorker` (every production worker) still passes: its `unsubscribe`
bounds the wait itself (checked with redis-py 8.2.0 on the path).
"""

from __future__ import annotations

import threading
import time

import pytest
from redis import Redis
from rq import Queue, SimpleWorker

from worker.joblog import JobLoggingWorker

HANG_S = 10.0  # far above RQ's own 1 s wait, far below the 60 s of a thread left blocked


@pytest.mark.parametrize("worker_class", [SimpleWorker, JobLoggingWorker])
def test_unsubscribe_returns_after_the_thread_read_the_reply(
    redis_conn: Redis, worker_class: type[SimpleWorker]
) -> None:
    worker = worker_class([Queue("q", connection=redis_conn)], connection=redis_conn)
    worker.subscribe()
    time.sleep(0.2)  # the thread is blocked in get_message
    assert worker.pubsub is not None
    worker.pubsub.unsubscribe()
    time.sleep(0.2)  # ... read the reply, and blocked again: the losing side of the race
    stopper = threading.Thread(target=worker.unsubscribe, daemon=True)
    started = time.monotonic()
    stopper.start()
    stopper.join(HANG_S)
    assert not stopper.is_alive(), f"unsubscribe still waiting after {HANG_S:.0f} s"
    assert time.monotonic() - started < HANG_S
