"""The project state in Redis, split by noun (docs/architecture.md §2 lists every key).

`Store` bundles the three parts on one connection: `data` (configs, references, annotations,
predictions), `coord` (locks, leases, waiters, delivery claims) and `progress` (job counts,
failures, acceptance, counters). `backend/state/keys.py` declares every key they use.
"""

from __future__ import annotations

from redis import Redis
from redis.exceptions import RedisError

from backend.state.candidates import Candidates
from backend.state.coordination import WORKER_PREFIX, Coordination, LockTimeout
from backend.state.data import ProjectData, VersionConflict
from backend.state.progress import ACCEPTANCE_BUCKETS, Progress
from backend.state.quality import Quality
from backend.state.settings import Settings

# Raised by any store call while Redis is unreachable (the app maps it to 503).
StoreUnavailable = RedisError

__all__ = [
    "ACCEPTANCE_BUCKETS",
    "WORKER_PREFIX",
    "LockTimeout",
    "Store",
    "StoreUnavailable",
    "VersionConflict",
]


class Store:
    """Typed access to the project state; holds no state of its own besides the connection.

    Args:
        conn: a Redis client (binary replies; `backend.state.jobs.connect`).
        settings: TTLs and lock timeouts.
        owner: who takes locks through this store (a worker name, or "api").
    """

    def __init__(self, conn: Redis, settings: Settings, owner: str = "api") -> None:
        self.r = conn
        self.settings = settings
        self.data = ProjectData(conn, settings)
        self.coord = Coordination(conn, settings, owner)
        self.progress = Progress(conn, settings)
        self.candidates = Candidates(conn, settings)  # discovery (issue 11)
        self.quality = Quality(conn, settings)  # self-measurement and tuning (issue 19)

    def ping(self) -> bool:
        return bool(self.r.ping())
