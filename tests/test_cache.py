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
