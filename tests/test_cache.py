"""worker.cache: the on-disk target cache (LRU by use) and the in-process reference cache."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from worker.cache import ReferenceCache, TargetCache


def test_target_cache_evicts_least_recently_used(tmp_path: Path) -> None:
    cache = TargetCache(tmp_path / "t", max_bytes=250)
    for i, name in enumerate(("a", "b")):
        cache.put(name, bytes(100))
        os.utime(tmp_path / "t" / f"{name}.bin", (1000 + i, 1000 + i))
    assert cache.get("a") == bytes(100)  # a is now the most recently used
    cache.put("c", bytes(100))
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert cache.size_bytes() <= 250
    cache.put("huge", bytes(1000))  # larger than the whole cache: not stored
    assert cache.get("huge") is None


def test_reference_cache(tmp_path: Path) -> None:
    fetched: list[str] = []
    blobs = {"x": b"1", "y": b"2", "z": b"3"}

    def fetch(sha: str) -> bytes | None:
        fetched.append(sha)
        return blobs.get(sha)

    cache = ReferenceCache(max_items=2)
    assert cache.get("x", fetch, int) == 1 and cache.get("x", fetch, int) == 1
    cache.get("y", fetch, int)
    cache.get("z", fetch, int)  # evicts x
    cache.get("x", fetch, int)
    assert fetched == ["x", "y", "z", "x"]
    with pytest.raises(KeyError):
        cache.get("missing", fetch, int)


def test_target_cache_put_scans_only_when_due(tmp_path: Path) -> None:
    """A put adds its size to the last scan's total; the directory is scanned (and evicted) when
    that passes the budget or every `RESCAN_PUTS` puts, so files another process wrote meanwhile
    are counted and evicted too."""
    from worker.cache import RESCAN_PUTS

    cache = TargetCache(tmp_path / "t", max_bytes=10_000)
    cache.put("first", bytes(100))  # nothing known yet: one scan
    assert cache.scans == 1
    for i in range(RESCAN_PUTS - 1):
        cache.put(f"k{i}", bytes(10))  # well under budget: no scan
    assert cache.scans == 1
    other = TargetCache(tmp_path / "t", max_bytes=10_000)  # another process on the machine
    for i in range(3):
        other.put(f"o{i}", bytes(3500))
        os.utime(tmp_path / "t" / f"o{i}.bin", (1000 + i, 1000 + i))  # the oldest files
    cache.put("due", bytes(10))  # the RESCAN_PUTS-th put: scans, finds the other's 10500 bytes
    assert cache.scans == 2 and cache.size_bytes() <= 10_000
    assert cache.get("o0") is None and cache.get("due") is not None
    cache.put("big", bytes(9000))  # its own count passes the budget: scans at once
    assert cache.scans == 3 and cache.size_bytes() <= 10_000 and cache.get("big") is not None


def test_put_later_answers_from_memory_until_written(tmp_path: Path) -> None:
    """A deferred write (`put_later`) is readable at once in this process, on disk after
    `flush`; the writer serialises on its own thread."""
    cache = TargetCache(tmp_path / "t", max_bytes=10_000)
    release = threading.Event()
    threads: list[str] = []

    def produce() -> bytes:
        threads.append(threading.current_thread().name)
        release.wait(10)
        return b"blob-a"

    cache.put_later("a", produce)
    assert cache.contains("a") and not (tmp_path / "t" / "a.bin").exists()
    release.set()
    assert cache.get("a") == b"blob-a"  # waits for the pending entry, not the disk
    cache.flush()
    assert (tmp_path / "t" / "a.bin").read_bytes() == b"blob-a"
    assert threads and threads[0] != threading.current_thread().name
    cache.put_later("a", lambda: b"blob-1")  # one writer thread, in order: the last one wins
    cache.put_later("a", lambda: b"blob-2")
    cache.flush()
    assert cache.get("a") == b"blob-2" == (tmp_path / "t" / "a.bin").read_bytes()
    slow = threading.Event()
    cache.put_later("a", lambda: slow.wait(10) and b"blob-old")  # still pending...
    threading.Timer(0.2, slow.set).start()
    cache.put("a", b"blob-new")  # ... a direct put waits for it, so the newer bytes stay
    cache.flush()
    assert cache.get("a") == b"blob-new" == (tmp_path / "t" / "a.bin").read_bytes()


def test_put_later_failure_is_a_miss_never_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = TargetCache(tmp_path / "t", max_bytes=10_000)

    def broken() -> bytes:
        raise RuntimeError("serialisation failed")

    cache.put_later("b", broken)
    cache.flush()  # does not raise
    assert cache.get("b") is None and not cache.contains("b")
    assert "b not written" in caplog.text
