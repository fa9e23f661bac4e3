"""The one owner of the model-version string `gfsam-p{project}-v{n}` (docs/architecture.md §2).

Each project has its own counter `n`; Label Studio sees the string (in /setup and on every
prediction), job ids and Redis keys use it or its number.
"""

from __future__ import annotations

import re

_VERSION = re.compile(r"gfsam-p(\d+)-v(\d+)")


def model_version(project: int, n: int) -> str:
    """The version string of project `project` at counter `n`: `model_version(3, 12)` ->
    "gfsam-p3-v12"."""
    return f"gfsam-p{int(project)}-v{int(n)}"


def parse_version(version: str) -> tuple[int, int] | None:
    """(project, n) of one of our version strings, or None for anything else (another
    backend's version, a truncated string)."""
    match = _VERSION.fullmatch(version)
    return (int(match[1]), int(match[2])) if match else None


def version_number(version: str) -> int:
    """`n` of one of our version strings.

    Raises:
        ValueError: not a version string of ours.
    """
    parsed = parse_version(version)
    if parsed is None:
        raise ValueError(f"not a GF-SAM model version: {version[:40]!r}")
    return parsed[1]


def project_versions(project: int, versions: list[str]) -> list[int]:
    """Counters `n` of the versions in `versions` that belong to `project` (others ignored)."""
    out = []
    for version in versions:
        parsed = parse_version(version)
        if parsed is not None and parsed[0] == project:
            out.append(parsed[1])
    return out
