"""The PLC handshake, one state machine for OPC UA and Modbus.

    state         Ready  Busy  ResultReady  what moves it on
    0 IDLE          1     0        0        the PLC raises Trigger (with PartId set): the part id is checked,
                                            the result fields cleared, the part's decision started -> BUSY
    1 BUSY          0     1        0        the decision is made (the part's image came as a file or over HTTP)
                                            or failed (Error, ErrorCode) -> RESULT_READY; no image within
                                            ``image_s``: ErrorCode 2 -> RESULT_READY
    2 RESULT_READY  0     0        1        the PLC has read the result and raises Acknowledge (a rising edge:
                                            one held high from before the result acknowledges nothing) -> RELEASE;
                                            no Acknowledge within ``acknowledge_s``: ErrorCode 5 -> RELEASE
    3 RELEASE       0     0        0        the PLC drops Trigger and Acknowledge -> IDLE

A new part needs a rising edge of Trigger, so a PLC that holds Trigger high never decides one part twice. The
result (Action, ClassIndex, Confidence, DecisionId, the part id it is for) stays readable until the next trigger;
``Sequence`` counts results, so a PLC can tell a new one from the last. Ready is low whenever the station cannot
take a part (no model, decision log unavailable) as well as outside IDLE.

The machine is stepped by its server's poll loop (``step``), never blocks: the decision runs in a worker thread
through the station's own path (``decide``), which records it in the decision log like any other decision.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Callable

from deploy.intake import IntakeError, check_part_id
from deploy.line.config import HandshakeTimeouts

IDLE, BUSY, RESULT_READY, RELEASE = 0, 1, 2, 3
STATE_NAMES = {IDLE: "idle", BUSY: "busy", RESULT_READY: "result_ready", RELEASE: "release"}
ACTION_CODES = {"accept": 1, "reject": 2, "review": 3}  # 0: no result; 4: error (see ErrorCode)
ACTION_ERROR = 4
ERROR_CODES = {"bad_part_id": 1, "no_image": 2, "bad_image": 3, "not_ready": 4, "ack_timeout": 5, "internal": 6}
DECIDE_GRACE_S = 5.0  # a decision that outlives image_s by this much is abandoned (ErrorCode internal)


class HandshakeError(Exception):
    """A triggered part that got no decision; ``kind`` is a key of ``ERROR_CODES``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class PartResult:
    part_id: str
    action: str
    label: str
    class_index: int  # the label's index in the bundle's classes; -1 when it is none of them
    confidence: float
    decision_id: str
    time: str


@dataclass(frozen=True)
class Outputs:
    """What the station shows the PLC."""

    state: int = IDLE
    ready: bool = False
    busy: bool = False
    result_ready: bool = False
    sequence: int = 0
    part_id: str = ""  # the part the result is for
    action_code: int = 0
    class_index: int = -1
    confidence: float = 0.0
    decision_id: str = ""
    error_code: int = 0
    error_text: str = ""

    @property
    def error(self) -> bool:
        return self.error_code != 0


@dataclass
class Handshake:
    """``decide(part_id, deadline)`` -> ``PartResult`` or ``HandshakeError``, run in a worker thread;
    ``station_ready()`` says whether the station can take a part now."""

    decide: Callable[[str, float], PartResult]
    station_ready: Callable[[], bool]
    timeouts: HandshakeTimeouts = field(default_factory=HandshakeTimeouts)
    out: Outputs = field(default_factory=Outputs)
    _job: Future | None = None
    _since: float = 0.0
    _acknowledge_was: bool = False  # Acknowledge at the last poll: only its rising edge acknowledges a result
    _pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="handshake"))

    def step(self, trigger: bool, acknowledge: bool, part_id: str, now: float | None = None) -> Outputs:
        """One poll: the PLC's inputs in, what the station shows out."""
        now = time.monotonic() if now is None else now
        state = self.out.state
        if state == IDLE and trigger:
            self._trigger(part_id, now)
        elif state == BUSY:
            self._collect(now)
        elif state == RESULT_READY:
            if acknowledge and not self._acknowledge_was:  # raised after the result, not held from before it
                self.out = replace(self.out, state=RELEASE, result_ready=False)
            elif now - self._since > self.timeouts.acknowledge_s:
                self.out = replace(self.out, state=RELEASE, result_ready=False, error_code=ERROR_CODES["ack_timeout"],
                                   error_text=f"no Acknowledge within {self.timeouts.acknowledge_s:g} s")
        elif state == RELEASE and not trigger and not acknowledge:
            self.out = replace(self.out, state=IDLE)
        self._acknowledge_was = acknowledge
        ready = self.out.state == IDLE and self._station_ready()
        if ready != self.out.ready:
            self.out = replace(self.out, ready=ready)
        return self.out

    def _station_ready(self) -> bool:
        try:
            return bool(self.station_ready())
        except Exception:
            return False

    def _trigger(self, part_id: str, now: float) -> None:
        cleared = Outputs(state=BUSY, busy=True, sequence=self.out.sequence, part_id=part_id)
        try:
            if not part_id:
                raise IntakeError("bad_part_id", "PartId is empty: set it before raising Trigger")
            check_part_id(part_id)
        except IntakeError as exc:
            self.out = cleared
            self._fail(HandshakeError("bad_part_id", str(exc)), now)
            return
        if not self._station_ready():
            self.out = cleared
            self._fail(HandshakeError("not_ready", "the station is not ready (see GET /v1/ready)"), now)
            return
        self.out, self._since = cleared, now
        self._job = self._pool.submit(self.decide, part_id, now + self.timeouts.image_s)

    def _collect(self, now: float) -> None:
        job = self._job
        if not job.done():
            if now - self._since > self.timeouts.image_s + DECIDE_GRACE_S:
                self._job = None
                self._fail(HandshakeError("internal", "the decision did not finish in time"), now)
            return
        self._job = None
        try:
            result = job.result()
        except HandshakeError as exc:
            self._fail(exc, now)
            return
        except Exception as exc:  # a bug: the PLC gets an error, the station keeps running
            self._fail(HandshakeError("internal", f"{type(exc).__name__}: {exc}"), now)
            return
        self.out = replace(self.out, state=RESULT_READY, busy=False, result_ready=True, sequence=self._next_sequence(),
                           action_code=ACTION_CODES.get(result.action, ACTION_ERROR),
                           class_index=result.class_index, confidence=float(result.confidence),
                           decision_id=result.decision_id, error_code=0, error_text="")
        self._since = now

    def _fail(self, exc: HandshakeError, now: float) -> None:
        self.out = replace(self.out, state=RESULT_READY, busy=False, result_ready=True, sequence=self._next_sequence(),
                           action_code=ACTION_ERROR, class_index=-1, confidence=0.0, decision_id="",
                           error_code=ERROR_CODES[exc.kind], error_text=str(exc)[:200])
        self._since = now

    def _next_sequence(self) -> int:
        return (self.out.sequence + 1) % 65536

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
