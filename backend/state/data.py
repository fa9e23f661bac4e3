"""Project data in Redis: label configs, references and versions, annotations, predictions."""

from __future__ import annotations

import json
from dataclasses import dataclass

from redis import Redis
from redis.exceptions import WatchError

from backend.state.keys import key, text
from backend.state.schemas import (
    CandidateGroup,
    LabelConfigSummary,
    ReferenceSet,
    StoredPrediction,
)
from backend.state.settings import Settings


@dataclass(frozen=True, order=True)
class PendingState:
    """An annotation state waiting for the project's debounced re-fit; stored in
    `p:{p}:pending` as the member ``{annotation}@{fingerprint}`` (this class alone writes and
    reads that form)."""

    annotation: int
    fingerprint: str

    @property
    def member(self) -> str:
        return f"{self.annotation}@{self.fingerprint}"

    @classmethod
    def parse(cls, member: str) -> PendingState:
        annotation, _, fingerprint = member.partition("@")
        return cls(int(annotation), fingerprint)


class VersionConflict(RuntimeError):
    """The reference set changed under a re-fit (lock expired?): the re-fit must be redone."""


class ProjectData:
    """What we know of each project. Holds nothing but the connection."""

    def __init__(self, conn: Redis, settings: Settings) -> None:
        self.r = conn
        self.settings = settings

    # --- label configs --------------------------------------------------------------------------

    def put_config(self, p: int, summary: LabelConfigSummary, digest: str) -> bool:
        """Store a project's config summary. Returns True when the project was unknown."""
        with self.r.pipeline() as pipe:
            pipe.sadd(key("projects"), p)
            pipe.set(key("p:{p}:config", p=p), summary.model_dump_json())
            pipe.set(key("p:{p}:config:digest", p=p), digest)
            added, *_ = pipe.execute()
        return bool(added)

    def config(self, p: int) -> LabelConfigSummary | None:
        raw = self.r.get(key("p:{p}:config", p=p))
        return LabelConfigSummary.model_validate_json(raw) if raw else None

    def config_digest(self, p: int) -> str | None:
        return text(self.r.get(key("p:{p}:config:digest", p=p)))

    def mark_synced(self, p: int) -> None:
        self.r.set(key("p:{p}:synced", p=p), 1)

    def synced(self, p: int) -> bool:
        return bool(self.r.exists(key("p:{p}:synced", p=p)))

    def projects(self) -> list[int]:
        return sorted(int(x) for x in self.r.smembers(key("projects")))

    # --- references and versions ----------------------------------------------------------------

    def reference_set(self, p: int) -> ReferenceSet:
        raw = self.r.get(key("p:{p}:refs", p=p))
        return ReferenceSet.model_validate_json(raw) if raw else ReferenceSet(project=p)

    def current_version(self, p: int) -> str:
        return self.reference_set(p).version

    def raise_version_floor(self, p: int, n: int) -> bool:
        """Make the project's version counter at least `n` (same shots). Used when LS already
        holds predictions of our versions that this Redis does not know (a wiped or replaced
        Redis): the next version is then new to LS too. Returns True when it moved."""
        refs_key = key("p:{p}:refs", p=p)
        with self.r.pipeline() as pipe:
            pipe.watch(refs_key)
            refs = self.reference_set(p)
            if refs.n >= n:
                pipe.unwatch()
                return False
            pipe.multi()
            pipe.set(refs_key, refs.model_copy(update={"n": n}).model_dump_json())
            try:
                pipe.execute()
            except WatchError:
                return False
        return True

    def swap_reference_set(self, new: ReferenceSet, expected_n: int) -> None:
        """Atomically replace a project's reference set if its version is still `expected_n`.

        Every blob named by `new` must already be stored: the version becomes visible to /setup
        only with references that workers can load.

        Raises:
            VersionConflict: the counter is no longer `expected_n`.
        """
        refs_key = key("p:{p}:refs", p=new.project)
        missing = [s.ref for shots in new.shots.values() for s in shots if not self.has_blob(s.ref)]
        if missing:
            raise RuntimeError(f"reference blobs missing before swap: {missing[:3]}")
        with self.r.pipeline() as pipe:
            try:
                pipe.watch(refs_key)
                raw = pipe.get(refs_key)
                n = ReferenceSet.model_validate_json(raw).n if raw else 0
                if n != expected_n:
                    raise VersionConflict(f"project {new.project}: v{n}, expected v{expected_n}")
                pipe.multi()
                pipe.set(refs_key, new.model_dump_json())
                pipe.execute()
            except WatchError:
                raise VersionConflict(f"project {new.project}: concurrent swap") from None

    def put_blob(self, sha: str, blob: bytes) -> None:
        self.r.set(key("ref:{sha}", sha=sha), blob)

    def get_blob(self, sha: str) -> bytes | None:
        blob = self.r.get(key("ref:{sha}", sha=sha))
        return blob if isinstance(blob, bytes) or blob is None else blob.encode()

    def has_blob(self, sha: str) -> bool:
        return bool(self.r.exists(key("ref:{sha}", sha=sha)))

    def expire_blobs(self, dropped: set[str], keep: set[str], seconds: int = 3600) -> None:
        """Let blobs no reference set names expire (an hour: a job of the old version may still
        be loading one); blobs of the current set never expire, even if dropped before."""
        with self.r.pipeline() as pipe:
            for sha in dropped:
                pipe.expire(key("ref:{sha}", sha=sha), seconds)
                pipe.expire(key("thumb:{sha}", sha=sha), seconds)
            for sha in keep:
                pipe.persist(key("ref:{sha}", sha=sha))
                pipe.persist(key("thumb:{sha}", sha=sha))
            pipe.execute()

    # --- operator's view (status page) ----------------------------------------------------------

    def put_thumbnail(self, sha: str, png: bytes) -> None:
        """A shot's thumbnail, under the sha of its reference blob (same lifetime)."""
        self.r.set(key("thumb:{sha}", sha=sha), png)

    def get_thumbnail(self, sha: str) -> bytes | None:
        blob = self.r.get(key("thumb:{sha}", sha=sha))
        return blob if isinstance(blob, bytes) or blob is None else blob.encode()

    def candidate_groups(self, p: int) -> list[CandidateGroup]:
        """Candidate groups found by discovery; [] until discovery writes `p:{p}:groups` (a JSON
        list of `CandidateGroup`). The status page shows the section only when this is not
        empty."""
        raw = self.r.get(key("p:{p}:groups", p=p))
        if not raw:
            return []
        return [CandidateGroup.model_validate(g) for g in json.loads(raw)]

    # --- annotations ----------------------------------------------------------------------------

    def annotation_fingerprint(self, p: int, annotation: int) -> str | None:
        return text(self.r.hget(key("p:{p}:ann", p=p), str(annotation)))

    def set_annotation_fingerprint(self, p: int, annotation: int, fingerprint: str) -> None:
        self.r.hset(key("p:{p}:ann", p=p), str(annotation), fingerprint)

    def recent_annotations(self, p: int) -> list[int]:
        """Applied annotation ids (deleted ones left out), the most recently updated first
        (their fingerprints are LS's `updated_at`, ISO 8601: they sort as text)."""
        return [a for a, _ in self.recent_annotation_states(p)]

    def recent_annotation_states(self, p: int) -> list[tuple[int, str]]:
        """(annotation id, fingerprint) of the applied annotations, most recently updated first."""
        raw = self.r.hgetall(key("p:{p}:ann", p=p))
        live = [(text(v) or "", int(k)) for k, v in raw.items() if text(v) != "deleted"]
        return [(a, fp) for fp, a in sorted(live, reverse=True)]

    def mark_labeled(self, p: int, task: int) -> None:
        self.r.sadd(key("p:{p}:labeled", p=p), task)

    def mark_unlabeled(self, p: int, task: int) -> None:
        self.r.srem(key("p:{p}:labeled", p=p), task)

    def is_labeled(self, p: int, task: int) -> bool:
        return bool(self.r.sismember(key("p:{p}:labeled", p=p), str(task)))

    # --- predictions ----------------------------------------------------------------------------

    def put_prediction(self, p: int, pred: StoredPrediction) -> None:
        name = key("pred:{p}:{t}:{v}", p=p, t=pred.task, v=pred.model_version)
        self.r.set(name, pred.model_dump_json(), ex=self.settings.prediction_ttl_s)

    def get_prediction(self, p: int, t: int, v: str) -> StoredPrediction | None:
        raw = self.r.get(key("pred:{p}:{t}:{v}", p=p, t=t, v=v))
        return StoredPrediction.model_validate_json(raw) if raw else None

    def get_predictions(self, p: int, tasks: list[int], v: str) -> list[StoredPrediction | None]:
        names = [key("pred:{p}:{t}:{v}", p=p, t=t, v=v) for t in tasks]
        raws = self.r.mget(names) if tasks else []
        return [StoredPrediction.model_validate_json(r) if r else None for r in raws]

    def last_delivered_version(self, p: int, t: int) -> str | None:
        """Version of the last prediction delivered for a task (set by a delivery claim)."""
        return text(self.r.get(key("p:{p}:last:{t}", p=p, t=t)))

    # --- debounced re-fits and the pre-annotation feed (issue 12) -------------------------------

    def add_pending(self, p: int, annotation: int, fingerprint: str) -> None:
        """An annotation state waits for the project's debounced re-fit."""
        self.r.sadd(key("p:{p}:pending", p=p), PendingState(annotation, fingerprint).member)

    def pending(self, p: int) -> list[PendingState]:
        """The states waiting, oldest annotation id first."""
        members = self.r.smembers(key("p:{p}:pending", p=p))
        return sorted(PendingState.parse(str(text(m))) for m in members)

    def drop_pending(self, p: int, states: list[PendingState]) -> None:
        """Remove exactly these states (a newer state of the same annotation stays)."""
        if states:
            self.r.srem(key("p:{p}:pending", p=p), *(s.member for s in states))

    def put_feed(self, p: int, v: str, entries: list[str]) -> None:
        """Replace the feed of version `v` with `entries` (JSON task entries, in order)."""
        name = key("p:{p}:feed:{v}", p=p, v=v)
        with self.r.pipeline() as pipe:
            pipe.delete(name)
            if entries:
                pipe.rpush(name, *entries)
                pipe.expire(name, self.settings.prediction_ttl_s)
            pipe.execute()

    def peek_feed(self, p: int, v: str, n: int) -> tuple[list[str], int]:
        """The next `n` entries of version `v`'s feed (left in place) and how many follow them."""
        name = key("p:{p}:feed:{v}", p=p, v=v)
        with self.r.pipeline() as pipe:
            pipe.lrange(name, 0, n - 1)
            pipe.llen(name)
            head, total = pipe.execute()
        return [str(text(x)) for x in head], max(int(total) - len(head), 0)

    def drop_feed_head(self, p: int, v: str, n: int) -> None:
        """Remove the first `n` entries of version `v`'s feed (once they are queued)."""
        self.r.ltrim(key("p:{p}:feed:{v}", p=p, v=v), n, -1)

    def drop_feed(self, p: int, v: str) -> None:
        self.r.delete(key("p:{p}:feed:{v}", p=p, v=v))
