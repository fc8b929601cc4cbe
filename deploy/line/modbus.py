"""The station on Modbus TCP (pymodbus, the ``line`` extra), for PLCs without OPC UA: the same handshake
(``deploy.line.handshake``) and result on coils and registers, device id 1, addresses from 0:

    coils (PLC writes)            0 Trigger            1 Acknowledge
    discrete inputs (station)     0 TriggerReady       1 Busy      2 ResultReady    3 Error     4 StationReady
    holding registers (PLC)       0-1 PartNumber (uint32, high word first; the part id is its decimal form, >= 1)
    input registers (station)     0 State   1 Sequence   2-3 ResultPartNumber (uint32)   4 ActionCode
                                  5 ClassIndex (int16: 65535 = -1)   6 Confidence x 10000   7 ErrorCode
                                  8-15 DecisionId (its 32 hex digits as 16 bytes, big-endian)
                                  16-17 Accepted   18-19 Rejected   20-21 Review (uint32 counters)

Modbus has no authentication: put the station's Modbus port on the PLC's own network segment only. The server runs
in a thread with its own event loop and polls the PLC's inputs every ``POLL_S``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from deploy.errors import DeployError
from deploy.line.handshake import Handshake, Outputs
from deploy.line.mqtt import line_extra_missing
from deploy.line.tally import StationView

DEVICE_ID = 1
POLL_S = 0.005
COILS, DISCRETE, HOLDING, INPUT = 1, 2, 3, 4  # the function codes that read each table
COIL_TRIGGER, COIL_ACKNOWLEDGE = 0, 1
HR_PART_NUMBER = 0
IR_COUNT = 22
CONFIDENCE_SCALE = 10000


def quiet_pymodbus() -> None:
    """pymodbus logs every refused request (a PLC polling a unit id other than 1) with a traceback and a hex dump
    of the last frames, and a taken port or a refused connection on top of the one line the station or
    ``deploy line-test`` says itself: a misbehaving client would flood the station's log. Its own level, if one was
    set, is kept."""
    library_log = logging.getLogger("pymodbus.logging")
    if library_log.level == logging.NOTSET:
        library_log.setLevel(logging.CRITICAL)


def words(value: int) -> list[int]:
    """A uint32 as two registers, high word first."""
    value %= 2**32
    return [value >> 16, value & 0xFFFF]


def output_registers(out: Outputs, counts: dict[str, int]) -> list[int]:
    """Input registers 0..21 for what the station shows."""
    part = int(out.part_id) if out.part_id.isdigit() else 0
    decision = bytes.fromhex(out.decision_id) if len(out.decision_id) == 32 else b"\0" * 16
    return [out.state, out.sequence, *words(part), out.action_code, out.class_index % 65536,
            int(round(min(max(out.confidence, 0.0), 1.0) * CONFIDENCE_SCALE)), out.error_code,
            *[int.from_bytes(decision[i:i + 2], "big") for i in range(0, 16, 2)],
            *words(counts["accept"]), *words(counts["reject"]), *words(counts["review"])]


def decode_decision_id(registers: list[int]) -> str:
    return b"".join(r.to_bytes(2, "big") for r in registers).hex()


def part_number_id(registers: list[int]) -> str:
    """Holding registers 0-1 -> the part id the station decides (``""`` for 0: not set)."""
    number = (registers[0] << 16) | registers[1]
    return str(number) if number else ""


class ModbusServer:
    def __init__(self, view: StationView) -> None:
        try:
            import pymodbus  # noqa: F401
        except ImportError as exc:
            raise line_extra_missing(exc) from None
        quiet_pymodbus()
        self.view, self.endpoint = view, view.config.modbus
        self.handshake = Handshake(view.decide, view.ready, view.config.timeouts)
        self._stop = threading.Event()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"modbus://{self.endpoint.host}:{self.endpoint.port}"

    def start(self, timeout_s: float = 30.0) -> "ModbusServer":
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="line-modbus", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout_s) or self._error is not None:
            self.stop()
            raise DeployError(f"--modbus {self.url}: the Modbus server did not start ({self._error or 'time-out'}); "
                              "is the port taken? pick another")
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.handshake.close()

    def _device(self):
        from pymodbus.simulator import DataType, SimData, SimDevice

        def bits(n: int) -> list:
            return [SimData(0, count=n, values=False, datatype=DataType.BITS)]

        def registers(n: int) -> list:
            return [SimData(0, count=n, values=0, datatype=DataType.REGISTERS)]

        return SimDevice(DEVICE_ID, simdata=(bits(16), bits(16), registers(16), registers(32)), use_bit_addressing=True)

    async def _main(self) -> None:
        from pymodbus.server import ModbusTcpServer

        try:
            server = ModbusTcpServer(self._device(), address=(self.endpoint.host, self.endpoint.port))
            task = asyncio.create_task(server.serve_forever())
            for _ in range(200):  # until it listens (or failed)
                await asyncio.sleep(0.01)
                if task.done() or server.is_active():
                    break
            if task.done() and task.exception() is not None:
                raise task.exception()
        except BaseException as exc:
            self._error = exc
            self._started.set()
            return
        self._started.set()
        try:
            await self._serve(server)
        finally:
            await server.shutdown()

    async def _serve(self, server: Any) -> None:
        shown_bits, shown_registers = None, None
        while not self._stop.is_set():
            trigger, acknowledge = (await server.async_getValues(DEVICE_ID, COILS, COIL_TRIGGER, 2))[:2]
            part_id = part_number_id(await server.async_getValues(DEVICE_ID, HOLDING, HR_PART_NUMBER, 2))
            out = self.handshake.step(bool(trigger), bool(acknowledge), part_id)
            station_ready = out.ready or _safe_ready(self.view)
            bits = [out.ready, out.busy, out.result_ready, out.error, station_ready]
            if bits != shown_bits:
                await server.async_setValues(DEVICE_ID, DISCRETE, 0, bits)
                shown_bits = bits
            registers = output_registers(out, self.view.tally.snapshot()[1])
            if registers != shown_registers:
                await server.async_setValues(DEVICE_ID, INPUT, 0, registers)
                shown_registers = registers
            await asyncio.sleep(POLL_S)


def _safe_ready(view: StationView) -> bool:
    try:
        return bool(view.ready())
    except Exception:
        return False
