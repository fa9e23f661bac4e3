"""Images ahead of their jobs (issue 12; docs/architecture.md §3, "Prefetch and background
delivery"): the thread that feeds the model never waits for the network.

- Prefetch: when a predict job starts, the images of the next `prefetch_jobs` queued predict
  jobs are downloaded and decoded by a small thread pool (at most `prefetch_bytes` held). The
  URL is found as the job itself finds it (the payload's for pre-annotation, Label Studio's task
  data otherwise) and the job still decides its own URL: it takes prefetched bytes only when
  they came from exactly that URL. A prefetch that failed for that URL hands the job its error
  (the job never fetches a failing or slow image a second time, issue 22); one dropped for the
  byte budget leaves the job to download as before.
- Batched encoding: when a target must be encoded and prefetched images of queued jobs are not
  in the target cache, they are encoded with it (`encode_targets`, `encode_batch` per call)
  and cached, so those jobs hit the cache.
- Background delivery is `worker.prediction.delivery`'s (LS POSTs after the result is stored
  and claimed).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from pydantic import ValidationError
from rq.job import Job
from rq.serializers import JSONSerializer

from backend.state.jobs import Jobs
from backend.state.schemas import PredictJob
from backend.state.store import Store
from gfsam.encodings import TargetEncoding
from worker import runtime
from worker.labelstudio.client import LabelStudioClient

logger = logging.getLogger(__name__)

PREDICT_FUNC = "worker.tasks.predict_task"


@dataclass
class Prefetched:
    """One queued job's image, downloaded (and decoded) ahead of its turn.

    Attributes:
        url: where it was downloaded from (the job uses it only for that same URL).
        data: the file's bytes. sha: their sha256 hex (the target cache key).
        image: uint8 [H, W, 3] RGB, or None when decoding failed or it was encoded already.
    """

    url: str
    data: bytes
    sha: str
    image: np.ndarray | None
    error: Exception | None = None  # the download failed: the job raises it, no second fetch

    @property
    def nbytes(self) -> int:
        return len(self.data) + (self.image.nbytes if self.image is not None else 0)


class Prefetcher:
    """Per-process prefetch state for one runtime (entries keyed by task id, in queue order)."""

    def __init__(self, rt: runtime.Runtime) -> None:
        self.rt = rt
        self.settings = rt.settings
        self.pool = ThreadPoolExecutor(
            self.settings.prefetch_threads, thread_name_prefix="gfsam-prefetch"
        )
        self.entries: OrderedDict[int, Future[Prefetched | None]] = OrderedDict()
        self.lock = threading.Lock()
        self.current: Prefetched | None = None  # the running job's image, for its encoding
        self._clients = runtime.ThreadClient(self.settings)

    def client(self) -> LabelStudioClient:
        """This thread's LS client (the job's client is not shared across threads)."""
        return self._clients.get()

    def look_ahead(self, store: Store, jobs: Jobs, running: str, task: int) -> None:
        """Start prefetching the next queued predict jobs behind the running one (`task`);
        forget entries neither running nor ahead any more."""
        ahead = upcoming(jobs, running, self.settings.prefetch_jobs)
        keep = {job.task for job in ahead} | {task}
        with self.lock:
            for t in [t for t in self.entries if t not in keep]:
                self._drop(t)
            for job in ahead:
                full = len(self.entries) >= self.settings.prefetch_jobs
                if job.task in self.entries or full or self.held() >= self.settings.prefetch_bytes:
                    continue
                if store.data.current_version(job.project) != job.version:
                    continue  # stale: the job will not download anything
                cfg = store.data.config(job.project)
                key = cfg.data_key if cfg is not None else None
                self.entries[job.task] = self.pool.submit(self._fetch, job, key)

    def _fetch(self, job: PredictJob, data_key: str | None) -> Prefetched | None:
        url = job.image_url
        ls = self.client()
        if job.interactive or url is None:  # as the job does: LS's task data, not the payload's
            task = ls.get_task(job.task, job.project)  # never GET /api/tasks/{id}
            if data_key is None or (task.project is not None and task.project != job.project):
                return None
            url = task.image_url(data_key)
            if url is None:
                return None
        try:
            data = ls.download(url, task_id=job.task)
        except Exception as exc:  # the job raises it for this URL instead of fetching again
            return Prefetched(url, b"", "", None, error=exc)
        try:
            image: np.ndarray | None = self.rt.model.load_image(data)
        except ValueError:
            image = None  # the job decodes again and reports the error itself
        item = Prefetched(url, data, hashlib.sha256(data).hexdigest(), image)
        with self.lock:
            if self.held() + item.nbytes > self.settings.prefetch_bytes:
                return None  # over the byte budget: the job downloads it itself
        return item

    def held(self) -> int:
        """Bytes held by completed prefetches (data + decoded images; lock held)."""
        total = 0
        for future in self.entries.values():
            if future.done() and not future.cancelled() and future.exception() is None:
                item = future.result()
                total += item.nbytes if item is not None and item.error is None else 0
        return total

    def _drop(self, t: int) -> None:
        """Forget task t's entry (lock held); a running download ends and is discarded."""
        self.entries.pop(t).cancel()  # a running download ends and is discarded

    def take(self, t: int, url: str, timeout_s: float) -> Prefetched | None:
        """Task t's prefetched image if it came from `url` (waits for a running download).

        Raises:
            The prefetch's own download error, when it failed for `url`.
        """
        with self.lock:
            future = self.entries.get(t)
        if future is None:
            return None
        try:
            item = future.result(timeout=timeout_s)
        except Exception as exc:  # the job downloads itself, with its own error handling
            logger.debug("prefetch of task %s failed: %s", t, exc)
            item = None
        with self.lock:
            if t in self.entries:
                self._drop(t)
        if item is None or item.url != url:
            return None
        if item.error is not None:
            raise item.error
        return item

    def ready(self, exclude: str, limit: int) -> list[Prefetched]:
        """Up to `limit` completed prefetches with a decoded image not in the target cache."""
        out: list[Prefetched] = []
        with self.lock:
            futures = list(self.entries.values())
        for future in futures:
            if len(out) >= limit:
                break
            if not future.done() or future.cancelled() or future.exception() is not None:
                continue
            item = future.result()
            if item is None or item.error is not None or item.image is None:
                continue
            if item.sha == exclude:
                continue
            if any(o.sha == item.sha for o in out) or self.rt.targets.contains(item.sha):
                continue
            out.append(item)
        return out

    def release_image(self, item: Prefetched) -> None:
        """Drop a decoded image that is no longer needed (its encoding is cached)."""
        with self.lock:
            item.image = None

    def close(self) -> None:
        with self.lock:
            for t in list(self.entries):
                self._drop(t)
        self.pool.shutdown(wait=False, cancel_futures=True)


_prefetcher: Prefetcher | None = None
_guard = threading.Lock()


def get(rt: runtime.Runtime) -> Prefetcher | None:
    """This process's prefetch state for `rt` (None when prefetching is off)."""
    global _prefetcher
    if rt.settings.prefetch_jobs == 0:
        return None
    with _guard:
        if _prefetcher is None or _prefetcher.rt is not rt:  # a new runtime (tests install several)
            if _prefetcher is not None:
                _prefetcher.close()
            _prefetcher = Prefetcher(rt)
        return _prefetcher


def reset() -> None:
    """Stop the prefetch threads and forget the state (worker exit, tests)."""
    global _prefetcher
    with _guard:
        if _prefetcher is not None:
            _prefetcher.close()
        _prefetcher = None


def upcoming(jobs: Jobs, running: str, n: int) -> list[PredictJob]:
    """The next `n` queued predict jobs in listening order (high, then batch), not `running`."""
    if n <= 0:
        return []
    ids = [i for q in (jobs.high, jobs.batch) for i in q.get_job_ids(0, n) if i != running]
    out: list[PredictJob] = []
    fetched = Job.fetch_many(ids, connection=jobs.conn, serializer=JSONSerializer)
    for job in fetched:
        if job is None or job.func_name != PREDICT_FUNC or not job.args:
            continue
        try:
            out.append(PredictJob.model_validate(job.args[0]))
        except ValidationError:
            continue
        if len(out) == n:
            break
    return out


def download(
    rt: runtime.Runtime, store: Store, jobs: Jobs, running: str, t: int, url: str
) -> bytes:
    """The job's image: prefetched when it came from `url`, else downloaded now (same errors as
    `LabelStudioClient.download`). Starts prefetching the jobs behind this one first."""
    ahead = get(rt)
    if ahead is None:
        return rt.ls.download(url, task_id=t)
    ahead.current = None
    try:
        ahead.look_ahead(store, jobs, running, t)
    except Exception as exc:  # prefetching is an optimisation: never fail the job for it
        logger.warning("prefetch look-ahead failed: %s: %s", type(exc).__name__, exc)
    timeout = rt.settings.media_deadline_s + rt.settings.ls_timeout_s
    try:
        item = ahead.take(t, url, timeout)
    except Exception:
        store.progress.incr_stat("prefetch_hit")  # its failure is the job's: no second fetch
        raise
    store.progress.incr_stat("prefetch_hit" if item is not None else "prefetch_miss")
    if item is None:
        return rt.ls.download(url, task_id=t)
    ahead.current = item
    return item.data


class _Decoded(threading.local):
    """Per thread: (sha, uint8 [H, W, 3]) the last image this thread decoded, or None."""

    image: tuple[str, np.ndarray] | None = None


_decoded = _Decoded()


def decoded_image(rt: runtime.Runtime, image_bytes: bytes, sha: str) -> np.ndarray:
    """`image_bytes` (sha256 `sha`) decoded by the model's loader; this thread's last decode
    when it is that image (the target encoder's, reused by discovery's crops: one JPEG decode a
    task, not two). At most one image a thread is kept; the pre-annotation job drops it when it
    ends (`forget_decoded`), other jobs' decodes are replaced by the next one."""
    held = _decoded.image
    if held is not None and held[0] == sha:
        return held[1]
    image = rt.model.load_image(image_bytes)
    _decoded.image = (sha, image)
    return image


def forget_decoded() -> None:
    """Drop this thread's kept decode (a job's image does not outlive the job)."""
    _decoded.image = None


def encode_target(
    rt: runtime.Runtime, store: Store, image_bytes: bytes, sha: str
) -> TargetEncoding:
    """Encode one target (a cache miss), with the prefetched images of the queued jobs that are
    not cached yet when `encode_batch` > 1; those go to the target cache (`target_encode` each).

    Returns:
        The target encoding of `image_bytes`.
    """
    pipeline = rt.model.pipeline
    ahead = get(rt)
    current = ahead.current if ahead is not None else None
    image = current.image if current is not None and current.sha == sha else None
    if image is None:
        image = decoded_image(rt, image_bytes, sha)
    else:
        _decoded.image = (sha, image)  # the prefetched decode, for discovery's crops too
    batch = rt.settings.encode_batch
    others: list[tuple[Prefetched, np.ndarray]] = []
    if ahead is not None and batch > 1:
        others = [(o, o.image) for o in ahead.ready(sha, batch - 1) if o.image is not None]
    if ahead is None or not others:
        return pipeline.encode_target(image)
    images = [image, *(img for _, img in others)]
    encoded = pipeline.encode_targets(images, batch_size=batch)
    for (item, _), target in zip(others, encoded[1:], strict=True):
        rt.targets.put(item.sha, target.to_bytes())
        ahead.release_image(item)
    store.progress.incr_stat("target_encode", len(others))
    store.progress.incr_stat("target_batch")
    logger.debug("encoded %d targets in one batch", 1 + len(others))
    return encoded[0]
