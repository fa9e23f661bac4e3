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
    """`p:{p}:quality` (n -> report), `p:{p}:tuning` and `p:{p}:measured`."""

    def __init__(self, conn: Redis, settings: Settings) -> None:
        self.r = conn
        self.settings = settings

    def put_report(
        self, report: QualityReport, tuning: Tuning | None, measured: ReferenceSet | None = None
    ) -> bool:
        """Store a version's report (the oldest beyond `KEEP_REPORTS` go) and, when given, the
        tuning predictions apply from now on and the reference set measured (the next
        version's report scores it again on its own tasks), in one transaction; the tuning and
        the measured set only while no newer version's tuning is in force (checked in the
        same transaction: a slow measurement never overwrites a newer one). Returns True when
        they were written (or not given)."""
        k = key("p:{p}:quality", p=report.project)
        tuning_key = key("p:{p}:tuning", p=report.project)
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
                    if measured is not None and not newer:
                        pipe.set(
                            key("p:{p}:measured", p=report.project), measured.model_dump_json()
                        )
                    pipe.execute()
                    break
                except WatchError:
                    continue  # another report landed meanwhile: decide again
        ns = sorted(int(x) for x in self.r.hkeys(k))
        if len(ns) > KEEP_REPORTS:
            self.r.hdel(k, *[str(n) for n in ns[:-KEEP_REPORTS]])
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
        """The reference set of the last version measured (None before the first report)."""
        raw = self.r.get(key("p:{p}:measured", p=p))
        return ReferenceSet.model_validate_json(raw) if raw else None
