"""Prometheus metrics under Triton's names, plus histograms Triton users ask for.

Counters come straight from each version's `Stats` (the same numbers /stats reports), so
the two can never disagree. They are exposed under Triton's exact names (no `_total`
suffix), so dashboards written for Triton work unchanged. Histograms: formed batch size
(rows), and request, queue and compute latency in seconds.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import Metric

_COUNTERS = [  # (name, help, Stats field, scale)
    ("nv_inference_request_success", "Number of successful inference requests", "success_count", 1),
    ("nv_inference_request_failure", "Number of failed inference requests", "fail_count", 1),
    ("nv_inference_count", "Number of inferences performed (rows; a batch-8 request counts 8)", "inference_count", 1),
    ("nv_inference_exec_count", "Number of model executions (batches); count / exec_count = mean batch size",
     "execution_count", 1),
    ("nv_inference_request_duration_us", "Cumulative request duration in microseconds", "success_ns", 1e-3),
    ("nv_inference_queue_duration_us", "Cumulative time requests spent queued, in microseconds", "queue_ns", 1e-3),
    ("nv_inference_compute_infer_duration_us", "Cumulative model execution time, in microseconds",
     "compute_ns", 1e-3),
]
_LATENCY_BUCKETS = (.0005, .001, .002, .004, .008, .016, .032, .064, .128, .256, .512, 1.024, 2.048, 4.096)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _StatsCollector:
    def __init__(self, store):
        self.store = store

    def collect(self):
        versions = self.store.metric_versions()
        for name, doc, attr, scale in _COUNTERS:
            # prometheus_client forces a `_total` suffix on counter samples; Triton's names have
            # none, so these go out untyped (PromQL's rate() works on them all the same).
            m = Metric(name, doc + " (cumulative)", "unknown")
            for mv in versions:
                m.add_sample(name, {"model": mv.name, "version": str(mv.version)},
                             getattr(mv.scheduler.stats, attr) * scale)
            yield m
        g = Metric("nv_inference_pending_request_count", "Requests queued or executing", "gauge")
        for mv in versions:
            g.add_sample("nv_inference_pending_request_count", {"model": mv.name, "version": str(mv.version)},
                         mv.scheduler.stats.pending)
        yield g


class ServerMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        labels = ["model", "version"]
        self.request = Histogram("modelpress_request_duration_seconds", "Inference request latency, end to end in "
                                 "the server", labels, buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.queue = Histogram("modelpress_queue_duration_seconds", "Time a request waited for its batch",
                               labels, buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.compute = Histogram("modelpress_compute_duration_seconds", "Model execution time per batch",
                                 labels, buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.batch = Histogram("modelpress_batch_size", "Rows per executed batch (the formed batch size)",
                               labels, buckets=_BATCH_BUCKETS, registry=self.registry)
        self._by_kind = {"request": self.request, "queue": self.queue, "compute": self.compute, "batch": self.batch}

    def watch(self, store) -> None:
        self.registry.register(_StatsCollector(store))

    def observe(self, mv, kind: str, value: float) -> None:
        self._by_kind[kind].labels(mv.name, str(mv.version)).observe(value)
