"""What every route of one station shares (``app.state.station``): the model host, the decision log,
the metrics and the settings; how an answer or an error is written; how a decision is recorded;
how a reload is done and counted.

Starlette is imported inside functions (the ``serve`` extra).
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from deploy.decision_log import DecisionLog, DecisionLogUnavailable, DecisionRecord
from deploy.serve.config import ServeConfig
from deploy.serve.intake import DECODE_SLOTS
from deploy.serve.metrics import StationMetrics
from deploy.serve.models import LoadedModel, ModelHost


# Retry-After (seconds) of a 503: an overloaded batcher drains in moments; a full or read-only disk takes a person
RETRY_AFTER_S = {"decision_log_unavailable": 5}


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
    # called with every recorded decision, on the recording thread (the line interfaces' counters and handshake);
    # each must return at once and never raise
    listeners: list[Callable[[DecisionRecord], None]] = field(default_factory=list)
    _stop_sync: threading.Event = field(default_factory=threading.Event, repr=False)

    @classmethod
    def serving(cls, model: LoadedModel, config: ServeConfig) -> "StationState":
        """The state of a station that serves ``model``: its host, metrics and decision log."""
        metrics = StationMetrics()
        host = ModelHost(model, config, on_batch=lambda n, ms: metrics.batch_size.observe(n))
        model.batcher.on_batch = host.on_batch
        metrics.serving(model)
        log = DecisionLog(config.log_dir, durable=False) if config.log_dir is not None else None
        metrics.watch(queue_depth=lambda: host.current.batcher.queued,
                      log_available=lambda: float(log is None or log.available))
        return cls(config, host, metrics, log)

    # -- answers ----------------------------------------------------------------------------------
    def error_response(self, kind: str, message: str, status: int, **extra: Any):
        """One JSON line ``{"error": KIND, "message": ...}``, counted by kind in /metrics; a 503 says when to
        try again (``Retry-After``)."""
        from starlette.responses import Response

        self.metrics.errors.labels(kind).inc()
        headers = {"Retry-After": str(RETRY_AFTER_S.get(kind, 1))} if status == 503 else None
        return Response(error_body(kind, message, **extra), status_code=status, media_type="application/json",
                        headers=headers)

    def internal_error(self, exc: BaseException):
        """The 500 of a bug, never of the user's input: the traceback to stderr (the service's journal), one JSON
        line to the client."""
        import traceback

        traceback.print_exception(exc)
        return self.error_response("internal", f"{type(exc).__name__}: the server failed; see its log", 500)

    def record(self, record: DecisionRecord) -> None:
        """A decided part: to the decision log, then the metrics. ``DecisionLogUnavailable`` (counted) when the
        log cannot take it: the caller answers 503, and the decision is not given."""
        if self.log is not None:
            try:
                self.log.append(record)
            except DecisionLogUnavailable:
                self.metrics.log_failures.inc()
                raise
        self.metrics.decided(record)
        for listener in self.listeners:
            try:
                listener(record)
            except Exception:  # a line interface's trouble never reaches the part's answer
                pass

    def not_ready_reason(self) -> str | None:
        """Why the station should get no parts now, None when it is ready."""
        if not self.ready:
            return "shutting down"
        if self.log is not None and not self.log.available:
            return f"decision_log_unavailable: {self.log.last_error}"
        return None

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
        """Each second: flush the log; while it takes no records, probe whether it can again (space freed), so
        readiness comes back without a part being refused first."""
        while not self._stop_sync.wait(self.config.fsync_interval_s):
            try:
                self.log.sync()
            except DecisionLogUnavailable:
                self.metrics.log_failures.inc()
            if not self.log.available:
                self.log.probe()

    def stop(self) -> None:
        self.ready = False
        self._stop_sync.set()
        self.host.close()
        if self.log is not None:
            try:
                self.log.sync()
            except DecisionLogUnavailable as exc:
                print(f"error: {exc}", file=sys.stderr, flush=True)
            self.log.close()
