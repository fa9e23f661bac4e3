"""Oracle encoders: geometry, determinism, and GF-SAM's behaviour on them (coco128_seg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gfsam.eval.data import read_label_folder
from gfsam.eval.fss import run_fss
from gfsam.eval.models import OracleModel
from gfsam.eval.oracle import OracleDino, OracleParams, OracleSam, frame_labels, identity_vectors
from gfsam.eval.report import Output
from gfsam.image import mask_to_frame
from gfsam.types import FRAME, TOKENS

COCO = Path(__file__).resolve().parents[2] / "shared" / "assets" / "data" / "coco128_seg"
needs_data = pytest.mark.skipif(not COCO.is_dir(), reason="shared data subsets not present")


class _Null:
    def write(self, _: str) -> int:
        return 0

    def flush(self) -> None:
        pass


def _labels() -> np.ndarray:
    lab = np.zeros((60, 90), dtype=np.int32)
    lab[10:30, 10:40] = 3
    lab[40:55, 60:80] = 3
    return lab


def test_frame_geometry_matches_mask_to_frame() -> None:
    lab = _labels()
    assert np.array_equal(frame_labels(lab) == 3, mask_to_frame(lab == 3).numpy())


def test_mask_is_the_8_connected_component_under_the_prompt() -> None:
    framed = frame_labels(_labels())
    sam = OracleSam()
    emb = sam.embed(framed)
    ys, xs = np.nonzero(framed == 3)
    masks = sam.decode_points(emb, np.array([[xs[0], ys[0]], [xs[-1], ys[-1]]]))
    assert masks.shape == (2, FRAME, FRAME) and masks.dtype == torch.bool
    assert not (masks[0] & masks[1]).any()  # two separate objects of one class
    assert int(masks[0].sum() + masks[1].sum()) == int((framed == 3).sum())


def test_tokens_are_deterministic_and_noise_scales() -> None:
    framed = frame_labels(_labels())
    a = OracleDino(OracleParams(sigma=0.5, seed=1)).tokens(framed, "x")
    b = OracleDino(OracleParams(sigma=0.5, seed=1)).tokens(framed, "x")
    clean = OracleDino(OracleParams(sigma=0.0, seed=1)).tokens(framed, "x")
    assert a.shape == (TOKENS, 64) and np.array_equal(a, b)
    ratio = np.linalg.norm(a - clean, axis=1).mean()
    assert ratio == pytest.approx(0.5, rel=0.1)  # sigma = noise-to-signal norm ratio


def test_confusion_makes_even_classes_look_like_the_previous_odd() -> None:
    p = OracleParams(rho=0.6)
    e = identity_vectors(np.array([1, 2, 3, 4]), "x", p)
    assert e[0] @ e[1] > 0.4 and abs(e[2] @ e[1]) < 0.4  # 2 ~ 1, 3 !~ 2
    base = identity_vectors(np.array([1, 2]), "x", OracleParams())
    assert abs(base[0] @ base[1]) < 0.4


def _fss(sigma: float, rho: float, episodes: int = 24) -> float:
    ds = read_label_folder(COCO)
    model = OracleModel(OracleParams(sigma=sigma, rho=rho))
    out = Output(model.note, _Null())  # type: ignore[arg-type]
    return float(run_fss(ds, model, out, shots=1, episodes=episodes, seed=0)["miou"])


@needs_data
def test_zero_noise_one_shot_is_high_and_deterministic() -> None:
    first = _fss(0.0, 0.0)
    assert first > 60.0 and _fss(0.0, 0.0) == first


@needs_data
def test_noise_degrades_monotonically() -> None:
    scores = [_fss(s, 0.0) for s in (0.0, 3.0, 8.0)]
    assert scores[0] >= scores[1] >= scores[2] and scores[0] > scores[2]


@needs_data
def test_look_alikes_degrade_monotonically() -> None:
    """Even classes made to resemble the odd class before them pull false positives in."""
    scores = [_fss(0.0, rho) for rho in (0.0, 0.6, 0.95)]
    assert scores[0] >= scores[1] >= scores[2] and scores[0] > scores[2]
