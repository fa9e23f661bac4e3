"""The one logging set-up of the API, the workers and the supervisor (`LOG_FORMAT`, `LOG_LEVEL`).

`LOG_FORMAT=text` (default): `2025-01-31 12:00:00,123 INFO worker.joblog [worker] job ...`.
`LOG_FORMAT=json`: one JSON object a line for log shippers, with `ts`, `level`, `logger`,
`role`, `msg`, the structured fields a call passed as `extra={"fields": {...}}` at the top level
(e.g. the per-job line's `project`, `task`, `version`, `duration_s`, `outcome`), and `exc` when
an exception is attached.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any

# uvicorn installs its own handlers on these; we route them through ours instead.
_UVICORN = ("uvicorn", "uvicorn.error", "uvicorn.access")


class JsonFormatter(logging.Formatter):
    """One JSON object a line."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "role": self.role,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update({k: v for k, v in fields.items() if k not in out})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def formatter(log_format: str, role: str) -> logging.Formatter:
    """The formatter for `LOG_FORMAT` ("text" or "json") of a process of `role`."""
    if log_format == "json":
        return JsonFormatter(role)
    return logging.Formatter(f"%(asctime)s %(levelname)s %(name)s [{role}] %(message)s")


def setup_logging(level: str, log_format: str, role: str) -> None:
    """Configure the root logger of this process (entry points only; never at import time).

    Args:
        level: a logging level name ("INFO").
        log_format: "text" or "json".
        role: the process's role in each line: "api", "worker", "run" (the supervisor).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format, role))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "gfsam", False)]:
        root.removeHandler(old)
    handler.gfsam = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    for name in _UVICORN:
        log = logging.getLogger(name)
        log.handlers.clear()
        log.propagate = True
