"""backend.state.versions (the one owner of the version string) and the protocol's project ids."""

from __future__ import annotations

import pytest

from backend.api.protocol import project_id_of
from backend.state.schemas import ReferenceSet
from backend.state.versions import model_version, parse_version, project_versions, version_number


def test_project_ids_and_versions() -> None:
    assert project_id_of("12.1795248910") == 12 and project_id_of(7) == 7
    with pytest.raises(ValueError):
        project_id_of("abc.1")
    assert ReferenceSet(project=3).version == "gfsam-p3-v0"
    assert ReferenceSet(project=3, n=4).version == "gfsam-p3-v4"


def test_version_strings_round_trip_and_reject_others() -> None:
    assert model_version(3, 12) == "gfsam-p3-v12"
    assert parse_version("gfsam-p3-v12") == (3, 12) and version_number("gfsam-p3-v12") == 12
    for other in ("gfsam-p3-v", "gfsam-p3-v1x", "other-model", "gfsam-p3-v12 ", "xgfsam-p3-v1"):
        assert parse_version(other) is None
    with pytest.raises(ValueError, match="not a GF-SAM model version"):
        version_number("INITIAL")


def test_project_versions_keep_only_that_project() -> None:
    seen = ["gfsam-p1-v2", "gfsam-p12-v7", "gfsam-p1-v10", "INITIAL", "gfsam-p1-vx"]
    assert project_versions(1, seen) == [2, 10]
    assert project_versions(12, seen) == [7]
