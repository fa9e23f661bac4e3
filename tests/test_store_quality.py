"""backend.state.quality on a real Redis: a slow measurement never replaces a newer tuning."""

from __future__ import annotations

from backend.state.schemas import QualityReport, ReferenceSet, Tuning
from backend.state.store import Store


def test_an_older_report_never_replaces_a_newer_tuning(store: Store) -> None:
    v5 = QualityReport(project=3, version="gfsam-p3-v5", n=5, tasks=[1])
    v4 = QualityReport(project=3, version="gfsam-p3-v4", n=4, tasks=[2])
    assert store.quality.put_report(
        v5, Tuning(version=v5.version, offsets={"A": 0.1}), ReferenceSet(project=3, n=5)
    )
    # version 4's measurement ends after version 5's: its report is kept, nothing else
    assert not store.quality.put_report(
        v4, Tuning(version=v4.version, offsets={"A": -0.2}), ReferenceSet(project=3, n=4)
    )
    tuning, measured = store.quality.tuning(3), store.quality.measured(3)
    assert tuning is not None and tuning.version == v5.version and tuning.offsets == {"A": 0.1}
    assert measured is not None and measured.n == 5
    assert [r.n for r in store.quality.reports(3)] == [4, 5]
    # a newer one replaces it
    v6 = QualityReport(project=3, version="gfsam-p3-v6", n=6, tasks=[3])
    assert store.quality.put_report(v6, Tuning(version=v6.version), ReferenceSet(project=3, n=6))
    tuning = store.quality.tuning(3)
    assert tuning is not None and tuning.version == v6.version
