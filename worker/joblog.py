"""One log line per job, for every job, at the RQ level (the job functions log nothing of it).

`JobLoggingWorker` is RQ's `SimpleWorker` (no fork) that times each job and logs, once it
ended, what it was about and how it went:

    job predict-1-7-2 predict_task project=1 task=7 version=gfsam-p1-v2 queue=gfsam-batch
    duration_s=0.412 outcome=ok result=posted

`outcome` is `ok` (with the job's return value as `result`), `retry` (failed, scheduled again)
or `failed` (for good), then with `error` (exception type and message). With LOG_FORMAT=json the
same fields are top-level keys of the line (`backend.state.logs`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from rq import SimpleWorker
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.queue import Queue

logger = logging.getLogger(__name__)

PAYLOAD_FIELDS = ("project", "task", "version", "annotation")
RESULT_CHARS = 120
STOP_WAIT_S = 1.0  # longest wait for RQ's command thread at shutdown (RQ's own join timeout)
ERROR_CHARS = 300


def job_fields(job: Job) -> dict[str, Any]:
    """What a job is about, from its id, function and JSON payload (ids only, never data)."""
    fields: dict[str, Any] = {"job": job.id, "func": (job.func_name or "").rsplit(".", 1)[-1]}
    payload = job.args[0] if job.args and isinstance(job.args[0], dict) else {}
    for name in PAYLOAD_FIELDS:
        if isinstance(payload.get(name), int | str):
            fields[name] = payload[name]
    if isinstance(payload.get("annotations"), list):
        fields["annotations"] = len(payload["annotations"])
    fields["queue"] = job.origin
    return fields


def describe(fields: dict[str, Any]) -> str:
    """`job <id> <func> k=v ...`: the text form of the per-job line."""
    rest = " ".join(f"{k}={v}" for k, v in fields.items() if k not in ("job", "func"))
    return f"job {fields['job']} {fields['func']} {rest}"


class JobLoggingWorker(SimpleWorker):
    """`SimpleWorker` that logs one line per job (see the module docstring).

    `on_job`, when set, hears the id of each job as it starts and None once it ended (the
    worker's lease names the job it runs: `worker.recovery.Maintenance.running`).
    """

    _job_error: str | None = None
    on_job: Callable[[str | None], None] | None = None

    def unsubscribe(self) -> None:
        """RQ's, with its wait for the command thread bounded on every redis-py: 8.2.0's
        `PubSubWorkerThread.stop()` itself waits, without bound, for a thread RQ leaves blocked
        in a 60 s read, so a shutdown that lost the race hung a minute (requirements.txt keeps
        redis-py below 8.2 as well; tests/test_worker_shutdown.py). The thread is a daemon: it
        ends on its own at its next wake-up or with the process."""
        thread, pubsub = self.pubsub_thread, self.pubsub
        if thread is None or pubsub is None:
            return
        self.log.info(
            "Worker %s: unsubscribing from channel %s", self.name, self.pubsub_channel_name
        )
        pubsub.unsubscribe()
        deadline = time.monotonic() + STOP_WAIT_S
        stopper = threading.Thread(target=thread.stop, name="rq-pubsub-stop", daemon=True)
        stopper.start()  # clears the thread's flag (and, on redis-py 8.2, waits for it)
        stopper.join(STOP_WAIT_S)
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
        pubsub.close()

    def execute_job(self, job: Job, queue: Queue) -> None:
        if self.on_job is not None:
            self.on_job(job.id)  # before RQ registers it as started
        try:
            super().execute_job(job, queue)
        finally:
            if self.on_job is not None:
                self.on_job(None)

    def perform_job(self, job: Job, queue: Queue, execution: Execution) -> bool:
        self._job_error = None
        started = time.monotonic()
        ok = super().perform_job(job, queue, execution)
        fields = job_fields(job)
        fields["duration_s"] = round(time.monotonic() - started, 3)
        if ok:
            fields["outcome"] = "ok"
            result = job.return_value(refresh=False)
            if result is not None:
                fields["result"] = str(result)[:RESULT_CHARS]
        else:
            status = job.get_status(refresh=False)
            retried = status in (JobStatus.SCHEDULED, JobStatus.QUEUED)
            fields["outcome"] = "retry" if retried else "failed"
            fields["error"] = (self._job_error or "unknown")[:ERROR_CHARS]
        level = logging.INFO if ok else logging.WARNING
        logger.log(level, "%s", describe(fields), extra={"fields": fields})
        return ok

    def handle_exception(self, job: Job, *exc_info: Any) -> None:
        exc = exc_info[1] if len(exc_info) > 1 else None
        self._job_error = f"{type(exc).__name__}: {exc}" if exc is not None else None
        super().handle_exception(job, *exc_info)
