"""Worker entrypoint: `python -m worker.main [--burst] [--check]`.

In order: read Settings; configure logging; build the pipeline once (refuse to start without
weights, naming the paths tried); PING Redis with retry; start the maintenance thread (lease,
recovery of abandoned jobs, scheduler); run `SimpleWorker` (no fork: CUDA and loaded models stay
in this process; `worker.joblog` logs one line per job) on the high queue first, then the batch
queue.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
import uuid

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from rq.serializers import JSONSerializer

from backend.state.jobs import Jobs, connect
from backend.state.logs import setup_logging
from backend.state.settings import Settings, get_settings
from backend.state.store import WORKER_PREFIX, Store
from gfsam.encoders.weights import WeightsNotFoundError
from worker import runtime
from worker.contract import ContractError
from worker.joblog import JobLoggingWorker
from worker.labelstudio.errors import LabelStudioAuthError
from worker.prediction import delivery, prefetch
from worker.recovery import Maintenance

logger = logging.getLogger(__name__)

EXIT_NO_WEIGHTS = 2
EXIT_CONFIG = 3
EXIT_MODEL = 4  # the model does not meet worker.contract (a member is missing)
REDIS_RECONNECT_ATTEMPTS = 300  # one a second: a Redis restart or failover takes this long at most


def wait_for_redis(url: str, attempts: int = 30, delay_s: float = 1.0) -> Redis:
    """Connect and PING, retrying while Redis starts."""
    conn = connect(url)
    for attempt in range(attempts):
        try:
            conn.ping()
            return conn
        except RedisConnectionError:
            if attempt == attempts - 1:
                raise
            time.sleep(delay_s)
    return conn


def load_or_explain(settings: Settings, *, interactive: bool = False) -> int:
    """Load the models (`interactive`: the click lane's, `INTERACTIVE_SAM`); on a missing key,
    missing weights or a model that does not meet the worker's contract say what is wrong.
    Returns 0 or an exit code."""
    try:
        runtime.load(settings, interactive=interactive)
    except LabelStudioAuthError as exc:
        logger.error("%s: the worker needs it to download images and post predictions", exc)
        return EXIT_CONFIG
    except WeightsNotFoundError as exc:
        logger.error(
            "GF-SAM weights not found, worker not started.\n%s\n"
            "Download them with `python -m gfsam weights download --model-dir %s`, set MODEL_DIR, "
            "or run with GFSAM_PRESET=tiny (random weights, wiring checks only).",
            exc,
            settings.model_dir,
        )
        return EXIT_NO_WEIGHTS
    except ContractError as exc:
        logger.error("worker not started: %s", exc)
        return EXIT_MODEL
    return 0


def run(settings: Settings, *, burst: bool = False, interactive: bool = False) -> int:
    """Run one worker until SIGTERM/SIGINT (warm shutdown) or, with `burst`, an empty queue;
    `interactive`: the smart-tool lane only (clicks and warm-ups, issue 9)."""
    if not settings.redis_url:
        logger.error("REDIS_URL is not set (python -m backend.run sets it for its worker)")
        return EXIT_CONFIG
    code = load_or_explain(settings, interactive=interactive)
    if code:
        return code
    conn = wait_for_redis(settings.redis_url)
    jobs = Jobs(conn, settings, Store(conn, settings))
    name = f"{WORKER_PREFIX}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    queues = [jobs.interactive] if interactive else jobs.queues
    queue_names = [q.name for q in queues]
    maintenance = Maintenance(settings, name, queue_names)
    maintenance.start()
    worker = JobLoggingWorker(queues, connection=conn, serializer=JSONSerializer, name=name)
    worker.on_job = maintenance.running  # the lease names the running job (recovery)
    logger.info("worker %s listening on %s", name, ", ".join(queue_names))
    try:
        while True:  # Redis restarted under a job: reconnect rather than exit (issue 7)
            try:
                worker.work(burst=burst, logging_level=settings.log_level, with_scheduler=False)
                break
            except RedisConnectionError as exc:
                logger.warning("Redis connection lost (%s): reconnecting", type(exc).__name__)
                conn = wait_for_redis(settings.redis_url, attempts=REDIS_RECONNECT_ATTEMPTS)
                jobs = Jobs(conn, settings, Store(conn, settings))
                queues = [jobs.interactive] if interactive else jobs.queues
                conn.delete(worker.key)  # RQ refuses a second birth of a name it holds
                worker = type(worker)(queues, connection=conn, serializer=JSONSerializer, name=name)
                worker.on_job = maintenance.running
    finally:
        delivery.reset()  # pending background POSTs finish before exit
        prefetch.reset()
        maintenance.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.main", description=__doc__)
    parser.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    parser.add_argument(
        "--check", action="store_true", help="only build the models (weights present?) and exit"
    )
    parser.add_argument(
        "--interactive",
        action="store_true",
        help="serve only the interactive lane (smart-tool clicks, editor warm-ups)",
    )
    args = parser.parse_args(argv)
    settings = get_settings()
    setup_logging(settings.log_level, settings.log_format, "worker")
    if args.check:
        return load_or_explain(settings, interactive=args.interactive)
    return run(settings, burst=args.burst, interactive=args.interactive)


if __name__ == "__main__":
    sys.exit(main())
