"""The line's event stream: one JSON schema for every event a sink publishes.

Every event carries ``schema``, ``version``, ``event`` (its kind), ``event_id`` (unique: a consumer drops a
repeat by it, since delivery is at least once), ``station``, ``line`` and ``time`` (ISO 8601, UTC):

    decision   one decided part: ``decision`` is the decision-log record (``deploy.decision_log.DecisionRecord``)
               as it is on disk; ``event_id`` is its ``decision_id``
    model      the serving model changed: ``model_id``, ``previous_model_id`` (seen in the decision log, in order
               with the decisions)
    status     the station: ``state`` online | offline, ``ready``, ``model_id`` (MQTT: retained; the last will
               says offline)
    drift      a ``deploy monitor`` verdict: ``verdict`` ok | watch | drift and its checks

Events are built from what the station already wrote, never from the request path.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from deploy.decision_log import DecisionRecord, utc_now

EVENT_SCHEMA = "inspection-kit/line-event"
EVENT_VERSION = 1
KINDS = ("decision", "model", "status", "drift")


@dataclass(frozen=True)
class Source:
    """Who speaks: the station and its line, stamped on every event."""

    station: str
    line: str | None


def _event(kind: str, event_id: str, source: Source, time: str | None = None, **body: Any) -> dict[str, Any]:
    return {"schema": EVENT_SCHEMA, "version": EVENT_VERSION, "event": kind, "event_id": event_id,
            "station": source.station, "line": source.line,
            "time": time or utc_now().isoformat(timespec="microseconds"), **body}


def record_id(record: DecisionRecord, where: str) -> str:
    """The record's ``decision_id``; a record without one (an older log) gets one from where it lies in the log
    (file and byte offset), the same on every read."""
    return record.decision_id or hashlib.sha256(where.encode("utf-8")).hexdigest()[:32]


def decision_event(record: DecisionRecord, source: Source, where: str) -> dict[str, Any]:
    return _event("decision", record_id(record, where), source, record.time, decision=asdict(record))


def model_event(record: DecisionRecord, previous_model_id: str | None, source: Source, where: str) -> dict[str, Any]:
    """The model changed between two decisions: stamped with the first new decision's time."""
    ident = hashlib.sha256(f"model:{record_id(record, where)}".encode()).hexdigest()[:32]
    return _event("model", ident, source, record.time, model_id=record.model_id, previous_model_id=previous_model_id)


def status_event(source: Source, state: str, ready: bool, model_id: str | None, **extra: Any) -> dict[str, Any]:
    now = utc_now().isoformat(timespec="microseconds")
    ident = hashlib.sha256(f"status:{source.station}:{now}".encode()).hexdigest()[:32]
    return _event("status", ident, source, now, state=state, ready=ready, model_id=model_id, **extra)


def drift_event(report: dict[str, Any], source: Source) -> dict[str, Any]:
    """A ``deploy monitor`` report as an event: its verdict, each check's, and the window it looked at."""
    verdict = report.get("status")
    body = json.dumps(_finite(report), sort_keys=True, default=str)
    ident = hashlib.sha256(f"drift:{body}".encode()).hexdigest()[:32]
    return _event("drift", ident, source, verdict=verdict, report=_finite(report))


def _finite(value: Any) -> Any:
    """JSON without NaN or infinity (a check with too few samples can hold one): null instead."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def encode(event: dict[str, Any]) -> bytes:
    """The wire form: compact UTF-8 JSON (no NaN: the log never holds one)."""
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
