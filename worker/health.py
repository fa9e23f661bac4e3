"""`python -m worker.health`: exit 0 while a worker of this host holds its lease (container
health checks). Cheap: one SMEMBERS of RQ's worker set and one EXISTS per worker of this host.
"""

from __future__ import annotations

import socket
import sys

from backend.state.jobs import connect
from backend.state.keys import text
from backend.state.settings import get_settings
from backend.state.store import WORKER_PREFIX, Store


def main() -> int:
    settings = get_settings()
    if not settings.redis_url:
        return 1
    conn = connect(settings.redis_url)
    store = Store(conn, settings)
    mine = f"{WORKER_PREFIX}{socket.gethostname()}-"
    names = [str(text(m)).removeprefix("rq:worker:") for m in conn.smembers("rq:workers")]
    return 0 if any(store.coord.lease_alive(n) for n in names if n.startswith(mine)) else 1


if __name__ == "__main__":
    sys.exit(main())
