"""Encoding caches: target encodings on local disk (LRU, bounded), references in process memory.

Target encodings are keyed by the sha256 of the image bytes, so a re-prediction after a
re-fit (same image, new references) skips the expensive image encoders. Reference encodings are
content-addressed blobs in Redis (shared by every worker); this process keeps decoded ones.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gfsam.encodings import Reference

logger = logging.getLogger(__name__)


RESCAN_PUTS = 64  # puts between two directory scans at most (other processes write here too)


class TargetCache:
    """Files ``{dir}/{sha256}.bin`` holding `TargetEncoding.to_bytes()`; LRU by mtime.

    Several worker processes on one machine may share the directory: writes are atomic renames
    and eviction tolerates files vanishing under it. A put does not scan the directory (a large
    project holds tens of thousands of files): the process adds what it writes to the total the
    last scan found and scans (and evicts) when that passes the budget, or after `RESCAN_PUTS`
    puts, so other processes' writes are counted within that many puts of this one.
    """

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self.dir.mkdir(parents=True, exist_ok=True)
        self.scans = 0  # directory scans so far (a put's cost)
        self._total: int | None = None  # bytes at the last scan + what this process wrote since
        self._puts = 0  # puts since the last scan
        self._lock = threading.Lock()
        # `put_later`: one writer thread, the entries written since the last `flush` (sha -> its
        # bytes; `get` answers from them)
        self._writer: ThreadPoolExecutor | None = None
        self._pending: dict[str, Future[bytes]] = {}

    def _path(self, sha: str) -> Path:
        return self.dir / f"{sha}.bin"

    def get(self, sha: str) -> bytes | None:
        with self._lock:
            pending = self._pending.get(sha)
        if pending is not None:  # written later by this process: its bytes, not the disk's
            try:
                return pending.result()
            except Exception:  # logged by the writer thread: a miss, as a cache may answer
                return None
        path = self._path(sha)
        try:
            data = path.read_bytes()
            os.utime(path)  # mark as recently used
        except FileNotFoundError:
            return None
        return data

    def contains(self, sha: str) -> bool:
        """True when `sha` is cached or about to be (no read, no LRU touch)."""
        with self._lock:
            if sha in self._pending:
                return True
        return self._path(sha).exists()

    def put_later(self, sha: str, produce: Callable[[], bytes]) -> None:
        """`put(sha, produce())` on this cache's writer thread; returns at once.

        The serialisation and the file write of a ~10 MB target overlap the job's next steps.
        Until the next `flush`, `get` and `contains` answer from the pending entry (this process
        only: other processes see the file once it lands). `produce` must only read what it
        serialises, and nothing may change it meanwhile. A failure is logged and the entry
        dropped (a cache miss later, never a wrong blob). `flush` waits for every write.
        """
        with self._lock:
            if self._writer is None:
                self._writer = ThreadPoolExecutor(1, thread_name_prefix="target-cache-writer")
            self._pending[sha] = self._writer.submit(self._write_later, sha, produce)

    def _write_later(self, sha: str, produce: Callable[[], bytes]) -> bytes:
        try:
            blob = produce()
            self._write(sha, blob)
        except Exception:
            logger.exception("target cache: %s not written", sha[:12])
            raise
        return blob

    def flush(self) -> None:
        """Wait until every `put_later` so far is on disk (or failed and logged)."""
        with self._lock:
            waited = dict(self._pending)
        wait(waited.values())
        with self._lock:  # written: read from disk again (an entry added meanwhile stays)
            for sha, future in waited.items():
                if self._pending.get(sha) is future:
                    del self._pending[sha]

    def put(self, sha: str, blob: bytes) -> None:
        with self._lock:
            pending = self._pending.get(sha)
        if pending is not None:  # an older deferred write of this key lands first
            wait([pending])
        self._write(sha, blob)

    def _write(self, sha: str, blob: bytes) -> None:
        if len(blob) > self.max_bytes:
            return
        fd, tmp = tempfile.mkstemp(dir=self.dir, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, self._path(sha))
        with self._lock:
            self._puts += 1
            if self._total is not None:
                self._total += len(blob)  # a replaced file counts twice: a scan comes sooner
            due = self._total is None or self._total > self.max_bytes or self._puts >= RESCAN_PUTS
        if due:
            self.evict()

    def evict(self) -> int:
        """Scan the directory and delete least recently used files until the total fits.
        Returns files deleted."""
        self.scans += 1
        entries = []
        for entry in os.scandir(self.dir):
            if entry.name.endswith(".bin"):
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                entries.append((st.st_mtime, st.st_size, entry.path))
        total = sum(size for _, size, _ in entries)
        deleted = 0
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            try:
                os.remove(path)
                deleted += 1
            except FileNotFoundError:
                pass
            total -= size
        with self._lock:
            self._total, self._puts = total, 0
        return deleted

    def size_bytes(self) -> int:
        return sum(e.stat().st_size for e in os.scandir(self.dir) if e.name.endswith(".bin"))


class ReferenceCache:
    """Decoded references by content hash (in-process LRU in front of the Redis blobs)."""

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self._items: OrderedDict[str, Reference] = OrderedDict()

    def get(
        self,
        sha: str,
        fetch: Callable[[str], bytes | None],
        decode: Callable[[bytes], Reference],
    ) -> Reference:
        """The decoded reference `sha`, from memory or else fetched and decoded.

        Raises:
            KeyError: the blob is not in the store (a reference set names only stored blobs).
        """
        if sha in self._items:
            self._items.move_to_end(sha)
            return self._items[sha]
        blob = fetch(sha)
        if blob is None:
            raise KeyError(f"reference blob {sha} is missing from the store")
        value = decode(blob)
        self._items[sha] = value
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)
        return value

    def put(self, sha: str, value: Reference) -> None:
        self._items[sha] = value
        self._items.move_to_end(sha)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)
