"""``GET /metrics`` of ``deploy serve``: Prometheus metrics (prometheus-client, the ``serve`` extra,
imported when a station is built) in a registry of their own, so several apps in one process stay apart.

Besides decisions, errors, latency and batches: the process's memory (prometheus-client's standard
``process_*`` series, and the peak resident set), the parts queued for inference, and the decision log's
health (records that could not be written, whether it takes records now).

Series labelled by model id are bounded: a reload keeps the series of the model it replaced (their last
counts stay scrapeable after the swap; requests still in flight on it count there) and removes those of
every model before it, so a station reloaded every hour does not grow one label set per reload.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Callable

from deploy.decision_log import DecisionRecord
from deploy.memory import peak_rss_mb

if TYPE_CHECKING:
    from deploy.serve.models import LoadedModel

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0)


class StationMetrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.decisions = Counter("inspect_decisions", "Decided parts by action, predicted class and model",
                                 ["action", "label", "model_id"], registry=r)
        self.errors = Counter("inspect_errors", "Requests answered with an error, by kind", ["kind"], registry=r)
        self.abstain_ratio = Gauge("inspect_abstain_ratio", "Share of decided parts sent to a person, since start",
                                   ["model_id"], registry=r)
        self.latency = Histogram("inspect_latency_seconds", "Time per inspected part by stage", ["stage"],
                                 buckets=LATENCY_BUCKETS_S, registry=r)
        self.batch_size = Histogram("inspect_batch_size", "Images per inference call (micro-batching)",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.model_info = Gauge("inspect_model_info", "The model serving now (1) and models served before (0)",
                                ["model_id", "line", "runtime"], registry=r)
        self.reloads = Counter("inspect_reloads", "Model reloads by result", ["result"], registry=r)
        self.log_failures = Counter("inspect_decision_log_failures", "Decisions that could not be recorded "
                                    "(answered 503, not given) and failed flushes of the decision log", registry=r)
        self._add_process_metrics()
        self._counts: dict[str, list[int]] = {}  # model id -> [decided, abstained]
        self._labels: dict[str, set[tuple[str, ...]]] = {}  # model id -> its label sets in self.decisions
        self._info: dict[str, tuple[str, str]] = {}  # model id -> (line, runtime) of its model_info series
        self._forgotten: set[str] = set()
        self._lock = threading.Lock()

    def _add_process_metrics(self) -> None:
        from prometheus_client import Gauge, ProcessCollector

        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, cpu, open fds (Linux)
        peak = Gauge("inspect_peak_resident_memory_bytes", "Highest resident memory of the process since start",
                     registry=self.registry)
        peak.set_function(lambda: (peak_rss_mb() or 0.0) * 1024 * 1024)

    def watch(self, queue_depth: Callable[[], float], log_available: Callable[[], float]) -> None:
        """Gauges read when /metrics is scraped: parts queued for inference, and 1 while the decision log
        takes records (0: every part is answered 503 and the station is not ready)."""
        from prometheus_client import Gauge

        Gauge("inspect_queue_depth", "Decoded parts waiting for inference", registry=self.registry) \
            .set_function(queue_depth)
        Gauge("inspect_decision_log_available", "1 while the decision log takes records", registry=self.registry) \
            .set_function(log_available)

    def serving(self, model: "LoadedModel", previous: "LoadedModel | None" = None) -> None:
        """``model`` serves now; ``previous`` keeps its series (set to 0 in model_info), older models lose theirs."""
        with self._lock:
            if previous is not None:
                for old in set(self._info) | set(self._labels):
                    if old not in (model.model_id, previous.model_id):
                        self._forget(old)
                self._set_info(previous, 0)
            self._forgotten.discard(model.model_id)  # a model served again counts again
            self._set_info(model, 1)

    def _set_info(self, model: "LoadedModel", value: int) -> None:
        labels = (str(model.predictor.manifest.extra.get("line")), model.predictor.runtime.name)
        self._info[model.model_id] = labels
        self.model_info.labels(model.model_id, *labels).set(value)

    def _forget(self, model_id: str) -> None:
        """Remove every series labelled with ``model_id``; its late decisions are no longer counted by model."""
        for labels in self._labels.pop(model_id, set()):
            self.decisions.remove(*labels)
        if model_id in self._counts:
            del self._counts[model_id]
            self.abstain_ratio.remove(model_id)
        if model_id in self._info:
            self.model_info.remove(model_id, *self._info.pop(model_id))
        self._forgotten.add(model_id)

    def decided(self, record: DecisionRecord) -> None:
        with self._lock:
            if record.model_id not in self._forgotten:
                labels = (record.action, record.label, record.model_id)
                self._labels.setdefault(record.model_id, set()).add(labels)
                self.decisions.labels(*labels).inc()
                counts = self._counts.setdefault(record.model_id, [0, 0])
                counts[0] += 1
                counts[1] += int(record.abstain)
                self.abstain_ratio.labels(record.model_id).set(counts[1] / counts[0])
        for stage, ms in record.latency_ms.items():
            self.latency.labels(stage).observe(ms / 1000.0)
