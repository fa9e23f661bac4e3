"""worker.cache: the on-disk target cache (LRU by use) and the in-process reference cache."""

from __future__ import annotations

import os
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
