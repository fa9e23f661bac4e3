"""Discovery across a project: incremental groups, stable ids, bounds, JSON state."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gfsam.discover import CandidateGroups, GroupParams


def e(*v: float) -> np.ndarray:
    return np.asarray(v, dtype=np.float32)


def test_candidates_join_the_closest_group_or_open_one() -> None:
    g = CandidateGroups(GroupParams(join_cos=0.75))
    assert g.add("t1:0", e(1, 0, 0)) == 0
    assert g.add("t1:1", e(0, 1, 0)) == 1
    assert g.add("t2:0", e(0.9, 0.1, 0)) == 0  # cos 0.99 to group 0
    assert g.add("t2:1", e(0.6, 0.6, 0)) == 2  # cos 0.71 to both: below join_cos
    assert g.groups[0].count == 2 and g.groups[0].members == ["t1:0", "t2:0"]
    assert g.add("t1:0", e(0, 0, 1)) == 0  # a known key is not counted twice
    assert g.groups[0].count == 2


def test_ties_go_to_the_lower_id_and_the_order_is_deterministic() -> None:
    feats = [e(1, 0), e(0, 1), e(1, 1), e(1, 0.2), e(0.1, 1)]
    a, b = CandidateGroups(GroupParams(join_cos=0.7)), CandidateGroups(GroupParams(join_cos=0.7))
    ids_a = [a.add(f"k{i}", f) for i, f in enumerate(feats)]
    ids_b = [b.add(f"k{i}", f) for i, f in enumerate(feats)]
    assert ids_a == ids_b == [0, 1, 0, 0, 1]  # e(1, 1): cos 0.707 to both -> group 0
    assert a.to_json() == b.to_json()


def test_bounded_groups_members_and_representatives() -> None:
    g = CandidateGroups(GroupParams(join_cos=0.9, max_groups=2, max_members=2, representatives=1))
    g.add("a0", e(1, 0, 0))
    g.add("a1", e(1, 0, 0))
    g.add("b0", e(0, 1, 0))
    assert g.add("c0", e(0, 0, 1)) == 2  # full: the smallest group (b, id 1) is dropped
    assert sorted(g.groups) == [0, 2]
    assert g.add("b1", e(0, 1, 0)) == 3  # ids are never reused
    assert sorted(g.groups) == [0, 3]  # c (1 member, older) went this time
    g.add("a2", e(1, 0.01, 0))
    assert g.groups[0].count == 3 and g.groups[0].members == ["a0", "a1"]
    assert len(g.groups[0].reps) == 1 and g.central(0, 5) == ["a0"]


def test_json_round_trip_keeps_state_and_behaviour() -> None:
    g = CandidateGroups()
    rng = np.random.default_rng(0)
    for i in range(20):
        g.add(f"t{i}", rng.standard_normal(16))
    h = CandidateGroups.from_json(g.to_json())
    assert h.to_json() == g.to_json()
    x = rng.standard_normal(16)
    assert h.add("new", x) == g.add("new", x)
    assert h.add("t3", x) == g.add("t3", x)  # a known key: its group, unchanged
    with pytest.raises(ValueError):
        CandidateGroups.from_json('{"version": 99}')
    with pytest.raises(ValueError):
        CandidateGroups.from_json("not json")


def test_label_similarity_is_the_best_prototype_cosine() -> None:
    g = CandidateGroups()
    g.add("a", e(1, 0))
    g.add("b", e(0, 1))
    protos = {"Cat": np.stack([e(1, 0), e(0.6, 0.8)]), "Dog": np.stack([e(0, -1)])}
    sims = g.label_similarity(protos)
    assert sims[0] == pytest.approx({"Cat": 1.0, "Dog": 0.0})
    assert sims[1] == pytest.approx({"Cat": 0.8, "Dog": -1.0})


def test_json_reencodes_only_grown_groups_and_equals_a_full_encoding() -> None:
    """`to_json` keeps each group's encoding until the group grows: after any sequence of
    additions, evictions (a full state) and removals, and after a round trip through JSON, its
    text is what encoding every group afresh gives."""
    rng = np.random.default_rng(8)
    classes = rng.standard_normal((12, 32))
    state = CandidateGroups(GroupParams(max_groups=5, max_members=4, representatives=3))
    texts = []
    for step in range(60):
        state.add(f"t{step}", classes[rng.integers(0, 12)] + 0.3 * rng.standard_normal(32))
        if step == 30:
            state.groups.pop(min(state.groups))  # a promotion takes a group out
        if step % 7 == 0:
            state = CandidateGroups.from_json(state.to_json())  # as the worker reads it back
        text = state.to_json()
        assert text == json.dumps(json.loads(text), sort_keys=True)  # json.dumps' own text
        state._encoded.clear()  # nothing kept: every group encoded from its arrays now
        assert text == state.to_json()
        texts.append(text)
    assert CandidateGroups(GroupParams()).to_json() == json.dumps(
        json.loads(CandidateGroups(GroupParams()).to_json()), sort_keys=True
    )  # no group at all
    assert len(set(texts)) == len(texts)  # every addition changed the text
