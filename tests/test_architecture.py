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
    "worker": ("backend.state", "gfsam"),
}
BANNED_THIRD_PARTY = {
    "backend.state": ("fastapi", "starlette", "torch", "numpy"),
    "backend.api": ("torch", "numpy"),
}


# worker/ (docs/architecture.md §0): process-level foundations, then the rooms, then the entry
# modules. A module may import its own rank and those below it, never above (downward only).
WORKER_RANKS: dict[str, int] = {
    "worker.labelstudio": 0,
    "worker.cache": 0,
    "worker.thumbs": 0,
    "worker.contract": 0,
    "worker.runtime": 1,
    "worker.prediction": 2,
    "worker.correction": 3,
    "worker.discovery": 4,
    "worker.quality": 4,
    "worker.clicks": 5,
    "worker.tasks": 6,
    "worker.recovery": 6,
    "worker.joblog": 6,
    "worker.health": 6,
    "worker.main": 7,
}
WORKER_TOP_LEVEL_MAX = 10


def _worker_rank(module: str) -> int | None:
    found = [r for r in WORKER_RANKS if module == r or module.startswith(r + ".")]
    return WORKER_RANKS[max(found, key=len)] if found else None


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


# --------------------------------------------------------------------------- worker rooms


def _product_imports(path: Path, *, type_checking: bool = False) -> list[str]:
    """Our modules `path` imports, at module level or inside functions (lazy imports too);
    `if TYPE_CHECKING:` blocks only with `type_checking`. `from pkg import mod` names the
    submodule when `mod` is one."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    if not type_checking:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    known = {m for m, _ in _modules()}
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.split(".")[0] in OURS]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] not in OURS:
                continue
            subs = [f"{node.module}.{a.name}" for a in node.names]
            named = [m for m in subs if m in known]
            out += named if named else [node.module]
    return out


@pytest.mark.parametrize(
    ("module", "path"),
    [(m, p) for m, p in _modules() if m.startswith("worker.")],
    ids=[m for m, _ in _modules() if m.startswith("worker.")],
)
def test_worker_rooms_import_downward_only(module: str, path: Path) -> None:
    rank = _worker_rank(module)
    assert rank is not None, f"{module} is in no room of docs/architecture.md §0"
    for name in _product_imports(path):
        if not name.startswith("worker."):
            continue
        other = _worker_rank(name)
        assert other is not None, f"{module} imports {name}, which is in no room"
        same_room = other == rank and name.split(".")[:2] == module.split(".")[:2]
        assert other < rank or same_room or (other == rank and name in WORKER_RANKS), (
            f"{module} (rank {rank}) imports {name} (rank {other}): rooms import downward only"
        )


def test_worker_top_level_is_small() -> None:
    top = sorted(p.stem for p in (REPO / "worker").glob("*.py") if p.stem != "__init__")
    assert len(top) <= WORKER_TOP_LEVEL_MAX, top
    assert {f"worker.{name}" for name in top} <= set(WORKER_RANKS), top


def test_no_import_cycle_in_the_product_code() -> None:
    """Lazy imports count (a cycle through a function body is still a cycle for a reader);
    imports for the type checker alone do not."""
    graph = {m: set(_product_imports(p)) - {m} for m, p in _modules()}
    for m in graph:  # a package's modules may name the package itself: not an edge
        graph[m] = {n for n in graph[m] if not m.startswith(n + ".")}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def _calls(path: Path, names: set[str]) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    return [
        (node.lineno, node.func.id)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in names
    ]


def test_the_worker_never_probes_the_model() -> None:
    """What the worker needs from the model is `worker.contract`; nothing asks an object at run
    time what it can do. At most 5 getattr/hasattr in worker/, none on the model, each with a
    comment saying why; no `inspect`."""
    probes = []
    for path in sorted((REPO / "worker").rglob("*.py")):
        lines = path.read_text().splitlines()
        assert not any(n in _imports(path) for n in ("inspect",)), f"{path} imports inspect"
        for lineno, _ in _calls(path, {"getattr", "hasattr"}):
            line, above = lines[lineno - 1], lines[lineno - 2] if lineno > 1 else ""
            where = f"{path.relative_to(REPO)}:{lineno}"
            assert "model" not in line and "pipeline" not in line, f"{where} probes the model"
            assert "#" in line or above.strip().startswith("#"), f"{where}: say why (comment)"
            probes.append(where)
    assert len(probes) <= 5, probes
