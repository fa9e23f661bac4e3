"""``python -m gfsam``: segment (random tiny weights), missing-weights exit code, weights and
benchmark commands. Random-weight masks are meaningless; only files, sizes and codes are checked."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import gfsam.cli
from gfsam.cli import main
from gfsam.encoders import SPECS
from tests.conftest import ASSETS, GOLDEN_DIR, REPO_ROOT

COCO = ASSETS / "coco_elephant_example"
REF = [str(COCO / "000000286874.jpg"), str(COCO / "000000286874_mask.png")]
TARGET = COCO / "000000390341.jpg"  # 640x427
TINY = ["--sam", "sam_tiny", "--dino", "dinov2_tiny"]


def test_segment_random_tiny_writes_target_sized_png(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, overlay = tmp_path / "mask.png", tmp_path / "overlay.png"
    argv = [
        "segment",
        "--reference",
        *REF,
        "--reference",
        *REF,
        "--target",
        str(TARGET),
        "--out",
        str(out),
        "--overlay",
        str(overlay),
        "--random-weights",
        "--max-points",
        "4",
        *TINY,
    ]
    assert main(argv) == 0
    mask = Image.open(out)
    assert mask.mode == "L" and mask.size == Image.open(TARGET).size == (640, 427)
    assert set(np.unique(np.asarray(mask))) <= {0, 255}
    assert Image.open(overlay).size == (640, 427)
    captured = capsys.readouterr()
    assert "RANDOM WEIGHTS" in captured.err and "MEANINGLESS" in captured.err
    assert "wrote" in captured.out


def test_segment_with_the_sam2_dinov3_toy_preset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mask.png"
    argv = ["segment", "--reference", *REF, "--target", str(TARGET), "--out", str(out)]
    assert main([*argv, "--random-weights", "--preset", "tiny_sam2"]) == 0
    assert Image.open(out).size == (640, 427)
    assert "points=" in capsys.readouterr().out


def test_segment_without_weights_exits_2_with_instructions(tmp_path: Path) -> None:
    empty = tmp_path / "models"
    empty.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "gfsam",
        "segment",
        "--reference",
        *REF,
        "--target",
        str(TARGET),
        "--out",
        str(tmp_path / "m.png"),
        "--model-dir",
        str(empty),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert str(empty / "sam_vit_h_4b8939.pth") in proc.stderr
    assert "python -m gfsam weights download" in proc.stderr
    assert "--random-weights" in proc.stderr
    assert not (tmp_path / "m.png").exists()


def test_segment_bad_input_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    argv = [
        "segment",
        "--reference",
        REF[0],
        str(bad),
        "--target",
        str(TARGET),
        "--out",
        str(tmp_path / "m.png"),
        "--random-weights",
        *TINY,
    ]
    assert main(argv) == 1
    assert "cannot decode mask" in capsys.readouterr().err


def test_weights_verify_reports_missing_and_mismatch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["weights", "verify", "--model-dir", str(tmp_path)]) == 1  # default names
    out = capsys.readouterr().out
    assert "MISSING  sam_vit_h" in out and "MISSING  dinov2_vitl14" in out
    (tmp_path / "sam_vit_b_01ec64.pth").write_bytes(b"not the checkpoint")
    assert main(["weights", "verify", "--model-dir", str(tmp_path), "sam_vit_b"]) == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_weights_know_the_new_engines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """SAM 2.1 and DINOv3 files: listed with their URLs; no sha256 is published, so the installed
    file's is recorded (`weights record`) and verified against later (trust on first use)."""
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("sam2.1_hiera_large.pt", "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth"):
        assert name in out
    assert main(["weights", "verify", "--model-dir", str(tmp_path), "--preset", "fast"]) == 1
    out = capsys.readouterr().out
    assert "MISSING  sam2.1_hiera_tiny" in out and "MISSING  dinov3_vits16" in out
    (tmp_path / "sam2.1_hiera_tiny.pt").write_bytes(b"the file the user installed")
    args = ["--model-dir", str(tmp_path), "sam2.1_hiera_tiny"]
    assert main(["weights", "verify", *args]) == 0
    assert "UNKNOWN" in capsys.readouterr().out
    assert main(["weights", "record", *args]) == 0
    assert "recorded sam2.1_hiera_tiny" in capsys.readouterr().out
    assert main(["weights", "verify", *args]) == 0
    assert "recorded at install" in capsys.readouterr().out
    (tmp_path / "sam2.1_hiera_tiny.pt").write_bytes(b"replaced")
    assert main(["weights", "verify", *args]) == 1
    assert "MISMATCH" in capsys.readouterr().out
    (tmp_path / "dinov3_vits16_pretrain_lvd1689m-08c60483.pth").write_bytes(b"not it")
    assert main(["weights", "record", "--model-dir", str(tmp_path), "dinov3_vits16"]) == 1
    assert "file name says 08c60483" in capsys.readouterr().out


def test_weights_download_fails_clearly_offline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "http://127.0.0.1:9/sam_vit_b_01ec64.pth"  # refused: stands in for "no internet"
    specs = {**SPECS, "sam_vit_b": dataclasses.replace(SPECS["sam_vit_b"], url=url)}
    monkeypatch.setattr(gfsam.cli, "SPECS", specs)
    assert main(["weights", "download", "--model-dir", str(tmp_path), "sam_vit_b"]) == 1
    assert url in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_benchmark_two_golden_cases(capsys: pytest.CaptureFixture[str]) -> None:
    cases = ["p01_ball_fallback", "p04_elephant_small"]
    argv = [
        "benchmark",
        *TINY,
        "--repeat",
        "1",
        "--warmup",
        "0",
        "--max-points",
        "4",
        "--golden",
        str(GOLDEN_DIR),
        "--cases",
        ",".join(cases),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in out and "mask_decoding" in out and "sam_encoder" in out
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("case"))
    assert header.split()[:7] == ["case", "N", "L", "ours_s", "official_s", "ratio", "iou"]
    rows = {
        line.split()[0]: line.split() for line in lines if line.split()[:1] in ([c] for c in cases)
    }
    assert set(rows) == set(cases)
    for row in rows.values():
        assert float(row[5]) > 0 and float(row[6]) == pytest.approx(1.0)  # ratio, IoU vs official
