"""backend.state.data on a real Redis: configs, reference sets and their atomic swap."""

from __future__ import annotations

import pytest

from backend.state.schemas import LabelConfigSummary, ReferenceSet, Shot
from backend.state.store import Store, VersionConflict


def shot(annotation: int, ref: str, seq: int) -> Shot:
    return Shot(
        annotation=annotation,
        task=annotation,
        label="A",
        ref=ref,
        fingerprint="f",
        seq=seq,
        mask="m",
    )


def test_config_registration(store: Store) -> None:
    summary = LabelConfigSummary(from_name="tag", to_name="image", data_key="image", labels=["A"])
    assert store.data.put_config(1, summary, "d1") is True
    assert store.data.put_config(1, summary, "d2") is False
    assert store.data.config(1) == summary and store.data.config_digest(1) == "d2"
    assert store.data.projects() == [1] and store.data.config(2) is None


def test_swap_is_compare_and_set_and_needs_blobs(store: Store) -> None:
    assert store.data.current_version(5) == "gfsam-p5-v0"
    store.data.put_blob("aa", b"blob")
    one = ReferenceSet(project=5, n=1, shots={"A": [shot(1, "aa", 1)]})
    store.data.swap_reference_set(one, expected_n=0)
    assert store.data.current_version(5) == "gfsam-p5-v1" and store.data.reference_set(5) == one
    with pytest.raises(VersionConflict):
        store.data.swap_reference_set(one.model_copy(update={"n": 2}), expected_n=0)
    with pytest.raises(RuntimeError, match="missing"):
        missing = ReferenceSet(project=5, n=2, shots={"A": [shot(2, "bb", 2)]})
        store.data.swap_reference_set(missing, expected_n=1)
    assert store.data.current_version(5) == "gfsam-p5-v1"
