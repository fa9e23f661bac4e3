"""docs/architecture.md is the one description of the internals: its import rule, Redis keys and
job ids are checked here against the code."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from backend.state.jobs import JOB_IDS
from backend.state.keys import KEYS

REPO = Path(__file__).resolve().parents[1]
DOC = (REPO / "docs" / "architecture.md").read_text()

# Where each room may reach, as written in docs/architecture.md §0 (ours only; third-party
# bans are listed separately). A module may always import inside its own room.
OURS = ("gfsam", "backend", "worker")
ALLOWED: dict[str, tuple[str, ...]] = {
    "gfsam": (),
    "backend": (),
    "backend.state": (),
    "backend.api": ("backend.state",),
    "backend.supervisor": ("backend.state",),
    "backend.app": ("backend.api",),
    "backend.run": ("backend.supervisor",),
    "backend.__main__": ("backend.supervisor",),
    "worker": ("backend.state", "gfsam"),
}
BANNED_THIRD_PARTY = {
    "backend.state": ("fastapi", "starlette", "torch", "numpy"),
    "backend.api": ("torch", "numpy"),
}


def _room(module: str) -> str:
    return max((r for r in ALLOWED if module == r or module.startswith(r + ".")), key=len)


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
    return out


def _modules() -> list[tuple[str, Path]]:
    found = []
    for package in OURS:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found.append((".".join(p for p in parts if p != "__init__"), path))
    return found


@pytest.mark.parametrize(("module", "path"), _modules(), ids=[m for m, _ in _modules()])
def test_imports_follow_the_written_rule(module: str, path: Path) -> None:
    room = _room(module)
    for name in _imports(path):
        if name.split(".")[0] in OURS:
            ok = name == room or name.startswith(room + ".")
            ok = ok or any(name == r or name.startswith(r + ".") for r in ALLOWED[room])
            assert ok, f"{module} imports {name}, outside what {room} may use"
        for banned in BANNED_THIRD_PARTY.get(room, ()):
            assert name.split(".")[0] != banned, f"{module} imports {name}"


def test_the_http_side_loads_no_model_code() -> None:
    """Transitively too: the API container needs no GPU stack."""
    code = (
        "import sys, backend.app, backend.run, backend.state.jobs\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'gfsam', 'worker'})\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr


def _table_cells(section: str, column: int) -> set[str]:
    """Backticked first-cell entries of the Markdown table in the doc section `section`."""
    body = DOC.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    cells = set()
    for line in body.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            cell = line.split("|")[column]
            cells |= set(re.findall(r"`([^`]+)`", cell))
    return cells


def test_every_redis_key_is_documented_and_every_documented_key_exists() -> None:
    assert _table_cells("2.", 1) == set(KEYS)


def test_every_job_is_documented_with_its_id() -> None:
    documented = _table_cells("3.", 1)
    assert documented == set(JOB_IDS)
    ids = _table_cells("3.", 2)
    for template in JOB_IDS.values():
        assert set(t.strip() for t in template.split("|")) <= ids
