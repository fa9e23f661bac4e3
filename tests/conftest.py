"""Shared pytest configuration: markers and paths to the shared material."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lsserver import LabelStudio, start_label_studio

# Service fixtures (real redis-server, settings, TestClient, fake LS) and the end-to-end
# `backend` fixture (started only on request) for every test module.
pytest_plugins = ["tests.service_fixtures", "tests.e2e_helpers"]

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GFSAM_SHARED_DIR", REPO_ROOT.parent / "shared"))
GOLDEN_DIR = Path(os.environ.get("GFSAM_GOLDEN_DIR", SHARED / "golden" / "gfsam-parity"))
ASSETS = SHARED / "assets" / "data"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than a few seconds (runs in CI)")
    config.addinivalue_line("markers", "e2e: drives a real Label Studio server (runs in CI)")
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    skip_gpu = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="module")
def ls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudio]:
    """A real Label Studio 1.23.2 per test module (tests/lsserver.py; started only on request)."""
    with start_label_studio(tmp_path_factory.mktemp("ls")) as server:
        print(f"\nlabel-studio cold start: {server.startup_s:.1f}s")
        yield server
