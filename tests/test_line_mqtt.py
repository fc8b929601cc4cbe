"""The event stream and its MQTT sink, against a real mosquitto on 127.0.0.1: every decision published at least
once (exactly once after de-duplication by ``event_id``), through a broker outage and a station killed with -9;
the retained status and its last will; the cursor that makes it durable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("paho.mqtt")
from typer.testing import CliRunner  # noqa: E402

from deploy.cli import app as deploy_app  # noqa: E402
from deploy.decision_log import DecisionLog, DecisionRecord, read_records, utc_now  # noqa: E402
from deploy.line import cursor as cursor_module  # noqa: E402
from deploy.line.config import build_line_config  # noqa: E402
from deploy.line.cursor import LogCursor  # noqa: E402
from deploy.line.events import EVENT_SCHEMA, Source  # noqa: E402
from deploy.line.follower import events_of  # noqa: E402
from deploy.serve import ServeConfig, build_station  # noqa: E402
from tests.edge_bundle import make_bundle, sample_images  # noqa: E402
from tests.line_servers import Mosquitto, Subscriber, wait_until  # noqa: E402

pytestmark = pytest.mark.edge
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "b", seed=0)


@pytest.fixture(scope="module")
def image() -> bytes:
    return sample_images(1)[0].read_bytes()


@pytest.fixture
def broker(tmp_path):
    b = Mosquitto(tmp_path).start()
    yield b
    b.stop()


def _record(i: int, model: str = "m1", decision_id: str | None = "auto") -> DecisionRecord:
    return DecisionRecord(time=f"2026-12-06T10:00:{i % 60:02d}.000000+00:00", part_id=f"p{i}", image_sha256="0" * 64,
                          label="ok", confidence=0.9, probabilities={"ok": 0.9}, abstain=False, action="accept",
                          model_id=model, runtime="onnx", decision_id=f"d{i}" if decision_id == "auto" else decision_id)


# -- the cursor and the events ------------------------------------------------------------------------------------

def test_a_new_cursor_starts_at_the_end_and_reads_whole_lines_only(tmp_path):
    log = DecisionLog(tmp_path)
    log.append(_record(0))  # before the sink existed: not published
    cursor = LogCursor(tmp_path, "mqtt")
    assert cursor.read().records == []
    log.append(_record(1))
    day = next(tmp_path.glob("decisions-*.jsonl"))
    with open(day, "ab") as fh:
        fh.write(b'{"time": "2026-12-06T10:00:02')  # a record still being written
    batch = cursor.read()
    assert [r.part_id for r, _ in batch.records] == ["p1"]
    cursor.commit(batch.end)
    reopened = LogCursor(tmp_path, "mqtt")  # what a restart finds
    assert reopened.position == batch.end and reopened.read().records == []
    assert json.loads(reopened.path.read_text())["offset"] == batch.end.offset


def test_the_cursor_skips_a_line_that_does_not_parse_and_moves_to_the_next_day(tmp_path, monkeypatch):
    monkeypatch.setattr(cursor_module, "SETTLE_S", 0.0)
    (tmp_path / "decisions-2026-12-05.jsonl").write_bytes(_record(1).to_line().encode() + b"garbage\n")
    cursor = LogCursor(tmp_path, "mqtt")
    cursor.commit(cursor_module.Position("decisions-2026-12-05.jsonl", 0))
    (tmp_path / "decisions-2026-12-06.jsonl").write_bytes(_record(2).to_line().encode())
    batch = cursor.read()
    assert [r.part_id for r, _ in batch.records] == ["p1", "p2"] and batch.skipped_lines == 1
    assert batch.end.file == "decisions-2026-12-06.jsonl"


def test_a_day_file_shorter_than_the_cursor_is_read_again_from_its_start(tmp_path):
    """A log file cut or replaced under the cursor (copytruncate, a restore, a cursor edited by hand): the records
    it holds now were never published; reading past its end found nothing, for the rest of that day."""
    log = DecisionLog(tmp_path)
    log.append(_record(0))
    cursor = LogCursor(tmp_path, "mqtt")
    day = next(tmp_path.glob("decisions-*.jsonl"))
    cursor.commit(cursor_module.Position(day.name, day.stat().st_size + 1000))
    log.append(_record(1))
    batch = LogCursor(tmp_path, "mqtt").read()
    assert [r.part_id for r, _ in batch.records] == ["p0", "p1"] and batch.end.offset == day.stat().st_size


def test_a_cursor_edited_to_no_place_in_the_log_is_refused_not_followed(tmp_path):
    """A cursor whose file is not a day file of the log (or a negative offset) held the follower there for ever:
    no file after it ever came, and nothing was published again, without a word."""
    from deploy.errors import DeployError

    DecisionLog(tmp_path).append(_record(0))
    (tmp_path / "decisions-archive.jsonl").write_text("")  # not a day file: a new cursor never starts there
    cursor = LogCursor(tmp_path, "mqtt")
    assert cursor.position.file == "decisions-2026-12-06.jsonl"
    for file, offset in (("x.jsonl", 0), ("decisions-2026-12-06.jsonl.bak", 0), ("decisions-2026-12-06.jsonl", -5)):
        cursor.commit(cursor_module.Position(file, offset))
        with pytest.raises(DeployError, match="not a line cursor"):
            LogCursor(tmp_path, "mqtt")


def test_a_spoilt_cursor_does_not_keep_the_station_from_starting(bundle, image, tmp_path, capsys):
    """A cursor emptied by hand made deploy serve --publish refuse to start: a sink's trouble stopped the line. The
    station now starts and decides; publishing waits (said on stderr) until the cursor is mended."""
    from tests.line_servers import free_port

    log_dir = tmp_path / "log"
    log_dir.mkdir()
    (log_dir / ".line-cursor-mqtt.json").write_text("")
    station = _station(bundle, log_dir, free_port())
    try:
        answered = _inspect(station, image, "spoilt-1")
    finally:
        station.stop()
    assert [r.decision_id for r in read_records([log_dir]).records] == [answered["decision_id"]]
    assert "not a line cursor" in capsys.readouterr().err
    assert (log_dir / ".line-cursor-mqtt.json").read_text() == ""  # left for the operator to mend, not replaced


def test_an_absent_broker_is_said_on_stderr_not_kept_quiet(tmp_path):
    """A broker that is not there (a wrong port in --publish) kept every batch unacknowledged without a word: the
    operator learnt nothing while the backlog grew. One line (at most one every 30 s) says so."""
    from deploy.line.follower import StationStatus
    from deploy.line.mqtt import start_mqtt_follower
    from tests.line_servers import free_port

    lines: list[str] = []
    url = f"mqtt://127.0.0.1:{free_port()}/absent"
    follower = start_mqtt_follower(tmp_path, build_line_config(url, station_id="st"), Source("st", None),
                                   lambda: StationStatus(True, "m1"), err=lines.append)
    try:
        DecisionLog(tmp_path).append(_record(1))
        line = wait_until(lambda: lines and lines[0], "an error line", 10)
        assert line.startswith("# line mqtt:") and "not connected to the broker at mqtt://127.0.0.1:" in line, line
        assert follower.delivered == 0 and follower.failures >= 1
    finally:
        follower.stop()


def test_events_carry_the_schema_and_a_model_change_in_order(tmp_path):
    records = [(_record(1, "m1"), "f:0"), (_record(2, "m2"), "f:10"), (_record(3, "m2", decision_id=None), "f:20")]
    batch = cursor_module.Batch(records, cursor_module.Position("f", 30))
    events = events_of(batch, "m1", Source("st1", "line7"))
    assert [e["event"] for e in events] == ["decision", "model", "decision", "decision"]
    first = events[0]
    assert first["schema"] == EVENT_SCHEMA and first["station"] == "st1" and first["line"] == "line7"
    assert first["event_id"] == "d1" and first["decision"]["part_id"] == "p1" and first["decision"]["action"] == "accept"
    assert events[1]["model_id"] == "m2" and events[1]["previous_model_id"] == "m1"
    assert len(events[3]["event_id"]) == 32  # no decision_id in the record: one from its place in the log
    assert events_of(batch, "m1", Source("st1", "line7"))[3]["event_id"] == events[3]["event_id"]


# -- a station publishing -------------------------------------------------------------------------------------------

def _station(bundle: Path, log_dir: Path, port: int, prefix: str = "plant/line7"):
    line = build_line_config(f"mqtt://127.0.0.1:{port}/{prefix}", station_id="st1")
    return build_station(ServeConfig(bundle=bundle, log_dir=log_dir, line=line), port=0).start()


def _inspect(station, image: bytes, part_id: str) -> dict:
    import http.client

    host, port = station.sock.getsockname()[:2]
    conn = http.client.HTTPConnection(host, port, timeout=20)
    conn.request("POST", f"/v1/inspect?part_id={part_id}", body=image, headers={"Content-Type": "image/png"})
    response = conn.getresponse()
    body = json.loads(response.read())
    conn.close()
    assert response.status == 200, body
    return body


def test_every_decision_is_published_with_a_retained_status_through_a_broker_outage(bundle, image, broker, tmp_path):
    sub = Subscriber(broker.port, "plant/line7", client_id="sub-outage")
    station = _station(bundle, tmp_path / "log", broker.port)
    try:
        status = wait_until(lambda: sub.of("status"), "the station's status")[-1]
        assert status["state"] == "online" and status["ready"] is True and status["station"] == "st1"
        answered = [_inspect(station, image, f"a{i}")["decision_id"] for i in range(15)]
        wait_until(lambda: set(answered) <= set(sub.decision_ids()), "the first decisions on the broker")
        broker.stop()
        started = time.monotonic()
        answered += [_inspect(station, image, f"b{i}")["decision_id"] for i in range(15)]  # the broker is down
        assert time.monotonic() - started < 10  # inspections do not wait for the broker
        time.sleep(1.0)
        broker.start()
        answered += [_inspect(station, image, f"c{i}")["decision_id"] for i in range(15)]
        wait_until(lambda: set(answered) <= set(sub.decision_ids()), "every decision after the outage", 60)
        received = sub.of("decision")
        assert len({e["event_id"] for e in received}) == 45  # exactly the answered ones, after de-duplication
        by_id = {e["event_id"]: e for e in received}
        assert by_id[answered[0]]["decision"]["part_id"] == "a0" and by_id[answered[-1]]["decision"]["part_id"] == "c14"
        logged = {r.decision_id for r in read_records([tmp_path / "log"]).records}
        assert logged == set(answered)
    finally:
        station.stop()
    wait_until(lambda: sub.of("status") and sub.of("status")[-1]["state"] == "offline", "the offline status")
    late = Subscriber(broker.port, "plant/line7")  # a subscriber that comes later gets the retained status
    try:
        assert wait_until(lambda: late.of("status"), "the retained status")[-1]["state"] == "offline"
    finally:
        late.close()
        sub.close()


def test_after_kill_9_the_cursor_resumes_and_no_answered_decision_is_missing(bundle, image, broker, tmp_path):
    sub = Subscriber(broker.port, "kill/line", client_id="sub-kill")
    log_dir = tmp_path / "log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    answered: list[str] = []

    def start_station() -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-m", "deploy", "serve", str(bundle), "--port", "0", "--log-dir",
                                    str(log_dir), "--runtime", "onnx", "--publish",
                                    f"mqtt://127.0.0.1:{broker.port}/kill/line"], env=env, stderr=subprocess.PIPE,
                                   text=True)
        for line in process.stderr:
            if line.startswith("# deploy serve: http://"):
                process.port = int(line.split()[3].rsplit(":", 1)[1])
                return process
        raise AssertionError("the station did not start")

    class Remote:
        def __init__(self, port: int) -> None:
            self.sock = type("S", (), {"getsockname": lambda s: ("127.0.0.1", port)})()

    broker.stop()  # nothing the first station answers can be delivered before it is killed
    first = start_station()
    try:
        answered += [_inspect(Remote(first.port), image, f"k{i}")["decision_id"] for i in range(25)]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    cursor = json.loads((log_dir / ".line-cursor-mqtt.json").read_text())
    assert cursor["offset"] == 0  # all 25 still behind the cursor, on disk in the log
    broker.start()
    second = start_station()
    try:
        answered += [_inspect(Remote(second.port), image, f"r{i}")["decision_id"] for i in range(5)]
        wait_until(lambda: set(answered) <= set(sub.decision_ids()), "every answered decision after the restart", 60)
        assert len(set(sub.decision_ids())) == 30
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(20)
        sub.close()


def test_publish_options_fail_in_one_line(bundle, tmp_path):
    runner = CliRunner()
    cases = [(["--publish", "mqtt://user:secret@127.0.0.1:1883/line"], "no user name or password in the URL"),
             (["--publish", "mqtt://127.0.0.1:1883/"], "needs a host and a topic prefix"),
             (["--publish", "http://127.0.0.1/line"], "give mqtt://HOST:1883/TOPIC/PREFIX"),
             (["--publish", "mqtt://127.0.0.1:1883/line", "--no-log"], "cannot run with --no-log"),
             (["--publish-credentials", str(tmp_path / "missing")], "cannot read it")]
    for args, message in cases:
        result = runner.invoke(deploy_app, ["serve", str(bundle), "--port", "0", "--log-dir", str(tmp_path / "l"), *args])
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output and "Traceback" not in result.output, result.output


def test_an_unreadable_publish_ca_fails_at_start_in_one_line(bundle, tmp_path):
    """A missing or garbled --publish-ca let the station start; its publisher process then died on it with a
    traceback at every restart (1 s doubling to 30 s, for ever) and nothing was published."""
    from deploy.errors import DeployError

    garbled = tmp_path / "ca.pem"
    garbled.write_text("not a certificate\n")
    for ca in (tmp_path / "missing.pem", garbled):
        with pytest.raises(DeployError, match="--publish-ca"):
            build_line_config("mqtts://127.0.0.1:8883/line", publish_ca=ca)
        result = CliRunner().invoke(deploy_app, ["serve", str(bundle), "--port", "0", "--log-dir", str(tmp_path / "l"),
                                                 "--publish", "mqtts://127.0.0.1:8883/line", "--publish-ca", str(ca)])
        assert result.exit_code == 1 and "error: --publish-ca" in result.output, result.output


def test_watch_and_monitor_publish_decisions_and_the_drift_verdict(bundle, broker, tmp_path):
    """``deploy watch --publish`` (every decision of the folder, delivered before ``--once`` exits) and ``deploy
    monitor --publish`` (the verdict as a drift event)."""
    sub = Subscriber(broker.port, "watch/line", client_id="sub-watch")
    in_dir, done = tmp_path / "in", tmp_path / "done"
    in_dir.mkdir()
    for image in sample_images(2):
        (in_dir / image.name).write_bytes(image.read_bytes())
    url = f"mqtt://127.0.0.1:{broker.port}/watch/line"
    try:
        result = CliRunner().invoke(deploy_app, ["watch", str(in_dir), "--bundle", str(bundle), "--done", str(done),
                                                 "--once", "--settle-ms", "0", "--publish", url, "--station-id", "w1"])
        assert result.exit_code == 0, result.output
        logged = [r.decision_id for r in read_records([done / "decisions"]).records]
        assert len(logged) == 6
        assert set(logged) <= set(sub.decision_ids())  # already delivered when --once returned
        assert all(e["station"] == "w1" and e["decision"]["source"] == "watch" for e in sub.of("decision"))
        result = CliRunner().invoke(deploy_app, ["monitor", str(bundle), str(done / "decisions"), "--out",
                                                 str(tmp_path / "monitor"), "--publish", url])
        assert result.exit_code in (0, 2), result.output
        drift = wait_until(lambda: sub.of("drift"), "the drift verdict")[-1]
        written = json.loads((tmp_path / "monitor" / "drift.json").read_text())
        assert drift["verdict"] == written["status"] and drift["line"] == "station_line"
    finally:
        sub.close()


def test_a_killed_publisher_leaves_its_last_will_and_is_started_again(bundle, image, broker, tmp_path):
    sub = Subscriber(broker.port, "will/line", client_id="sub-will")
    station = _station(bundle, tmp_path / "log", broker.port, prefix="will/line")
    try:
        wait_until(lambda: sub.of("status") and sub.of("status")[-1]["state"] == "online", "online")
        publisher = station.app.state.line.follower
        publisher.proc.send_signal(signal.SIGKILL)  # the sink's process dies without a goodbye
        wait_until(lambda: sub.of("status")[-1]["state"] == "offline", "the last will", 10)
        answered = [_inspect(station, image, f"w{i}")["decision_id"] for i in range(5)]  # the station keeps deciding
        wait_until(lambda: sub.of("status")[-1]["state"] == "online", "online again after the restart", 20)
        wait_until(lambda: set(answered) <= set(sub.decision_ids()), "the decisions made meanwhile")
        assert publisher.restarts == 1
    finally:
        station.stop()
        sub.close()


def test_credentials_come_from_a_file(bundle, image, tmp_path):
    import shutil

    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd is not installed (it comes with mosquitto)")
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwords), "station", "pa55-word"], check=True)
    passwords.chmod(0o600)
    (tmp_path / "broker").mkdir()
    broker = Mosquitto(tmp_path / "broker", password_file=passwords).start()
    credentials = tmp_path / "mqtt-credentials"
    credentials.write_text("station\npa55-word\n")
    sub = Subscriber(broker.port, "auth/line", credentials=("station", "pa55-word"))
    line = build_line_config(f"mqtt://127.0.0.1:{broker.port}/auth/line", publish_credentials=credentials)
    station = build_station(ServeConfig(bundle=bundle, log_dir=tmp_path / "log", line=line), port=0).start()
    try:
        ident = _inspect(station, image, "auth1")["decision_id"]
        wait_until(lambda: ident in sub.decision_ids(), "the decision through an authenticated session")
    finally:
        station.stop()
        sub.close()
        broker.stop()


def test_two_publishers_of_one_station_do_not_take_each_others_session(broker, tmp_path):
    """``deploy serve`` and ``deploy watch`` on one host both publish as the host's name by default: with one MQTT
    client id they took the broker's session from each other at every reconnect, and each takeover published the
    other's last will: the station's retained status flapped to offline while both were running."""
    import dataclasses

    from deploy.line.follower import StationStatus
    from deploy.line.mqtt import start_mqtt_follower

    sub = Subscriber(broker.port, "two", client_id="sub-two")
    followers, logs = [], []
    try:
        for name in ("serve", "watch"):
            folder = tmp_path / name
            folder.mkdir()
            config = build_line_config(f"mqtt://127.0.0.1:{broker.port}/two/{name}", station_id="host1")
            followers.append(start_mqtt_follower(folder, config, Source("host1", None),
                                                 lambda: StationStatus(True, "m1")))
            logs.append(DecisionLog(folder, durable=False))
        wait_until(lambda: len(sub.of("status")) >= 2, "both online")
        ids = []
        for i in range(20):  # the two reconnect with back-off from 1 s: 2 s is room for takeovers
            for k, log in enumerate(logs):
                record = _record(i, decision_id=f"{k}-{i}")
                log.append(dataclasses.replace(record, time=utc_now().isoformat()))
                ids.append(record.decision_id)
            time.sleep(0.1)
        wait_until(lambda: set(ids) <= set(sub.decision_ids()), "every decision of both")
        assert [m["state"] for m in sub.of("status")].count("offline") == 0, sub.of("status")
    finally:
        for follower in followers:
            follower.stop()
        sub.close()
