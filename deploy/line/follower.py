"""The sink thread: follow the decision log through a durable cursor and hand its events to a sink.

    read a batch past the cursor -> events (a model change before the first decision of the new model)
    -> sink.deliver(events) (True only once the receiver acknowledged every one)
    -> commit the cursor (atomic) -> next batch

A batch that is not acknowledged (broker down, slow, refusing) is read again from the cursor and sent again after
a back-off (0.5 s doubling to 5 s): at least once, never lost, repeats dropped by ``event_id``. The thread only
reads files the station already wrote, so nothing a sink does can slow or stop an inspection; a sink's error is
one line on stderr (at most one every ``ERROR_EVERY_S``), never an exception anywhere else.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from deploy.line.cursor import Batch, LogCursor
from deploy.line.events import Source, decision_event, model_event, status_event

BACKOFF_S = (0.5, 5.0)  # a broker back after an outage gets the backlog within seconds
NICE = 10
POLL_S = 0.2  # how often the log is looked at when nothing is behind the cursor: batches, not a wake-up per part
ERROR_EVERY_S = 30.0
STATUS_EVERY_S = 1.0


class NotDelivered(Exception):
    """A batch the sink did not get acknowledged (sent again after a back-off)."""


class Sink(Protocol):
    name: str

    def start(self, status: dict[str, Any], offline: dict[str, Any]) -> None: ...

    def deliver(self, events: list[dict[str, Any]]) -> bool: ...

    def publish_status(self, status: dict[str, Any]) -> None: ...

    def stop(self, offline: dict[str, Any]) -> None: ...


@dataclass
class StationStatus:
    ready: bool
    model_id: str | None


def events_of(batch: Batch, previous_model_id: str | None, source: Source) -> list[dict[str, Any]]:
    events = []
    for record, where in batch.records:
        if record.model_id != previous_model_id:
            if previous_model_id is not None:
                events.append(model_event(record, previous_model_id, source, where))
            previous_model_id = record.model_id
        events.append(decision_event(record, source, where))
    return events


def lower_priority() -> None:
    """Nice this thread (Linux: a thread's nice value is its own, inherited by the threads it starts), best effort."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
    except (AttributeError, OSError):
        pass


class Follower:
    def __init__(self, cursor: LogCursor, sink: Sink, source: Source, status: Callable[[], StationStatus],
                 poll_s: float = POLL_S, batch_size: int = 100, err: Callable[[str], None] | None = None) -> None:
        self.cursor, self.sink, self.source, self.status = cursor, sink, source, status
        self.poll_s, self.batch_size = poll_s, batch_size
        self.err = err or (lambda line: print(line, file=sys.stderr, flush=True))
        self.delivered = 0  # events acknowledged since start
        self.failures = 0  # batches not acknowledged since start
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error_at = -ERROR_EVERY_S
        self._status: StationStatus | None = None
        self._status_at = 0.0

    def start(self) -> "Follower":
        self._thread = threading.Thread(target=self._run, name=f"line-{self.sink.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _status_event(self, status: StationStatus, state: str = "online") -> dict[str, Any]:
        return status_event(self.source, state, status.ready and state == "online", status.model_id)

    def _run(self) -> None:
        lower_priority()  # this thread and the client threads it starts (paho's loop) yield the CPU to inspections
        status = self._safe_status()
        try:
            self.sink.start(self._status_event(status), self._status_event(status, "offline"))
        except Exception as exc:  # a sink that cannot even start keeps retrying in deliver
            self._report(exc)
        backoff = BACKOFF_S[0]
        while not self._stop.is_set():
            self._refresh_status()
            try:
                batch = self.cursor.read(self.batch_size)
                if not batch.records:
                    if batch.end != self.cursor.position:
                        self.cursor.commit(batch.end)  # past unparseable lines or into the next day
                    self._stop.wait(self.poll_s)
                    continue
                if self.sink.deliver(events_of(batch, self.cursor.position.model_id, self.source)):
                    self.cursor.commit(batch.end)
                    self.delivered += len(batch.records)
                    backoff = BACKOFF_S[0]
                    continue
                self.failures += 1
                # said like an error (at most one line every ERROR_EVERY_S): a broker that is absent, refuses or
                # never acknowledges must not go unnoticed while the backlog grows
                self._report(NotDelivered(getattr(self.sink, "problem", None) or "the batch was not acknowledged"))
            except Exception as exc:
                self.failures += 1
                self._report(exc)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, BACKOFF_S[1])
        try:
            self.sink.stop(self._status_event(self._safe_status(), "offline"))
        except Exception as exc:
            self._report(exc)
        self.cursor.close()

    def _safe_status(self) -> StationStatus:
        try:
            return self.status()
        except Exception:
            return StationStatus(False, None)

    def _refresh_status(self) -> None:
        now = time.monotonic()
        if now - self._status_at < STATUS_EVERY_S:
            return
        self._status_at = now
        status = self._safe_status()
        if status != self._status:
            try:
                self.sink.publish_status(self._status_event(status))
                self._status = status
            except Exception as exc:
                self._report(exc)

    def _report(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_error_at >= ERROR_EVERY_S:
            self._last_error_at = now
            self.err(f"# line {self.sink.name}: {type(exc).__name__}: {exc} (retrying; the station keeps deciding)")
