"""`eval draw`: the synthetic look-alike folder (issue 18) reads back as a label-map dataset
holding seen objects beside their look-alikes, and draws the same pixels for the same seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gfsam.eval.data import load_labels, read_label_folder
from gfsam.eval.synthetic import SyntheticSpec, draw_dataset, draw_labels


def test_draw_is_a_label_folder_with_seen_objects_beside_look_alikes(tmp_path: Path) -> None:
    spec = SyntheticSpec(images=30, pairs=3, pair_share=0.5, seed=3)
    names = draw_dataset(tmp_path, spec)
    ds = read_label_folder(tmp_path)
    assert sorted(i.key for i in ds.items) == names and ds.names[1] == "seen1"
    assert ds.names[2] == "lookalike1" and ds.names[6] == "lookalike3"
    held = [ds.classes_of(i) for i in ds.items]
    pairs = sum(any(c in k and c + 1 in k for c in (1, 3, 5)) for k in held)
    assert pairs >= 8  # about half the images: a seen object beside its look-alike
    absent = sum(1 not in k for k in held)
    assert absent >= 10  # and each label is absent from many images (the absence case)
    labels = load_labels(ds.items[0])
    assert labels.shape == (384, 512) and set(np.unique(labels)) <= set(range(7))
    assert np.array_equal(labels, draw_labels(spec, 0))


def test_same_seed_same_maps_other_seed_other_maps() -> None:
    a, b = SyntheticSpec(seed=1), SyntheticSpec(seed=2)
    assert np.array_equal(draw_labels(a, 4), draw_labels(a, 4))
    assert not np.array_equal(draw_labels(a, 4), draw_labels(b, 4))


def test_bad_spec_is_refused() -> None:
    with pytest.raises(ValueError):
        SyntheticSpec(pair_share=1.5)
