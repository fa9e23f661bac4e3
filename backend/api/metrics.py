"""Prometheus metrics. Job progress, versions, acceptance IoU and cache counters live in Redis
(written by any worker), so they are read at scrape time by a custom collector; HTTP latency is
observed in this process.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from backend.state.store import ACCEPTANCE_BUCKETS, Store

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 30, 100)


class StoreCollector:
    """Reads the per-project state from the store on every scrape."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily(
            "gfsam_jobs", "Prediction jobs per project and state", labels=["project", "state"]
        )
        ended = CounterMetricFamily(
            "gfsam_predictions", "Prediction jobs ended, by outcome", labels=["project", "outcome"]
        )
        version = GaugeMetricFamily(
            "gfsam_model_version", "Current model version number n", labels=["project"]
        )
        shots = GaugeMetricFamily(
            "gfsam_shots", "Reference shots per label", labels=["project", "label"]
        )
        acceptance = HistogramMetricFamily(
            "gfsam_acceptance_iou",
            "IoU between a prediction and the annotation that replaced it",
            labels=["project"],
        )
        quality = GaugeMetricFamily(
            "gfsam_quality",
            "Held-out figures of the newest measured version per label (issue 19): n, iou, "
            "precision, recall, false_paint; tuned_iou at the offsets chosen on other tasks; "
            "previous_iou: the version measured before, on the same tasks",
            labels=["project", "label", "figure"],
        )
        offset = GaugeMetricFamily(
            "gfsam_threshold_offset",
            "Per-label threshold offset predictions apply (0: the default)",
            labels=["project", "label"],
        )
        for p in self.store.data.projects():
            self._quality(p, quality, offset)
            c = self.store.progress.counts(p)
            for state in ("queued", "running"):
                jobs.add_metric([str(p), state], getattr(c, state))
            for outcome in ("done", "failed", "stale"):
                ended.add_metric([str(p), outcome], getattr(c, outcome))
            refs = self.store.data.reference_set(p)
            version.add_metric([str(p)], refs.n)
            for label, lst in refs.shots.items():
                shots.add_metric([str(p), label], len(lst))
            hist = self.store.progress.acceptance_histogram(p)
            count = hist.get("count", 0.0)
            buckets = [(f"{le}", hist.get(f"{le}", 0.0)) for le in ACCEPTANCE_BUCKETS]
            acceptance.add_metric([str(p)], [*buckets, ("+Inf", count)], hist.get("sum", 0.0))
        stats = CounterMetricFamily(
            "gfsam_worker_events", "Worker counters (all workers)", labels=["event"]
        )
        for name, value in sorted(self.store.progress.stats().items()):
            stats.add_metric([name], value)
        yield from (jobs, ended, version, shots, acceptance, quality, offset, stats)

    def _quality(self, p: int, quality: GaugeMetricFamily, offset: GaugeMetricFamily) -> None:
        reports = self.store.quality.reports(p)
        if reports:
            last = reports[-1]
            before = last.previous.default if last.previous else {}
            for label, q in last.default.items():
                figures = {
                    "n": q.n,
                    "iou": q.iou,
                    "precision": q.precision,
                    "recall": q.recall,
                    "false_paint": q.false_paint,
                    "tuned_iou": last.tuned[label].iou if label in last.tuned else None,
                    "previous_iou": before[label].iou if label in before else None,
                }
                for name, value in figures.items():
                    if value is not None:
                        quality.add_metric([str(p), label, name], float(value))
        tuning = self.store.quality.tuning(p)
        for label, value in (tuning.offsets if tuning else {}).items():
            offset.add_metric([str(p), label], value)


class Metrics:
    """One registry per app (tests create many apps in one process)."""

    def __init__(self, store: Store) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(StoreCollector(store))
        self.http_latency = Histogram(
            "gfsam_http_request_seconds",
            "HTTP handler latency",
            ["path"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
