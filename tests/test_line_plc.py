"""The PLC handshake on OPC UA (a real asyncua client) and Modbus TCP (a real pymodbus client) against a real
station on 127.0.0.1: every triggered part decided through the station's own path and logged, no result lost or
mismatched; the time-outs, a bad part id, OPC UA users; ``deploy line-test``; and the issue's done-when: one
station with ``--publish`` and ``--opcua`` together."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("asyncua")
pytest.importorskip("pymodbus")
from typer.testing import CliRunner  # noqa: E402

from deploy.cli import app as deploy_app  # noqa: E402
from deploy.decision_log import read_records  # noqa: E402
from deploy.line.config import HandshakeTimeouts, build_line_config  # noqa: E402
from deploy.line.handshake import (BUSY, ERROR_CODES, IDLE, RELEASE, RESULT_READY, Handshake, HandshakeError,  # noqa: E402
                                   PartResult)
from deploy.line.line_test import (ModbusPlc, OpcUaPlc, bundle_expectation, drop_image, post_image,  # noqa: E402
                                   run_line_test)
from deploy.serve import ServeConfig, build_station  # noqa: E402
from tests.edge_bundle import make_bundle, sample_images  # noqa: E402
from tests.line_servers import Mosquitto, Subscriber, free_port, wait_until  # noqa: E402

pytestmark = pytest.mark.edge


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "b", seed=0)


@pytest.fixture(scope="module")
def images() -> list[Path]:
    return sample_images(3)  # 9 images, every class


class PlcStation:
    def __init__(self, bundle: Path, folder: Path, **line) -> None:
        self.images = folder / "triggered"
        self.images.mkdir(parents=True)
        self.log_dir = folder / "log"
        self.opcua_url = f"opc.tcp://127.0.0.1:{free_port()}"
        self.modbus_port = free_port()
        config = build_line_config(opcua=self.opcua_url, modbus=f"modbus://127.0.0.1:{self.modbus_port}",
                                   handshake_images=self.images, station_id="st-plc", image_timeout_s=1.0,
                                   acknowledge_timeout_s=1.0, **line)
        self.station = build_station(ServeConfig(bundle=bundle, log_dir=self.log_dir, line=config), port=0).start()
        host, port = self.station.sock.getsockname()[:2]
        self.http_url = f"http://{host}:{port}"

    def handshake_records(self):
        return [r for r in read_records([self.log_dir]).records if r.source == "handshake"]


@pytest.fixture(scope="module")
def station(bundle, tmp_path_factory):
    s = PlcStation(bundle, tmp_path_factory.mktemp("plc"))
    yield s
    s.station.stop()


# -- the state machine alone ----------------------------------------------------------------------------------------

def _result(part_id: str) -> PartResult:
    return PartResult(part_id, "reject", "scratch", 1, 0.8, "d" * 32, "t")


def _settle(hs: Handshake, trigger: bool, ack: bool, part: str, until: int, now: float = 0.0):
    for _ in range(2000):
        out = hs.step(trigger, ack, part, now)
        if out.state == until:
            return out
        import time
        time.sleep(0.001)
    raise AssertionError(f"state {hs.out.state}, not {until}")


def test_the_state_machine_needs_a_rising_edge_and_times_out():
    hs = Handshake(lambda part, deadline: _result(part), lambda: True, HandshakeTimeouts(image_s=1.0, acknowledge_s=2.0))
    assert hs.step(False, False, "", 0.0).ready
    assert hs.step(True, False, "7", 0.0).state == BUSY and hs.out.busy and not hs.out.ready
    out = _settle(hs, True, False, "7", RESULT_READY)
    assert out.result_ready and out.action_code == 2 and out.class_index == 1 and out.sequence == 1 and not out.error
    assert hs.step(True, False, "7", 5.0).state == RELEASE and hs.out.error_code == ERROR_CODES["ack_timeout"]
    assert hs.step(True, False, "7", 5.1).state == RELEASE  # Trigger still high: no second decision of part 7
    assert hs.step(False, False, "7", 5.2).state == IDLE and hs.out.ready
    bad = hs.step(True, False, "7\x07", 6.0)
    assert bad.state == RESULT_READY and bad.error_code == ERROR_CODES["bad_part_id"] and bad.action_code == 4

    def no_image(part: str, deadline: float) -> PartResult:
        raise HandshakeError("no_image", "none came")

    slow = Handshake(no_image, lambda: True)
    slow.step(True, False, "8", 0.0)
    assert _settle(slow, True, False, "8", RESULT_READY).error_code == ERROR_CODES["no_image"]
    busy_station = Handshake(lambda p, d: _result(p), lambda: False)
    assert not busy_station.step(False, False, "", 0.0).ready
    assert busy_station.step(True, False, "9", 0.0).error_code == ERROR_CODES["not_ready"]
    for h in (hs, slow, busy_station):
        h.close()


# -- OPC UA and Modbus against a real station -----------------------------------------------------------------------

@pytest.mark.parametrize("protocol", ["opcua", "modbus"])
def test_handshakes_decide_every_triggered_part_and_lose_none(station, bundle, images, protocol):
    plc = OpcUaPlc(station.opcua_url) if protocol == "opcua" else ModbusPlc("127.0.0.1", station.modbus_port)
    first = 1000 if protocol == "opcua" else 2000
    before = len(station.handshake_records())
    try:
        report = run_line_test(plc, images, 20, lambda src, part: drop_image(src, station.images, part),
                               bundle_expectation(bundle), first_part=first)
    finally:
        plc.close()
    summary = report.summary()
    assert summary["handshakes"] == 20 and summary["lost"] == 0 and summary["mismatched"] == 0, \
        [(c.part_id, c.problem) for c in report.cycles if c.problem]
    records = station.handshake_records()[before:]
    assert [r.part_id for r in records] == [str(first + i) for i in range(20)]
    assert [c.seen.decision_id for c in report.cycles] == [r.decision_id for r in records]
    assert {r.action for r in records} >= {"accept", "reject"}  # the images differ, and so do the answers
    assert not list(station.images.glob("*.png"))  # every dropped image was taken
    assert sum(1 for _ in (station.images / "decided").rglob("*.png")) >= 20


def test_an_image_over_http_completes_the_handshake_and_the_node_set_shows_the_station(station, images):
    plc = OpcUaPlc(station.opcua_url)
    try:
        report = run_line_test(plc, images[:3], 3, lambda src, part: post_image(station.http_url, src, part),
                               first_part=3000)
        assert report.summary()["lost"] == 0 and report.summary()["mismatched"] == 0
        ns = plc.client.get_namespace_index("urn:inspection-kit:station")

        def value(name: str):
            return plc.client.get_node(f"ns={ns};s=Station.{name}").read_value()

        wait_until(lambda: value("LastResult.PartId") == "3002", "the last result")
        served = [r for r in read_records([station.log_dir]).records if r.part_id == "3002"]
        assert [r.source for r in served] == ["serve"]  # decided once, over HTTP; the handshake took its answer
        assert value("LastResult.DecisionId") == served[0].decision_id == report.cycles[-1].seen.decision_id
        assert value("Ready") is True and value("Station") == "st-plc" and value("Line") == "station_line"
        counts = sum(value(f"Counters.{c}") for c in ("Accepted", "Rejected", "Review"))
        assert counts == len(read_records([station.log_dir]).records)
    finally:
        plc.close()


def test_no_image_and_a_bad_part_id_are_errors_the_plc_can_read(station):
    plc = OpcUaPlc(station.opcua_url)
    try:
        for part_id, error in (("4000", "no_image"), ("40\u202e01", "bad_part_id")):
            wait_until(lambda: plc.read().ready, "TriggerReady")
            plc.trigger_part(part_id)
            seen = wait_until(lambda: (s := plc.read()).result_ready and s, "ResultReady with an error", 10)
            assert seen.error_code == ERROR_CODES[error] and seen.action_code == 4 and seen.decision_id == ""
            plc.set(True, True)
            wait_until(lambda: plc.read().state == RELEASE, "the release")
            plc.set(False, False)
    finally:
        plc.close()


def test_line_test_command_reports_latency_and_nothing_lost(station, bundle, images, tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    for image in images:
        (folder / image.name).write_bytes(image.read_bytes())
    result = CliRunner().invoke(deploy_app, ["line-test", f"modbus://127.0.0.1:{station.modbus_port}", "--images",
                                             str(folder), "-n", "10", "--drop-into", str(station.images), "--bundle",
                                             str(bundle), "--first-part", "5000"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["handshakes"] == 10 and summary["lost"] == 0 and summary["mismatched"] == 0
    assert 0 < summary["p50_ms"] <= summary["p95_ms"] <= summary["max_ms"]
    bad = CliRunner().invoke(deploy_app, ["line-test", "http://127.0.0.1:1", "--images", str(folder), "--http", "x"])
    assert bad.exit_code == 1 and "give the station's opc.tcp://HOST:4840 or modbus://HOST:502" in bad.output


def test_opcua_users_refuse_anonymous_and_wrong_passwords(bundle, images, tmp_path):
    users = tmp_path / "users"
    users.write_text("plc1:s3cret-pass\n")
    s = PlcStation(bundle, tmp_path, opcua_users=users)
    try:
        for user, password in ((None, None), ("plc1", "wrong")):
            with pytest.raises(Exception):
                OpcUaPlc(s.opcua_url, user, password)
        plc = OpcUaPlc(s.opcua_url, "plc1", "s3cret-pass")
        try:
            report = run_line_test(plc, images[:2], 2, lambda src, part: drop_image(src, s.images, part))
            assert report.summary()["lost"] == 0 and report.summary()["mismatched"] == 0
        finally:
            plc.close()
    finally:
        s.station.stop()


def test_serve_with_publish_and_opcua_publishes_every_handshake_decision(bundle, images, tmp_path):
    """The issue's done-when: one station, ``--publish mqtt://...`` and ``--opcua opc.tcp://...``, a real broker and
    a real OPC UA client."""
    broker = Mosquitto(tmp_path).start()
    sub = Subscriber(broker.port, "line")
    s = PlcStation(bundle, tmp_path / "station", publish=f"mqtt://127.0.0.1:{broker.port}/line")
    try:
        plc = OpcUaPlc(s.opcua_url)
        try:
            report = run_line_test(plc, images, 10, lambda src, part: drop_image(src, s.images, part), first_part=7000)
        finally:
            plc.close()
        assert report.summary()["lost"] == 0 and report.summary()["mismatched"] == 0
        ids = [c.seen.decision_id for c in report.cycles]
        wait_until(lambda: set(ids) <= set(sub.decision_ids()), "every handshake decision on the broker")
        events = {e["event_id"]: e for e in sub.of("decision")}
        assert [events[i]["decision"]["part_id"] for i in ids] == [str(7000 + k) for k in range(10)]
        assert all(events[i]["decision"]["source"] == "handshake" and events[i]["station"] == "st-plc" for i in ids)
    finally:
        s.station.stop()
        sub.close()
        broker.stop()


def _certificate(folder: Path, name: str, uri: str) -> tuple[Path, Path]:
    import asyncio

    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    key, cert = folder / f"{name}-key.pem", folder / f"{name}-cert.der"
    asyncio.run(setup_self_signed_certificate(key, cert, uri, "localhost",
                                              [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH],
                                              {"commonName": name}))
    return cert, key


def test_opcua_with_a_certificate_offers_only_sign_and_encrypt(bundle, images, tmp_path):
    cert, key = _certificate(tmp_path, "station", "urn:freeopcua:python:server")
    client_cert, client_key = _certificate(tmp_path, "plc", "urn:freeopcua:client")
    s = PlcStation(bundle, tmp_path, opcua_cert=cert, opcua_key=key)
    try:
        with pytest.raises(Exception):
            OpcUaPlc(s.opcua_url)  # no security: no such endpoint
        plc = OpcUaPlc(s.opcua_url, security=f"Basic256Sha256,SignAndEncrypt,{client_cert},{client_key}")
        try:
            report = run_line_test(plc, images[:2], 2, lambda src, part: drop_image(src, s.images, part))
            assert report.summary()["lost"] == 0 and report.summary()["mismatched"] == 0
        finally:
            plc.close()
    finally:
        s.station.stop()


def test_plc_options_fail_in_one_line(bundle, tmp_path):
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    runner = CliRunner()
    cases = [(["--opcua", f"opc.tcp://127.0.0.1:{port}"], "the OPC UA server did not start"),
             (["--modbus", f"modbus://127.0.0.1:{port}"], "the Modbus server did not start"),
             (["--opcua", "http://127.0.0.1:4840"], "give opc.tcp://HOST:4840"),
             (["--modbus", "modbus://127.0.0.1:99999"], "the port must be a number from 1 to 65535"),
             (["--opcua-users", str(tmp_path)], "cannot read it"),
             (["--handshake-images", str(tmp_path)], "goes with --opcua or --modbus"),
             (["--modbus", "modbus://127.0.0.1:1", "--handshake-images", str(tmp_path / "no")], "no such folder")]
    try:
        for args, message in cases:
            result = runner.invoke(deploy_app, ["serve", str(bundle), "--port", "0", "--log-dir", str(tmp_path / "l"),
                                                *args])
            assert result.exit_code == 1, (args, result.output)
            assert message in result.output and "Traceback" not in result.output, result.output
    finally:
        taken.close()


# -- a misbehaving PLC or client (review of the line interfaces) ------------------------------------------------------

def test_an_opcua_session_named_admin_cannot_write_what_the_station_shows(station):
    """asyncua's default user manager makes a session with the user name "admin" (any password) an administrator,
    who could raise ResultReady or change the counters behind the station's back; every session is a PLC here."""
    from asyncua import ua

    for user in (None, "admin"):
        plc = OpcUaPlc(station.opcua_url, user, "anything" if user else None)
        try:
            ns = plc.client.get_namespace_index("urn:inspection-kit:station")
            for name, value, vtype in (("Handshake.ResultReady", True, "Boolean"), ("Handshake.ActionCode", 1, "Int16"),
                                       ("Counters.Accepted", 999, "UInt32")):
                node = plc.client.get_node(f"ns={ns};s=Station.{name}")
                with pytest.raises(ua.UaStatusCodeError):
                    node.write_value(ua.DataValue(ua.Variant(value, getattr(ua.VariantType, vtype))))
            seen = plc.read()
            assert seen.result_ready == (seen.state == RESULT_READY)  # still what the station shows
        finally:
            plc.close()


def test_an_acknowledge_held_from_before_the_result_acknowledges_nothing(station, images):
    """A PLC that raises Acknowledge before (or with) Trigger has read no result: only a rising edge of Acknowledge
    after ResultReady releases it, so ResultReady stays up for the PLC to see."""
    plc = OpcUaPlc(station.opcua_url)
    try:
        wait_until(lambda: plc.read().ready, "TriggerReady")
        plc.set(False, True)
        plc.trigger_part("8000")
        drop_image(images[0], station.images, "8000")
        seen = wait_until(lambda: (s := plc.read()).result_ready and s, "ResultReady", 10)
        assert seen.part_id == "8000" and seen.error_code == 0
        import time
        time.sleep(0.1)  # 20 polls of the station with Acknowledge high all along
        assert plc.read().state == RESULT_READY
        plc.set(True, False)
        time.sleep(0.05)  # a PLC holds a signal for a scan or more: the station polls every 5 ms
        plc.set(True, True)
        after = wait_until(lambda: (s := plc.read()).state == RELEASE and s, "the release")
        assert after.error_code == 0 and after.decision_id == seen.decision_id
        plc.set(False, False)
        wait_until(lambda: plc.read().ready, "TriggerReady again")
    finally:
        plc.close()


def test_a_modbus_request_for_another_unit_id_logs_no_traceback(station, caplog):
    """A PLC polling unit id 0 (common on Modbus TCP) gets an exception response; pymodbus would log a traceback and
    a hex dump for every such request into the station's log."""
    from pymodbus.client import ModbusTcpClient

    client = ModbusTcpClient("127.0.0.1", port=station.modbus_port, timeout=5)
    assert client.connect()
    try:
        for unit in (0, 7):
            assert client.read_input_registers(0, count=2, device_id=unit).isError()
        assert not client.read_input_registers(0, count=2, device_id=1).isError()
    finally:
        client.close()
    assert not [r for r in caplog.records if r.name.startswith("pymodbus")], caplog.text


def test_taken_ports_and_a_missing_password_file_fail_in_one_line(bundle, tmp_path, caplog):
    """The station's or line-test's own error line and nothing else: no library traceback or second line (asyncua
    and pymodbus log a taken port or a refused connection themselves, on the operator's terminal)."""
    import socket

    from deploy.errors import DeployError

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "1.png").write_bytes(sample_images(1)[0].read_bytes())
    try:
        def server(**line):  # the station's servers as it starts them, without loading a bundle
            from deploy.line.modbus import ModbusServer
            from deploy.line.opcua import OpcUaServer
            from deploy.line.tally import StationView

            config = build_line_config(**line)
            view = StationView("st", lambda: None, lambda: None, lambda: True, lambda p, d: None, config)
            return (OpcUaServer if config.opcua else ModbusServer)(view).start()

        for option, url, message in (("opcua", f"opc.tcp://127.0.0.1:{port}", "the OPC UA server did not start"),
                                     ("modbus", f"modbus://127.0.0.1:{port}", "the Modbus server did not start")):
            with pytest.raises(DeployError, match=message):
                server(**{option: url})
        garbled = tmp_path / "garbled.der"
        garbled.write_text("not a certificate")
        with pytest.raises(DeployError, match="check --opcua-cert and --opcua-key") as refused_cert:
            server(opcua=f"opc.tcp://127.0.0.1:{free_port()}", opcua_cert=garbled, opcua_key=garbled)
        assert "port" not in str(refused_cert.value)
        runner = CliRunner()
        missing = runner.invoke(deploy_app, ["line-test", f"modbus://127.0.0.1:{port}", "--images", str(parts),
                                             "--drop-into", str(tmp_path), "--password-file", str(tmp_path / "none")])
        assert missing.exit_code == 1 and "error: --password-file" in missing.output, missing.output
        refused = runner.invoke(deploy_app, ["line-test", "modbus://127.0.0.1:1", "--images", str(parts),
                                             "--drop-into", str(tmp_path)])
        assert refused.exit_code == 1 and "cannot connect" in refused.output
    finally:
        taken.close()
    assert not [r for r in caplog.records if r.name.startswith(("asyncua", "pymodbus"))], caplog.text


def test_an_image_left_from_an_earlier_part_with_the_same_id_is_not_decided_for_the_next(station, images):
    """The image of a part whose handshake gave up (no_image) arrives late and stays in the folder; the next part
    with that id (a part counter that restarts, a retest) must get its own image decided, not that one."""
    import hashlib
    import time

    stale, fresh = images[0], next(i for i in images if i.read_bytes() != images[0].read_bytes())
    drop_image(stale, station.images, "9000")
    time.sleep(1.1)  # the station's --image-timeout-s (1 s): older than the window a camera may be early by
    plc = OpcUaPlc(station.opcua_url)
    try:
        wait_until(lambda: plc.read().ready, "TriggerReady")
        plc.trigger_part("9000")
        wait_until(lambda: (station.images / "decided" / "stale" / "9000.png").is_file(), "the stale image set aside")
        drop_image(fresh, station.images, "9000")
        seen = wait_until(lambda: (s := plc.read()).result_ready and s, "ResultReady", 10)
        plc.set(True, True)
        wait_until(lambda: plc.read().state == RELEASE, "the release")
        plc.set(False, False)
    finally:
        plc.close()
    record = next(r for r in station.handshake_records() if r.decision_id == seen.decision_id)
    assert record.part_id == "9000" and record.image_sha256 == hashlib.sha256(fresh.read_bytes()).hexdigest()


def test_a_part_id_too_long_for_a_file_name_still_takes_its_image_over_http(station, images):
    """A part id of at most 200 characters is valid (as over HTTP), but 130 accented letters are 260 bytes: no file
    can have that name, and looking for PART_ID.png raised ENAMETOOLONG on every poll, so the handshake failed
    with an internal error instead of taking the part's image over HTTP."""
    import urllib.parse
    import urllib.request

    part = "\u00e9" * 130
    plc = OpcUaPlc(station.opcua_url)
    try:
        wait_until(lambda: plc.read().ready, "TriggerReady")
        plc.trigger_part(part)
        request = urllib.request.Request(f"{station.http_url}/v1/inspect?part_id={urllib.parse.quote(part)}",
                                         data=images[0].read_bytes(), method="POST",
                                         headers={"Content-Type": "application/octet-stream"})
        with urllib.request.urlopen(request, timeout=30) as response:
            answered = json.loads(response.read())
        seen = wait_until(lambda: (s := plc.read()).result_ready and s, "ResultReady", 10)
        assert seen.error_code == 0 and seen.part_id == part and seen.decision_id == answered["decision_id"]
        plc.set(True, True)
        wait_until(lambda: plc.read().state == RELEASE, "the release")
        plc.set(False, False)
    finally:
        plc.close()
