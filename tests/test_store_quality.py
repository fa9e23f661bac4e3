"""backend.state.quality on a real Redis: a slow measurement never replaces a newer tuning."""

from __future__ import annotations

import pytest

import backend.state.quality as quality_module
from backend.state.keys import key
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


def test_a_newer_tuning_landing_mid_write_is_kept(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Version 9's tuning is written after version 6's check read version 5's and before it
    wrote: the transaction fails, is decided again, and keeps version 9's."""
    store.quality.put_report(
        QualityReport(project=4, version="gfsam-p4-v5", n=5), Tuning(version="gfsam-p4-v5")
    )
    raced: list[bool] = []

    class Racing(Tuning):
        @classmethod
        def model_validate_json(cls, raw: object, **kw: object) -> Tuning:  # type: ignore[override]
            if not raced:  # another worker writes between the read and the write
                raced.append(True)
                newer = Tuning(version="gfsam-p4-v9").model_dump_json()
                store.quality.r.set(key("p:{p}:tuning", p=4), newer)
            return Tuning.model_validate_json(raw)  # type: ignore[arg-type]

    monkeypatch.setattr(quality_module, "Tuning", Racing)
    v6 = QualityReport(project=4, version="gfsam-p4-v6", n=6)
    assert not store.quality.put_report(v6, Tuning(version=v6.version))
    monkeypatch.undo()
    tuning = store.quality.tuning(4)
    assert raced and tuning is not None and tuning.version == "gfsam-p4-v9"
    assert [r.n for r in store.quality.reports(4)] == [5, 6]


def test_the_set_measured_below_a_version(store: Store) -> None:
    for n in (2, 5):
        store.quality.put_report(
            QualityReport(project=6, version=f"gfsam-p6-v{n}", n=n),
            None,
            ReferenceSet(project=6, n=n),
        )
    below = store.quality.measured_before(6, 5)  # version 5 measured again: compared with 2
    assert below is not None and below.n == 2
    newest = store.quality.measured(6)
    assert newest is not None and newest.n == 5
    assert store.quality.measured_before(6, 2) is None
    # written before 2026-12-06: one set under p:{p}:measured
    store.quality.r.set(key("p:{p}:measured", p=7), ReferenceSet(project=7, n=3).model_dump_json())
    legacy = store.quality.measured_before(7, 4)
    assert legacy is not None and legacy.n == 3 and store.quality.measured_before(7, 3) is None
