"""What every route of one station shares (``app.state.station``): the model host, the decision log,
the metrics and the settings; how an answer or an error is written; how a decision is recorded;
how a reload is done and counted.

Starlette is imported inside functions (the ``serve`` extra).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from deploy.decision_log import DecisionLog, DecisionRecord
from deploy.serve.config import ServeConfig
from deploy.serve.intake import DECODE_SLOTS
from deploy.serve.metrics import StationMetrics
from deploy.serve.models import LoadedModel, ModelHost


def error_body(kind: str, message: str, **extra: Any) -> bytes:
    return (json.dumps({"error": kind, "message": message, **extra}, ensure_ascii=False) + "\n").encode("utf-8")


def json_response(payload: Any, status: int = 200):
    from starlette.responses import Response

    return Response(json.dumps(payload, ensure_ascii=False) + "\n", status_code=status, media_type="application/json")


def station_of(request: Any) -> "StationState":
    """The ``StationState`` of the app a request came to."""
    return request.app.state.station


@dataclass
class StationState:
    config: ServeConfig
    host: ModelHost
    metrics: StationMetrics
    log: DecisionLog | None
    started_at: float = field(default_factory=time.time)
    ready: bool = True
    decode_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(DECODE_SLOTS))
    _stop_sync: threading.Event = field(default_factory=threading.Event, repr=False)

    @classmethod
    def serving(cls, model: LoadedModel, config: ServeConfig) -> "StationState":
        """The state of a station that serves ``model``: its host, metrics and decision log."""
        metrics = StationMetrics()
        host = ModelHost(model, config, on_batch=lambda n, ms: metrics.batch_size.observe(n))
        model.batcher.on_batch = host.on_batch
        metrics.serving(model)
        log = DecisionLog(config.log_dir, durable=False) if config.log_dir is not None else None
        return cls(config, host, metrics, log)

    # -- answers ----------------------------------------------------------------------------------
    def error_response(self, kind: str, message: str, status: int, **extra: Any):
        """One JSON line ``{"error": KIND, "message": ...}``, counted by kind in /metrics."""
        from starlette.responses import Response

        self.metrics.errors.labels(kind).inc()
        return Response(error_body(kind, message, **extra), status_code=status, media_type="application/json")

    def record(self, record: DecisionRecord) -> None:
        """A decided part: to the decision log and the metrics."""
        if self.log is not None:
            self.log.append(record)
        self.metrics.decided(record)

    # -- reloads ----------------------------------------------------------------------------------
    def reload(self, bundle: str | None, force: bool = False) -> tuple[LoadedModel, LoadedModel]:
        """(new, old); ``ReloadError`` (the old model keeps serving) is counted by the caller."""
        new, old = self.host.reload(bundle, force)
        self.metrics.serving(new, old)
        self.metrics.reloads.labels("ok").inc()
        return new, old

    # -- lifetime ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Group commit of the decision log: one fsync a second instead of one per request."""
        if self.log is not None:
            threading.Thread(target=self._sync_log, name="decision-log-sync", daemon=True).start()

    def _sync_log(self) -> None:
        while not self._stop_sync.wait(self.config.fsync_interval_s):
            self.log.sync()

    def stop(self) -> None:
        self.ready = False
        self._stop_sync.set()
        self.host.close()
        if self.log is not None:
            self.log.sync()
            self.log.close()
