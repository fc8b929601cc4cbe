"""``GET /metrics`` of ``deploy serve``: Prometheus metrics (prometheus-client, the ``serve`` extra,
imported when a station is built) in a registry of their own, so several apps in one process stay apart."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from deploy.decision_log import DecisionRecord

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
        self._counts: dict[str, list[int]] = {}  # model id -> [decided, abstained]
        self._lock = threading.Lock()

    def serving(self, model: "LoadedModel", previous: "LoadedModel | None" = None) -> None:
        if previous is not None:
            self.model_info.labels(previous.model_id, str(previous.predictor.manifest.extra.get("line")),
                                   previous.predictor.runtime.name).set(0)
        self.model_info.labels(model.model_id, str(model.predictor.manifest.extra.get("line")),
                               model.predictor.runtime.name).set(1)

    def decided(self, record: DecisionRecord) -> None:
        self.decisions.labels(record.action, record.label, record.model_id).inc()
        with self._lock:
            counts = self._counts.setdefault(record.model_id, [0, 0])
            counts[0] += 1
            counts[1] += int(record.abstain)
            ratio = counts[1] / counts[0]
        self.abstain_ratio.labels(record.model_id).set(ratio)
        for stage, ms in record.latency_ms.items():
            self.latency.labels(stage).observe(ms / 1000.0)
