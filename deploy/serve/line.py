"""The station's line interfaces (``--publish``, ``--opcua``, ``--modbus``): the glue between one station and
``deploy.line``.

* MQTT: a ``Follower`` reads the station's decision log through its own durable cursor and publishes; it never
  sees a request.
* OPC UA and Modbus: the PLC handshake decides a triggered part through the station's own path
  (``StationDecider``): its image arrives as a file in ``--handshake-images`` (``PART_ID.png``, written as
  ``NAME.tmp`` and renamed) or over HTTP (``POST /v1/inspect?part_id=PART_ID`` after the trigger), is decoded
  and preprocessed like any request, decided by the serving model, recorded in the decision log (source
  ``handshake``), and the file moved to ``--handshake-images/decided/<action>/``.
* Every recorded decision (HTTP, handshake) reaches the servers' counters and last result through
  ``StationState.listeners``: a lock and a few assignments on the recording thread, nothing that waits.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

from deploy.decision_log import DecisionLogUnavailable, DecisionRecord
from deploy.errors import DeployError
from deploy.intake import IntakeError
from deploy.line.config import LineConfig
from deploy.line.events import Source
from deploy.line.follower import StationStatus
from deploy.line.handshake import HandshakeError, PartResult
from deploy.line.publisher import PublisherProcess
from deploy.line.tally import StationView, part_result
from deploy.preprocess import IMAGE_SUFFIXES
from deploy.serve.intake import prepare
from deploy.serve.state import StationState

DECIDED_DIR = "decided"
STALE_DIR = "stale"  # under DECIDED_DIR: an image of an earlier part with the same id, never decided


def find_image(folder: Path, part_id: str) -> Path | None:
    """``folder/PART_ID.<image suffix>``; never a path outside ``folder`` (a part id holding a separator or
    starting with a dot, or too long for a file name, names no file)."""
    if not part_id or part_id.startswith(".") or "/" in part_id or "\\" in part_id or "\0" in part_id:
        return None
    for suffix in IMAGE_SUFFIXES:
        path = folder / f"{part_id}{suffix}"
        try:
            if path.is_file():
                return path
        except OSError:  # ENAMETOOLONG: a valid part id of more than 255 bytes names no file (its image comes over HTTP)
            return None
    return None


RECENT_MAX = 1024  # HTTP decisions remembered for a trigger that the station notices after the image came


class StationDecider:
    """``decide(part_id, deadline)`` for the handshake: the first of a file in the images folder or an HTTP decision
    recorded for that part id (after the trigger, or up to ``early_s`` before the station noticed it: the camera
    may be quicker than the PLC's write); ``HandshakeError`` when neither comes by ``deadline``. An HTTP decision
    answers one trigger only."""

    def __init__(self, station: StationState, images: Path | None, early_s: float = 5.0) -> None:
        self.station, self.images, self.early_s = station, images, early_s
        self._lock = threading.Lock()
        self._waiting: dict[str, list] = {}  # part id -> [event, record]
        self._recent: OrderedDict[str, tuple[float, DecisionRecord]] = OrderedDict()

    def on_record(self, record: DecisionRecord) -> None:
        if record.source == "handshake" or not record.part_id:
            return
        with self._lock:
            slot = self._waiting.get(record.part_id)
            if slot is None:
                self._recent[record.part_id] = (time.monotonic(), record)
                self._recent.move_to_end(record.part_id)
                while len(self._recent) > RECENT_MAX:
                    self._recent.popitem(last=False)
                return
        slot[1] = record
        slot[0].set()

    def decide(self, part_id: str, deadline: float) -> PartResult:
        slot = [threading.Event(), None]
        with self._lock:
            self._waiting[part_id] = slot
            at, early = self._recent.pop(part_id, (0.0, None))
            if early is not None and time.monotonic() - at <= self.early_s:
                slot[1] = early
        if self.images is not None:
            self._set_aside_stale(part_id)
        try:
            while True:
                if slot[1] is not None:
                    return part_result(slot[1], self._classes())
                path = find_image(self.images, part_id) if self.images is not None else None
                if path is not None:
                    return self._decide_file(part_id, path)
                if time.monotonic() >= deadline:
                    where = f"{self.images}/{part_id}.png or " if self.images is not None else ""
                    raise HandshakeError("no_image", f"no image for part {part_id} ({where}POST /v1/inspect?part_id=) "
                                         "within the time-out")
                slot[0].wait(0.002)
        finally:
            with self._lock:
                if self._waiting.get(part_id) is slot:
                    del self._waiting[part_id]

    def _set_aside_stale(self, part_id: str) -> None:
        """An image already there for this part id that came more than ``early_s`` before the trigger belongs to
        an earlier part with the same id (one whose image came after its handshake gave up, ``no_image``): it is
        moved to ``DIR/decided/stale/``, never decided for this part. Its ctime is when it was written or renamed
        into the folder (a copy that keeps the camera's mtime cannot make it look new or old)."""
        path = find_image(self.images, part_id)
        try:
            stale = path is not None and path.stat().st_ctime < time.time() - self.early_s
        except OSError:
            return
        if stale:
            _move(path, self.images / DECIDED_DIR / STALE_DIR)

    def _classes(self) -> list[str]:
        return list(self.station.host.current.predictor.classes)

    def _decide_file(self, part_id: str, path: Path) -> PartResult:
        t0 = time.perf_counter()
        model = self.station.host.acquire()
        try:
            data = path.read_bytes()
            prepared = prepare(data, model.predictor.manifest.preprocess, max_pixels=self.station.config.max_pixels)
            started = time.perf_counter()
            decision = model.predictor.decide_batch(prepared.tensor[None])[0]
            infer_ms = (time.perf_counter() - started) * 1000.0
        except IntakeError as exc:
            _move(path, self.images / DECIDED_DIR / "error")
            raise HandshakeError("bad_image", f"{path.name}: {exc}") from None
        finally:
            self.station.host.release(model)
        dest = _move(path, self.images / DECIDED_DIR / decision.action)
        timings = {"decode": round(prepared.decode_ms, 3), "preprocess": round(prepared.preprocess_ms, 3),
                   "infer": round(infer_ms, 3), "total": round((time.perf_counter() - t0) * 1000.0, 3)}
        record = DecisionRecord.from_decision(decision, part_id=part_id, image_sha256=prepared.image_sha256,
                                              model_id=model.model_id, source="handshake", latency_ms=timings,
                                              decision_id=uuid.uuid4().hex, image=str(dest))
        try:
            self.station.record(record)
        except DecisionLogUnavailable as exc:  # not recorded, so not given
            raise HandshakeError("not_ready", str(exc)) from None
        return part_result(record, list(model.predictor.classes))


def _move(path: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / path.name
    if dest.exists():
        dest = folder / f"{path.stem}-{uuid.uuid4().hex[:8]}{path.suffix}"
    try:
        os.replace(path, dest)
    except OSError:
        return path
    return dest


class StationLine:
    """The running line interfaces of one station; ``stop`` ends them (the MQTT sink says offline first)."""

    def __init__(self, station: StationState, config: LineConfig) -> None:
        self.station, self.config = station, config
        self.decider = StationDecider(station, config.handshake_images, config.timeouts.image_s)
        self.view = StationView(station_id=config.station_id, line=self._line, model_id=self._model_id,
                                ready=lambda: station.not_ready_reason() is None, decide=self.decider.decide,
                                config=config)
        self.follower: Any = None
        self.servers: list[Any] = []

    def _line(self) -> str | None:
        return self.station.host.current.predictor.manifest.extra.get("line")

    def _model_id(self) -> str | None:
        return self.station.host.current.model_id

    def _on_record(self, record: DecisionRecord) -> None:
        self.view.tally.add(part_result(record, list(self.station.host.current.predictor.classes)))
        self.decider.on_record(record)

    def start(self) -> "StationLine":
        self.station.listeners.append(self._on_record)
        try:
            if self.config.publish is not None:
                if self.station.config.log_dir is None:
                    raise DeployError("--publish follows the decision log: it cannot run with --no-log")
                self.follower = PublisherProcess(
                    self.station.config.log_dir, self.config, Source(self.config.station_id, self._line()),
                    lambda: StationStatus(self.station.not_ready_reason() is None, self._model_id())).start()
            if self.config.opcua is not None:
                from deploy.line.opcua import OpcUaServer

                self.servers.append(OpcUaServer(self.view).start())
            if self.config.modbus is not None:
                from deploy.line.modbus import ModbusServer

                self.servers.append(ModbusServer(self.view).start())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        self.servers = []
        if self.follower is not None:
            self.follower.stop()
            self.follower = None
        if self._on_record in self.station.listeners:
            self.station.listeners.remove(self._on_record)


def start_line(station: StationState, config: LineConfig) -> StationLine:
    if config.handshake_images is not None and not config.handshake_images.is_dir():
        raise DeployError(f"--handshake-images {config.handshake_images}: no such folder; create it or give the "
                          "folder the camera software drops PART_ID.png into")
    return StationLine(station, config).start()
