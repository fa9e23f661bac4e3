"""A project's self-measurement in Redis (issue 19): per-version quality reports and the tuning
predictions apply. Text only: the measuring runs in the worker (`worker.quality`), the API and
the status page read the same keys."""

from __future__ import annotations

from redis import Redis
from redis.exceptions import WatchError

from backend.state.keys import key
from backend.state.schemas import QualityReport, ReferenceSet, Tuning
from backend.state.settings import Settings
from backend.state.versions import version_number

KEEP_REPORTS = 30  # versions whose report is kept (the progress keeps as many)


class Quality:
    """`p:{p}:quality` (n -> report), `p:{p}:tuning` and `p:{p}:measured_sets` (n -> the
    reference set measured at n; `p:{p}:measured`, one set, is read when written before
    2026-12-06)."""

    def __init__(self, conn: Redis, settings: Settings) -> None:
        self.r = conn
        self.settings = settings

    def put_report(
        self, report: QualityReport, tuning: Tuning | None, measured: ReferenceSet | None = None
    ) -> bool:
        """Store a version's report (the oldest beyond `KEEP_REPORTS` go) and, when given, the
        tuning predictions apply from now on and the reference set measured (the next
        version's report scores it again on its own tasks), in one transaction; the tuning only
        while no newer version's tuning is in force (checked in the same transaction: a slow
        measurement never overwrites a newer one). Returns False when that kept the tuning
        from being written."""
        k = key("p:{p}:quality", p=report.project)
        tuning_key = key("p:{p}:tuning", p=report.project)
        sets = key("p:{p}:measured_sets", p=report.project)
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(tuning_key)
                    raw = pipe.get(tuning_key)
                    current = Tuning.model_validate_json(raw) if raw else None
                    newer = (
                        current is not None
                        and bool(current.version)
                        and version_number(current.version) > report.n
                    )
                    pipe.multi()
                    pipe.hset(k, str(report.n), report.model_dump_json())
                    if tuning is not None and not newer:
                        pipe.set(tuning_key, tuning.model_dump_json())
                    if measured is not None:
                        pipe.hset(sets, str(measured.n), measured.model_dump_json())
                    pipe.execute()
                    break
                except WatchError:
                    continue  # another report landed meanwhile: decide again
        for h in (k, sets):
            ns = sorted(int(x) for x in self.r.hkeys(h))
            if len(ns) > KEEP_REPORTS:
                self.r.hdel(h, *[str(n) for n in ns[:-KEEP_REPORTS]])
        return not newer

    def reports(self, p: int) -> list[QualityReport]:
        """Every kept report, oldest version first."""
        raw = self.r.hgetall(key("p:{p}:quality", p=p))
        reports = [QualityReport.model_validate_json(v) for v in raw.values()]
        return sorted(reports, key=lambda r: r.n)

    def tuning(self, p: int) -> Tuning | None:
        raw = self.r.get(key("p:{p}:tuning", p=p))
        return Tuning.model_validate_json(raw) if raw else None

    def measured(self, p: int) -> ReferenceSet | None:
        """The reference set of the newest version measured (None before the first report)."""
        return self.measured_before(p, None)

    def measured_before(self, p: int, n: int | None) -> ReferenceSet | None:
        """The reference set of the newest version measured below version counter `n` (any,
        with None): what version n's report compares itself with, also when n itself is
        measured again."""
        raw = self.r.hgetall(key("p:{p}:measured_sets", p=p))
        kept = sorted((int(k), v) for k, v in raw.items() if n is None or int(k) < n)
        if kept:
            return ReferenceSet.model_validate_json(kept[-1][1])
        legacy = self.r.get(key("p:{p}:measured", p=p))  # one set, written before 2026-12-06
        old = ReferenceSet.model_validate_json(legacy) if legacy else None
        return old if old is not None and (n is None or old.n < n) else None
