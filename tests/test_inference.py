"""worker.inference: how overlapping labels share pixels."""

from __future__ import annotations

import numpy as np

from worker.inference import resolve_overlaps


def test_overlaps_go_to_the_higher_score() -> None:
    a = np.zeros((4, 4), bool)
    a[:, :3] = True
    b = np.zeros((4, 4), bool)
    b[:, 1:] = True
    out = resolve_overlaps({"A": a, "B": b}, {"A": 0.4, "B": 0.9}, ["A", "B"])
    assert out["B"].sum() == 12 and out["A"].sum() == 4 and not (out["A"] & out["B"]).any()
    tie = resolve_overlaps({"A": a, "B": b}, {"A": 0.5, "B": 0.5}, ["A", "B"])
    assert tie["A"].sum() == 12  # tie: config order
    swallowed = resolve_overlaps({"A": a, "B": a.copy()}, {"A": 0.9, "B": 0.1}, ["A", "B"])
    assert list(swallowed) == ["A"]  # B kept nothing: no region
