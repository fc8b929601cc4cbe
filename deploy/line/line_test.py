"""``deploy line-test``: on commissioning day, play the PLC against a running station and measure the handshake.

For each of N parts: wait for TriggerReady, write the part id and raise Trigger, deliver the part's image (dropped
into the station's ``--handshake-images`` folder as ``PART_ID.png``, written as a temporary name and renamed, or
sent over HTTP with its part id), wait for ResultReady, read the result, Acknowledge, wait for the station to drop
ResultReady, drop Trigger and Acknowledge. The handshake time is from raising Trigger to seeing ResultReady.

A result is **lost** when ResultReady does not come within the time-out, **mismatched** when it is for another
part id, carries an error, or (with ``--bundle``) differs from what the bundle decides on that image here. The
images are taken from a folder in turn; part ids are numbers (Modbus carries a 32-bit part number).
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from deploy.errors import DeployError
from deploy.line.handshake import ACTION_CODES, ERROR_CODES, RELEASE
from deploy.line.modbus import (COIL_TRIGGER, CONFIDENCE_SCALE, DEVICE_ID, HR_PART_NUMBER, IR_COUNT,
                                decode_decision_id, quiet_pymodbus, words)
from deploy.line.mqtt import line_extra_missing
from deploy.line.opcua import NAMESPACE

POLL_S = 0.001
ACTIONS = {code: action for action, code in ACTION_CODES.items()}
ERRORS = {code: kind for kind, code in ERROR_CODES.items()}


@dataclass
class Seen:
    """What the PLC reads from the station in one poll."""

    ready: bool
    busy: bool
    result_ready: bool
    state: int
    part_id: str
    action_code: int
    class_index: int
    confidence: float
    decision_id: str
    error_code: int


@dataclass
class Cycle:
    part_id: str
    image: str
    handshake_ms: float | None  # None: lost
    seen: Seen | None = None
    expected: tuple[str, int] | None = None  # (action, class index) the bundle gives here
    problem: str | None = None


@dataclass
class LineTestReport:
    cycles: list[Cycle] = field(default_factory=list)

    @property
    def lost(self) -> list[Cycle]:
        return [c for c in self.cycles if c.handshake_ms is None]

    @property
    def mismatched(self) -> list[Cycle]:
        return [c for c in self.cycles if c.handshake_ms is not None and c.problem]

    def percentile_ms(self, q: float) -> float | None:
        times = [c.handshake_ms for c in self.cycles if c.handshake_ms is not None]
        return float(np.percentile(times, q)) if times else None

    def summary(self) -> dict[str, Any]:
        return {"handshakes": len(self.cycles), "lost": len(self.lost), "mismatched": len(self.mismatched),
                "p50_ms": _round(self.percentile_ms(50)), "p95_ms": _round(self.percentile_ms(95)),
                "max_ms": _round(self.percentile_ms(100))}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


class OpcUaPlc:
    """The PLC's side over OPC UA (asyncua's synchronous client)."""

    def __init__(self, url: str, user: str | None = None, password: str | None = None,
                 security: str | None = None) -> None:
        try:
            from asyncua.sync import Client
        except ImportError as exc:
            raise line_extra_missing(exc) from None
        self.client = Client(url, timeout=10)
        if security:  # asyncua's own string: "Basic256Sha256,SignAndEncrypt,CLIENT_CERT,CLIENT_KEY"
            try:
                self.client.set_security_string(security)
            except Exception as exc:
                self._stop_loop()
                raise DeployError(f"--opcua-security: {type(exc).__name__}: {exc}; give "
                                  "Basic256Sha256,SignAndEncrypt,CLIENT_CERT.der,CLIENT_KEY.pem") from None
        if user:
            self.client.set_user(user)
            self.client.set_password(password or "")
        try:
            self.client.connect()
        except Exception as exc:
            self._stop_loop()  # asyncua's client thread is not a daemon: left running, it keeps the process alive
            raise DeployError(f"{url}: cannot connect to the station's OPC UA server ({type(exc).__name__}: {exc})") from None
        ns = self.client.get_namespace_index(NAMESPACE)

        def node(name: str):
            return self.client.get_node(f"ns={ns};s=Station.Handshake.{name}")

        self.trigger, self.part, self.ack = node("Trigger"), node("PartId"), node("Acknowledge")
        self.outputs = [node(n) for n in ("TriggerReady", "Busy", "ResultReady", "State", "ResultPartId", "ActionCode",
                                          "ClassIndex", "Confidence", "DecisionId", "ErrorCode")]

    def read(self) -> Seen:
        v = self.client.read_values(self.outputs)
        return Seen(bool(v[0]), bool(v[1]), bool(v[2]), int(v[3]), str(v[4] or ""), int(v[5]), int(v[6]), float(v[7]),
                    str(v[8] or ""), int(v[9]))

    def trigger_part(self, part_id: str) -> None:
        self.client.write_values([self.part], [part_id])
        self.client.write_values([self.trigger], [True])

    def set(self, trigger: bool, acknowledge: bool) -> None:
        self.client.write_values([self.trigger, self.ack], [trigger, acknowledge])

    def _stop_loop(self) -> None:
        try:
            self.client.tloop.stop()
        except Exception:
            pass

    def close(self) -> None:
        try:
            self.client.disconnect()
        except Exception:
            self._stop_loop()


class ModbusPlc:
    """The PLC's side over Modbus TCP (pymodbus's client), per the register table in ``deploy.line.modbus``."""

    def __init__(self, host: str, port: int) -> None:
        try:
            from pymodbus.client import ModbusTcpClient
        except ImportError as exc:
            raise line_extra_missing(exc) from None
        quiet_pymodbus()
        self.client = ModbusTcpClient(host, port=port, timeout=5)
        if not self.client.connect():
            raise DeployError(f"modbus://{host}:{port}: cannot connect to the station's Modbus server")

    def read(self) -> Seen:
        bits = self.client.read_discrete_inputs(0, count=5, device_id=DEVICE_ID).bits
        r = self.client.read_input_registers(0, count=IR_COUNT, device_id=DEVICE_ID).registers
        part = (r[2] << 16) | r[3]
        return Seen(bool(bits[0]), bool(bits[1]), bool(bits[2]), r[0], str(part) if part else "", r[4],
                    r[5] - 65536 if r[5] >= 32768 else r[5], r[6] / CONFIDENCE_SCALE,
                    decode_decision_id(r[8:16]) if any(r[8:16]) else "", r[7])

    def trigger_part(self, part_id: str) -> None:
        self.client.write_registers(HR_PART_NUMBER, words(int(part_id)), device_id=DEVICE_ID)
        self.client.write_coil(COIL_TRIGGER, True, device_id=DEVICE_ID)

    def set(self, trigger: bool, acknowledge: bool) -> None:
        self.client.write_coils(COIL_TRIGGER, [trigger, acknowledge], device_id=DEVICE_ID)

    def close(self) -> None:
        self.client.close()


def connect_plc(url: str, user: str | None = None, password: str | None = None, security: str | None = None):
    from deploy.line.config import parse_modbus_url, parse_opcua_url

    if url.startswith("opc.tcp://"):
        parse_opcua_url(url)
        return OpcUaPlc(url, user, password, security)
    if url.startswith("modbus://"):
        endpoint = parse_modbus_url(url)
        return ModbusPlc(endpoint.host, endpoint.port)
    raise DeployError(f"{url!r}: give the station's opc.tcp://HOST:4840 or modbus://HOST:502")


def drop_image(src: Path, folder: Path, part_id: str) -> None:
    """As line software should: a temporary name in the same folder, then an atomic rename."""
    tmp = folder / f".{part_id}.{uuid.uuid4().hex[:6]}.tmp"
    shutil.copyfile(src, tmp)
    os.replace(tmp, folder / f"{part_id}{src.suffix.lower()}")


def post_image(http_url: str, src: Path, part_id: str) -> None:
    import urllib.request

    request = urllib.request.Request(f"{http_url.rstrip('/')}/v1/inspect?part_id={part_id}", data=src.read_bytes(),
                                     headers={"Content-Type": "application/octet-stream"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()


def _wait(plc: Any, condition: Callable[[Seen], bool], timeout_s: float) -> Seen | None:
    deadline = time.monotonic() + timeout_s
    while True:
        seen = plc.read()
        if condition(seen):
            return seen
        if time.monotonic() > deadline:
            return None
        time.sleep(POLL_S)


def run_line_test(plc: Any, images: list[Path], n: int, deliver: Callable[[Path, str], None],
                  expected: Callable[[Path], tuple[str, int]] | None = None, first_part: int = 1,
                  timeout_s: float = 10.0) -> LineTestReport:
    """``n`` handshakes against the station behind ``plc``, the images in turn; never raises for a lost result."""
    if not images:
        raise DeployError("no images to play: give a folder holding .png/.jpg/.bmp/.tif files")
    report = LineTestReport()
    for i in range(n):
        image, part_id = images[i % len(images)], str(first_part + i)
        cycle = Cycle(part_id, image.name, None, expected=expected(image) if expected else None)
        report.cycles.append(cycle)
        if _wait(plc, lambda s: s.ready, timeout_s) is None:
            cycle.problem = "TriggerReady never came"
            plc.set(False, False)
            continue
        started = time.perf_counter()
        plc.trigger_part(part_id)
        deliver(image, part_id)
        seen = _wait(plc, lambda s: s.result_ready, timeout_s)
        if seen is None:
            cycle.problem = "ResultReady never came"
            plc.set(False, False)
            continue
        cycle.handshake_ms, cycle.seen = (time.perf_counter() - started) * 1000.0, seen
        cycle.problem = _problem(cycle, seen)
        plc.set(True, True)
        _wait(plc, lambda s: not s.result_ready and s.state == RELEASE, timeout_s)
        plc.set(False, False)
    return report


def _problem(cycle: Cycle, seen: Seen) -> str | None:
    if seen.error_code:
        return f"error {ERRORS.get(seen.error_code, seen.error_code)}"
    if seen.part_id != cycle.part_id:
        return f"result for part {seen.part_id!r}, not {cycle.part_id!r}"
    if cycle.expected is not None:
        action, index = ACTIONS.get(seen.action_code, str(seen.action_code)), seen.class_index
        if (action, index) != cycle.expected:
            return f"{action}/{index} where the bundle gives {cycle.expected[0]}/{cycle.expected[1]}"
    return None


def bundle_expectation(bundle: Path) -> Callable[[Path], tuple[str, int]]:
    """What the bundle decides on an image here (the station must say the same)."""
    from deploy.predictor import Predictor

    predictor = Predictor.from_bundle(bundle, runtime="onnx")
    classes = list(predictor.classes)

    def expect(image: Path) -> tuple[str, int]:
        d = predictor.predict_paths([image])[0]
        return d.action, classes.index(d.label) if d.label in classes else -1

    return expect
