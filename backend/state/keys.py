"""Every Redis key we use, as a template, in one table (docs/architecture.md §2 lists the same).

All keys start with `gfsam:`. Placeholders: `p` project id, `t` task id, `v` model version
string, `n` a version counter, `sha` a sha256 hex, `name` a worker name. The RQ keys (`rq:*`)
are RQ's own.
`tests/test_architecture.py` checks this table against the documentation, both ways.
"""

from __future__ import annotations

PREFIX = "gfsam:"

KEYS: dict[str, str] = {
    # project data (backend/state/data.py)
    "projects": "set of known project ids",
    "p:{p}:config": "label-config summary (BrushLabels/Image pair, labels)",
    "p:{p}:config:digest": "hash of the last label config seen",
    "p:{p}:synced": "set once a sync with Label Studio has completed",
    "p:{p}:refs": "the reference set: version counter n + shots per label",
    "ref:{sha}": "a reference encoding blob, content-addressed",
    "p:{p}:ann": "annotation id -> fingerprint it was last applied at",
    "p:{p}:labeled": "tasks with a human annotation",
    "pred:{p}:{t}:{v}": "a computed prediction",
    "p:{p}:last:{t}": "version of the last prediction delivered for a task",
    "thumb:{sha}": "PNG thumbnail of a shot (image, mask outlined); lives as long as ref:{sha}",
    "p:{p}:groups": "view of the candidate groups (JSON list of CandidateGroup)",
    "p:{p}:discover": "discovery's grouping state (gfsam CandidateGroups JSON), compare-and-set",
    "p:{p}:members": "candidate member -> its JSON (task, bbox, score, small mask)",
    "p:{p}:crops": "candidate member -> JPEG crop with the mask outlined (contact sheets)",
    "p:{p}:pending": "annotation@fingerprint states waiting for the debounced re-fit",
    "p:{p}:feed:{v}": "tasks still to pre-annotate at version v, in Label Studio's order",
    # self-measurement and tuning (backend/state/quality.py, issue 19)
    "p:{p}:quality": "version counter n -> that version's QualityReport (JSON), the last few",
    "p:{p}:tuning": "the Tuning predictions apply: per-label offsets, modes and the score map",
    "p:{p}:measured_sets": "version counter n -> the ReferenceSet measured at n, the last few",
    "p:{p}:measured": "the ReferenceSet last measured (written before 2026-12-06; read only)",
    # coordination (backend/state/coordination.py)
    "lock:refit:{p}": "serialises re-fits of a project",
    "lock:deliver:{p}:{t}:{v}": "serialises 'check Label Studio, then POST'",
    "worker:{name}": "a worker's lease",
    "waiters:{p}:{t}:{v}": "/predict calls waiting for a prediction",
    "delivered:{p}:{t}:{v}": "the delivery claim: inline or api",
    "posted:{p}:{t}:{v}": "Label Studio holds the prediction",
    "p:{p}:refit:window": "set while a debounced re-fit of the project is scheduled",
    # progress (backend/state/progress.py)
    "p:{p}:jobs:queued": "predict job ids queued",
    "p:{p}:jobs:running": "predict job ids running",
    "p:{p}:counts": "done / failed / stale counters",
    "p:{p}:failures": "what -> reason of the last permanent failure",
    "p:{p}:failures:recent": "the last permanent failures, newest first (JSON)",
    "p:{p}:versions": "version counters n with per-version progress (the last few kept)",
    "p:{p}:v:{n}:queued": "predict job ids of version n queued",
    "p:{p}:v:{n}:running": "predict job ids of version n running",
    "p:{p}:v:{n}:counts": "done / failed / stale and acceptance sum / count of version n",
    "p:{p}:v:{n}:rejects": "task -> JSON per-label found / rejected instances and pixels",
    "p:{p}:acc:seen": "(annotation, version) pairs already measured",
    "p:{p}:acc:hist": "acceptance IoU: cumulative buckets, sum, count",
    "p:{p}:acc:samples": "the last acceptance samples",
    "stats": "counters of all workers",
}


def key(template: str, **parts: object) -> str:
    """The full key for one of `KEYS`' templates: `key("p:{p}:refs", p=3)` -> "gfsam:p:3:refs".

    Raises:
        KeyError: `template` is not in `KEYS` (every key we use is declared there).
    """
    if template not in KEYS:
        raise KeyError(f"undeclared Redis key template {template!r}")
    return PREFIX + template.format(**parts)


def text(value: bytes | str | None) -> str | None:
    """A Redis reply as text (the client returns bytes, as RQ requires)."""
    return value.decode() if isinstance(value, bytes) else value
