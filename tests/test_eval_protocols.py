"""The eval CLI contract on a tiny slice of coco128_seg; replay runs the backend's shot policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import gfsam.eval.replay as replay
import gfsam.shots
from gfsam.cli import main

COCO = Path(__file__).resolve().parents[2] / "shared" / "assets" / "data" / "coco128_seg"
needs_data = pytest.mark.skipif(not COCO.is_dir(), reason="shared data subsets not present")


@needs_data
def test_project_contract_keys_and_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "p.json"
    argv = [
        "eval",
        "project",
        "--data",
        str(COCO),
        "--encoders",
        "oracle",
        "--oracle-noise",
        "0.1",
        "--oracle-confuse",
        "0.6",
        "--seen",
        "1,3",
        "--shots",
        "1",
        "--assign",
        "argmax,split",
        "--discover",
        "--seed",
        "0",
        "--limit",
        "2",
        "--json",
        str(out),
    ]
    assert main(argv) == 0
    res = json.loads(out.read_text())
    assert "NOT model quality" in res["note"]
    for key in ("seen_miou", "miou", "fbiou", "contamination"):
        assert isinstance(res[key], float)
    assert res["candidates_per_image"] is not None
    for key in ("candidate_recall", "candidate_precision", "candidates_per_image", "group_nmi"):
        assert res[key] is None or 0.0 <= res[key]
        assert res["discovery"][key] == res[key]
    assert res["discovery_baseline"] is None
    assert set(res["by_assign"]) == {"argmax", "split"}
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln]
    assert lines and all("NOT model quality" in ln for ln in lines)


def test_replay_uses_the_backend_shot_policy() -> None:
    assert replay.becomes_shot is gfsam.shots.becomes_shot
    assert replay.trim_shots is gfsam.shots.trim_shots


@needs_data
def test_replay_curve_and_plot(tmp_path: Path) -> None:
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    argv = [
        "eval",
        "replay",
        "--data",
        str(COCO),
        "--seen",
        "1",
        "--limit",
        "8",
        "--json",
        str(out),
        "--plot",
        str(png),
    ]
    assert main(argv) == 0
    res = json.loads(out.read_text())
    assert len(res["curve"]) == 7 and res["effort"] >= 0.0 and res["shots"]["1"] >= 1
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
