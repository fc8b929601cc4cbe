"""What the PLC-facing servers show about the station besides the handshake: counters per action and the last
result, fed by every recorded decision (HTTP, watch folder or handshake alike), and the station's view.

``Tally.add`` runs on the thread that recorded the decision: it takes a lock for a few assignments and never
waits on a client, so an OPC UA or Modbus client can never slow an inspection.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

from deploy.decision_log import DecisionRecord
from deploy.line.config import LineConfig
from deploy.line.handshake import PartResult

ACTIONS = ("accept", "reject", "review")


def part_result(record: DecisionRecord, classes: list[str]) -> PartResult:
    index = classes.index(record.label) if record.label in classes else -1
    return PartResult(part_id=record.part_id or "", action=record.action, label=record.label, class_index=index,
                      confidence=float(record.confidence), decision_id=record.decision_id or "", time=record.time)


class Tally:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts = {action: 0 for action in ACTIONS}
        self.last: PartResult | None = None
        self.version = 0  # changes with every decision: a server rewrites its nodes only then

    def add(self, result: PartResult) -> None:
        with self._lock:
            if result.action in self.counts:
                self.counts[result.action] += 1
            self.last = result
            self.version += 1

    def snapshot(self) -> tuple[int, dict[str, int], PartResult | None]:
        with self._lock:
            return self.version, dict(self.counts), self.last


@dataclass
class StationView:
    """The station as the line interfaces see it (built by ``deploy.serve.line``; tests build their own)."""

    station_id: str
    line: Callable[[], str | None]
    model_id: Callable[[], str | None]
    ready: Callable[[], bool]
    decide: Callable[[str, float], PartResult]  # the handshake's decision of a triggered part
    config: LineConfig
    tally: Tally = field(default_factory=Tally)
