"""The eval CLI contract on a tiny slice of coco128_seg; replay runs the backend's shot policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import gfsam.eval.replay as replay
import gfsam.shots
from gfsam.cli import main
from gfsam.eval.discovery import DISCOVERY_KEYS

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
        "--oracle-class-cos",
        "0.8",
        "--oracle-bg-share",
        "0.5",
        "--oracle-sam-error",
        "0.2",
        "--split",
        "report",
        "--assign",
        "argmax,label-gate,split,present",
        "--discover",
        "--discover-after",
        "label-gate",
        "--seed",
        "0",
        "--limit",
        "5",
        "--json",
        str(out),
    ]
    assert main(argv) == 0
    res = json.loads(out.read_text())
    assert "NOT model quality" in res["note"]
    assert res["split"] == "report" and res["discover_after"] == "label-gate"
    assert res["oracle"]["class_cos"] == 0.8 and res["oracle"]["sam_error"] == 0.2
    assert res["oracle"]["bg_share"] == 0.5 and res["oracle"]["rho"] == 0.6
    for key in ("seen_miou", "miou", "fbiou", "contamination", "seen_recall"):
        assert isinstance(res[key], float), key
    assert res["false_paint"] is None or 0.0 <= res["false_paint"] <= 1.0
    assert res["candidates_per_image"] is not None
    for key in DISCOVERY_KEYS:
        assert res[key] is None or 0.0 <= res[key]
        assert res["discovery"][key] == res[key]
    assert res["singleton_ari"] in (0.0, None)
    assert res["discovery_baseline"] is None
    assert list(res["by_assign"]) == ["none", "argmax", "label-gate", "split", "present"]
    assert res["by_assign"]["none"]["seen_miou"] == 0.0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln]
    assert lines and all("NOT model quality" in ln for ln in lines)
    assert "class-cos 0.8" in out and "oracle-only bound" in out


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


@needs_data
def test_replay_calibrate_contract(tmp_path: Path) -> None:
    out = tmp_path / "c.json"
    argv = ["eval", "replay", "--data", str(COCO), "--seen", "1", "--limit", "12"]
    argv += ["--oracle-noise", "0.1", "--oracle-confuse", "0.6", "--shots", "3"]
    argv += ["--calibrate", "--calibrate-every", "3", "--json", str(out)]
    assert main(argv) == 0
    res = json.loads(out.read_text())
    assert res["note"].startswith("oracle encoders")
    assert res["checkpoints"] == len(res["calibration"]) >= 1  # after 3, 6 images (5+ left)
    for key in ("default_miou", "calibrated_miou", "best_fixed_miou"):
        assert res[key] is None or 0.0 <= res[key] <= 100.0
    step = res["calibration"][0]
    assert step["annotated"] in (3, 6) and step["held_out"] == 12 - step["annotated"]
    assert 1 <= step["tuned_on"] <= step["annotated"]
    assert step["default_miou"] is not None  # person is in the held-out images
    # the hindsight ceiling (offset 0 among its candidates) is never below the defaults
    assert step["best_fixed_miou"] >= step["default_miou"]
    # the ceiling under the evidence rule lies between the two: classes below the bar keep
    # their default, the others their hindsight best
    assert step["default_miou"] <= step["best_fixed_evidenced_miou"] <= step["best_fixed_miou"]
    if all(ch["n"] < 3 for ch in step["choices"].values()):
        assert step["best_fixed_evidenced_miou"] == step["default_miou"]
    if step["tuned_on"] < 3:
        assert all(ch["how"] == "too-few" for ch in step["choices"].values())
    for cp in res["calibration"]:  # the posted score ties the images it has no trace on
        sp, ceiling = cp["score_iou_spearman"], cp["score_iou_spearman_ceiling"]
        assert sp is None or (ceiling is not None and sp <= ceiling + 1e-9)


@needs_data
def test_replay_left_out_never_predicts_an_image_with_its_own_shot() -> None:
    from gfsam.eval.data import load_labels, read_label_folder
    from gfsam.eval.models import OracleModel
    from gfsam.eval.oracle import OracleParams

    ds = read_label_folder(COCO)
    items = [i for i in ds.items if 1 in ds.classes_of(i)][:4]
    loop = replay.Replay(OracleModel(OracleParams(sigma=0.1)), [1], gfsam.shots.ShotPolicy())
    for item in items:
        loop.annotate(item, load_labels(item), None)  # no prediction shown: every mask a shot
    assert loop.owners[1] == [i.key for i in items]
    for item, own in zip(items, loop.shots[1], strict=True):
        refs, _, _ = loop.left_out(item)[1]
        assert len(refs) == 3 and all(r is not own for r in refs)


def test_replay_left_out_thresholds_are_each_classes_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two classes whose shots came from the same images get each their own leave-one-out
    default threshold (it was cached by the shot owners alone: the second class got the
    first's)."""
    from types import SimpleNamespace

    class Model:
        def encode_target(self, item: object) -> str:
            return "target"

        def predict(self, target: object, refs: list[str]) -> str:
            return "prediction"

    by_class = {"cat": 0.3, "dog": 0.6}
    monkeypatch.setattr(replay, "calibrate_threshold", lambda refs, cfg, p: by_class[refs[0][:3]])
    loop = replay.Replay(Model(), [1, 2], gfsam.shots.ShotPolicy())  # type: ignore[arg-type]
    loop.shots = {1: ["cat_A", "cat_B", "cat_X"], 2: ["dog_A", "dog_B", "dog_X"]}  # type: ignore[dict-item]
    loop.owners = {1: ["A", "B", "X"], 2: ["A", "B", "X"]}
    loop.version = {1: 1, 2: 1}
    out = loop.left_out(SimpleNamespace(key="X"))  # type: ignore[arg-type]
    assert out[1][:2] == (["cat_A", "cat_B"], 0.3)
    assert out[2][:2] == (["dog_A", "dog_B"], 0.6)


@needs_data
def test_find_all_contract_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "f.json"
    argv = ["eval", "find-all", "--data", str(COCO), "--oracle-noise", "0.1", "--split", "tune"]
    assert main([*argv, "--limit", "12", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["clicks"] > 0
    for method in ("none", "gfsam", "regions"):
        assert set(result[method]) == {
            "instance_recall",
            "precision",
            "wrong_per_click",
            "decodes_mean",
            "decodes_max",
        }
    assert result["none"]["instance_recall"] == 0.0 and result["none"]["precision"] is None
    assert result["regions"]["decodes_max"] <= 10  # the default decode budget
    assert "NOT model quality" in capsys.readouterr().out
