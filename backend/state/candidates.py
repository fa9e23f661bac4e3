"""Discovery's state in Redis (issue 11): grouping state, members, crops, the groups' view.

The grouping itself (`gfsam.discover.CandidateGroups`, numpy) runs in the worker; this module
only moves text and bytes, so the API reads the same keys without numpy. Writers go through
`update`, a WATCH/compare-and-set on `p:{p}:discover`: two workers adding candidates of the same
project at once never lose each other's additions (the loser recomputes on the new state).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from redis import Redis
from redis.exceptions import WatchError

from backend.state.keys import key, text
from backend.state.schemas import CandidateGroup, CandidateMember
from backend.state.settings import Settings

CAS_ATTEMPTS = 20  # compare-and-set retries before giving up (contention is per project)
MASK_SIDE = 256  # side of a member's stored mask (the 1024 frame, 4 x 4 pixels a bit)


class DiscoveryContention(RuntimeError):
    """`update` lost the compare-and-set `CAS_ATTEMPTS` times in a row (transient)."""


@dataclass
class DiscoveryUpdate:
    """What one writer changes, computed from the state it read (see `Candidates.update`).

    Attributes:
        state: the new grouping state (JSON text).
        groups: the new view for the API and the status page (`p:{p}:groups`).
        members: new members' JSON (`CandidateMember`) by key.
        crops: new members' JPEG crops by key (PNG in states written before 2026-12).
        dropped: member keys no longer in any group (their data and crops are deleted).
    """

    state: str
    groups: list[CandidateGroup]
    members: dict[str, CandidateMember] = field(default_factory=dict)
    crops: dict[str, bytes] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)


class Candidates:
    """Discovery's keys of all projects. Holds nothing but the connection."""

    def __init__(self, conn: Redis, settings: Settings) -> None:
        self.r = conn
        self.settings = settings

    def state(self, p: int) -> str | None:
        """The grouping state (JSON text), None before the first candidate."""
        return text(self.r.get(key("p:{p}:discover", p=p)))

    def update(self, p: int, compute: Callable[[str | None], DiscoveryUpdate | None]) -> bool:
        """Read the state, `compute` the change, write it unless another writer came first.

        Args:
            p: project id.
            compute: state text (or None) -> the change, or None for nothing to write. It may
                run several times (once per attempt) and must not have side effects.

        Returns:
            True when a change was written.

        Raises:
            DiscoveryContention: lost the race `CAS_ATTEMPTS` times.
        """
        name = key("p:{p}:discover", p=p)
        for _ in range(CAS_ATTEMPTS):
            with self.r.pipeline() as pipe:
                try:
                    pipe.watch(name)
                    change = compute(text(pipe.get(name)))
                    if change is None:
                        pipe.unwatch()
                        return False
                    pipe.multi()
                    self._write(pipe, p, change)
                    pipe.execute()
                    return True
                except WatchError:
                    continue
        raise DiscoveryContention(f"project {p}: discovery state kept changing")

    def _write(self, pipe: object, p: int, change: DiscoveryUpdate) -> None:
        members, crops = key("p:{p}:members", p=p), key("p:{p}:crops", p=p)
        pipe.set(key("p:{p}:discover", p=p), change.state)  # type: ignore[attr-defined]
        view = json.dumps([g.model_dump(mode="json") for g in change.groups])
        pipe.set(key("p:{p}:groups", p=p), view)  # type: ignore[attr-defined]
        if change.dropped:
            pipe.hdel(members, *change.dropped)  # type: ignore[attr-defined]
            pipe.hdel(crops, *change.dropped)  # type: ignore[attr-defined]
        if change.members:
            mapping = {k: m.model_dump_json() for k, m in change.members.items()}
            pipe.hset(members, mapping=mapping)  # type: ignore[attr-defined]
        if change.crops:
            pipe.hset(crops, mapping=change.crops)  # type: ignore[attr-defined]

    def group(self, p: int, gid: int) -> CandidateGroup | None:
        """One group of the view (`p:{p}:groups`), None when it does not exist (any more)."""
        raw = self.r.get(key("p:{p}:groups", p=p))
        groups = [CandidateGroup.model_validate(g) for g in json.loads(raw)] if raw else []
        return next((g for g in groups if g.id == gid), None)

    def members(self, p: int, keys: list[str]) -> list[CandidateMember | None]:
        """Members by key, None for a key without data."""
        raws = self.r.hmget(key("p:{p}:members", p=p), keys) if keys else []
        return [CandidateMember.model_validate_json(r) if r else None for r in raws]

    def crops(self, p: int, keys: list[str]) -> list[bytes | None]:
        """Image crops by key (JPEG; PNG from older workers), None for a key without one."""
        raws = self.r.hmget(key("p:{p}:crops", p=p), keys) if keys else []
        return [r if isinstance(r, bytes) or r is None else str(r).encode() for r in raws]
