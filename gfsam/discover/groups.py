"""Incremental grouping of candidates across a project (`gfsam.discover`).

`CandidateGroups` is a pure state object: candidates are added as tasks are predicted, each joins
the group whose running mean is closest (cosine >= ``join_cos``) or opens a new group. Group ids
are never reused, so they are stable while the group lives; the same inputs in the same order give
the same state. Memory is bounded: at most ``max_groups`` groups (when full, the smallest group,
least recently grown on ties, is dropped), ``max_members`` member keys and ``representatives``
stored embeddings per group. The state round-trips through JSON (embeddings as base64 float32).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

STATE_VERSION = 1


@dataclass(frozen=True)
class GroupParams:
    """Knobs of `CandidateGroups`."""

    # Cosine of a candidate to a group's mean feature needed to join it: mask-pooled features of
    # one class sit well above it, look-alike classes below (oracle look-alikes: ~0.5).
    # origin: reasoned, not fitted from the oracle's look-alike cosine (~0.5), not fitted.
    join_cos: float = 0.75
    # origin: a memory bound.
    max_groups: int = 64
    # origin: a memory bound.
    max_members: int = 256
    # Embeddings kept per group: the members closest to its mean (promotion seeds from them).
    # origin: a memory bound.
    representatives: int = 8


def _b64(a: np.ndarray, dtype: type) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype=dtype).tobytes()).decode()


def _unb64(s: str, dtype: type) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype=dtype).copy()


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)


@dataclass
class Group:
    """One group of candidates.

    Attributes:
        id: stable id. count: candidates added (including those beyond ``max_members``).
        total: float64 [C] sum of the members' unit features (the running mean's numerator).
        members: keys of the first ``max_members`` members, in arrival order.
        reps: (key, float32 [C] unit feature) of the members closest to the mean, closest first.
        updated: sequence number of its last addition.
    """

    id: int
    count: int
    total: np.ndarray
    members: list[str] = field(default_factory=list)
    reps: list[tuple[str, np.ndarray]] = field(default_factory=list)
    updated: int = 0

    @property
    def mean(self) -> np.ndarray:
        """float32 [C] unit-length mean feature."""
        return _unit(self.total)


class CandidateGroups:
    """Project-wide candidate groups (see the module docstring). Not thread-safe."""

    def __init__(self, params: GroupParams | None = None) -> None:
        self.params = params or GroupParams()
        self.groups: dict[int, Group] = {}
        self.next_id = 0
        self.seq = 0
        self._index: dict[str, int] = {}
        # group id -> (its ``updated``, its JSON text): a group's text changes only when `_grow`
        # gives it a new ``updated``, so `to_json` encodes only the groups grown since (a task
        # grows a few of up to `max_groups`; encoding all took ~6 ms for 32 full groups).
        self._encoded: dict[int, tuple[int, str]] = {}

    def add(self, key: str, feature: np.ndarray) -> int:
        """Add one candidate and return its group id.

        Args:
            key: the member's name (e.g. ``"{task}:{region}"``); a key already held returns its
                group unchanged (re-predicting a task does not count it twice).
            feature: float [C] mask-pooled feature (normalised here).
        """
        if key in self._index:
            return self._index[key]
        x = _unit(np.asarray(feature, dtype=np.float64))
        gid = self._best(x)
        if gid is None:
            gid = self._open(len(x))
        self._grow(self.groups[gid], key, x)
        return gid

    def _best(self, x: np.ndarray) -> int | None:
        best, best_cos = None, self.params.join_cos
        for gid in sorted(self.groups):
            cos = float(self.groups[gid].mean @ x)
            if cos >= best_cos and (best is None or cos > best_cos):
                best, best_cos = gid, cos
        return best

    def _open(self, dim: int) -> int:
        if len(self.groups) >= self.params.max_groups:
            victim = min(self.groups.values(), key=lambda g: (g.count, g.updated, g.id))
            for key in victim.members:
                self._index.pop(key, None)
            del self.groups[victim.id]
        gid, self.next_id = self.next_id, self.next_id + 1
        self.groups[gid] = Group(gid, 0, np.zeros(dim, dtype=np.float64))
        return gid

    def _grow(self, g: Group, key: str, x: np.ndarray) -> None:
        self.seq += 1
        g.count, g.total, g.updated = g.count + 1, g.total + x, self.seq
        if len(g.members) < self.params.max_members:
            g.members.append(key)
            self._index[key] = g.id
        mean = g.mean
        reps = g.reps + [(key, x)]
        order = sorted(range(len(reps)), key=lambda i: (-float(reps[i][1] @ mean), i))
        g.reps = [reps[i] for i in order[: self.params.representatives]]

    def central(self, gid: int, n: int) -> list[str]:
        """Keys of the `n` members closest to the group's mean (promotion seeds)."""
        return [key for key, _ in self.groups[gid].reps[:n]]

    def label_similarity(self, prototypes: Mapping[str, np.ndarray]) -> dict[int, dict[str, float]]:
        """How much each group looks like each existing label.

        Args:
            prototypes: label -> float [K, C] unit shot prototypes (`gfsam.assign.shot_prototypes`).

        Returns:
            group id -> label -> max cosine of the group's mean to the label's prototypes.
        """
        return {
            gid: {lb: float((np.asarray(p) @ g.mean).max()) for lb, p in prototypes.items()}
            for gid, g in sorted(self.groups.items())
        }

    def to_json(self) -> str:
        """The whole state as JSON (deterministic: same state, same text).

        ``json.dumps(state, sort_keys=True)`` to the character: "groups" sorts first, so the
        text is the groups' own texts joined, then the other fields; each group's text is
        kept until the group grows (tests/test_discover_groups.py).
        """
        groups = [self._group_json(g) for g in sorted(self.groups.values(), key=lambda g: g.id)]
        self._encoded = {gid: self._encoded[gid] for gid in self.groups}  # dropped ones go
        body = {"version": STATE_VERSION, "next_id": self.next_id, "seq": self.seq}
        rest = json.dumps(body | {"params": vars(self.params)}, sort_keys=True)  # '{"next_id"...'
        return "".join(['{"groups": [', ", ".join(groups), "], ", rest[1:]])

    def _group_json(self, g: Group) -> str:
        held = self._encoded.get(g.id)
        if held is not None and held[0] == g.updated:
            return held[1]
        text = json.dumps(
            {
                "id": g.id,
                "count": g.count,
                "total": _b64(g.total, np.float64),
                "members": g.members,
                "reps": [[k, _b64(v, np.float32)] for k, v in g.reps],
                "updated": g.updated,
            },
            sort_keys=True,
        )
        self._encoded[g.id] = (g.updated, text)
        return text

    @classmethod
    def from_json(cls, text: str) -> CandidateGroups:
        """Inverse of `to_json`. Raises ValueError for anything else."""
        try:
            data = json.loads(text)
            if data.get("version") != STATE_VERSION:
                raise ValueError(f"not a version-{STATE_VERSION} candidate-groups state")
            state = cls(GroupParams(**data["params"]))
            state.next_id, state.seq = int(data["next_id"]), int(data["seq"])
            for d in data["groups"]:
                reps = [(str(k), _unb64(v, np.float32)) for k, v in d["reps"]]
                g = Group(d["id"], d["count"], _unb64(d["total"], np.float64), d["members"], reps)
                g.updated = int(d["updated"])
                state.groups[g.id] = g
                state._index.update({key: g.id for key in g.members})
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a candidate-groups state: {exc}") from exc
        return state
