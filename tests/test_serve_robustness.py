"""``deploy serve`` against what an integrator's attack suite sends (issue 27): a real uvicorn server on
127.0.0.1 in a thread, real sockets, bounded loops, and assertions on the answers' values. Each test names
what went wrong before; ``docs/station.md`` ("What the station refuses, and how") lists the same cases."""

from __future__ import annotations

import http.client
import json
import socket
import struct
import time
import urllib.parse
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("fastapi")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from deploy.cli import app as deploy_app  # noqa: E402
from deploy.decision_log import read_records  # noqa: E402
from deploy.errors import DeployError  # noqa: E402
from deploy.manifest import model_id  # noqa: E402
from deploy.serve import ServeConfig, build_station  # noqa: E402
from tests.edge_bundle import make_bundle, sample_images  # noqa: E402
from tests.test_decision_log import FullDisk, read_only  # noqa: E402
from tests.test_intake import SLONG, tiff_bytes  # noqa: E402
from tests.test_serve import LIVENESS_S, Station, _wait_until  # noqa: E402

pytestmark = pytest.mark.edge


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bundles")
    return make_bundle(root / "a", seed=0), make_bundle(root / "b", seed=1)


@pytest.fixture(scope="module")
def station(bundles, tmp_path_factory):
    s = Station(bundles[0], tmp_path_factory.mktemp("log"), read_timeout_s=1.0)
    yield s
    s.stop()


def _call(s: Station, method: str, path: str, body: bytes | None = None,
          headers: dict | None = None) -> tuple[int, dict, dict]:
    """(status, headers, JSON body) on a fresh connection."""
    conn = http.client.HTTPConnection(s.host, s.port, timeout=LIVENESS_S)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(response.read())
    finally:
        conn.close()


def _metrics(s: Station) -> dict[str, dict]:
    text = s.request("GET", "/metrics")[1]["text"]
    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(families: dict, name: str, sample: str | None = None, **labels: str) -> float | None:
    for x in families[name].samples:
        if x.name == (sample or name) and all(x.labels.get(k) == v for k, v in labels.items()):
            return x.value
    return None


def _raw(s: Station, data: bytes, send_slowly: list[bytes] | None = None, pause_s: float = 0.1) -> tuple[bytes, float]:
    """Send ``data`` (then each of ``send_slowly`` after a pause, while the server keeps the connection) and read
    until the server closes it; (what came back, seconds until it closed). Bounded by LIVENESS_S."""
    started = time.monotonic()
    answer = b""
    with socket.create_connection((s.host, s.port), timeout=LIVENESS_S) as sock:
        sock.sendall(data)
        for piece in send_slowly or []:
            time.sleep(pause_s)
            try:
                sock.sendall(piece)
            except OSError:  # the server closed the connection: what it said is in the buffer
                break
        sock.settimeout(LIVENESS_S)
        while True:
            try:
                part = sock.recv(65536)
            except ConnectionResetError:
                break
            if not part:
                break
            answer += part
    return answer, time.monotonic() - started


def _json_answer(raw: bytes) -> tuple[int, dict, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)


# -- finding 4: the decision log on a full or read-only disk --------------------------------------------------
def test_a_full_disk_answers_503_leaves_no_fragment_and_loses_no_answered_decision(bundles, tmp_path, monkeypatch):
    """A short write left a fragment; when space came back the next answered decision (200) was glued to it and
    skipped by every reader. And a part that could not be logged was answered 500 while /v1/ready said ready.
    Now: 503 decision_log_unavailable with Retry-After and no decision, not ready, counted in /metrics; the
    fragment is cut at once; once space returns the station is ready again and every 200 is in the log."""
    log_dir = tmp_path / "log"
    s = Station(bundles[0], log_dir, fsync_interval_s=0.05)
    disk = FullDisk(monkeypatch, log_dir)
    part = sample_images(1)[0].read_bytes()
    answered: dict[str, str] = {}
    try:
        for i in range(3):
            status, got = s.inspect(part, part_id=f"before-{i}")
            assert status == 200
            answered[got["part_id"]] = got["decision_id"]
        disk.full = True
        for i in range(2):  # the first stops half-way through its record, the second writes nothing
            status, headers, got = _call(s, "POST", f"/v1/inspect?part_id=full-{i}", part, {"Content-Type": "image/png"})
            assert (status, got["error"], headers["retry-after"]) == (503, "decision_log_unavailable", "5")
            assert "label" not in got and "No space left on device" in got["message"]
        status, headers, ready = _call(s, "GET", "/v1/ready")
        assert (status, ready["ready"], headers["retry-after"]) == (503, False, "5")
        assert ready["reason"].startswith("decision_log_unavailable: ") and "No space left on device" in ready["reason"]
        families = _metrics(s)
        assert _value(families, "inspect_decision_log_failures", "inspect_decision_log_failures_total") == 2
        assert _value(families, "inspect_decision_log_available") == 0
        assert _value(families, "inspect_errors", "inspect_errors_total", kind="decision_log_unavailable") == 2
        log_file = next(log_dir.glob("decisions-*.jsonl"))
        assert log_file.read_bytes().endswith(b"\n") and b"full-0" not in log_file.read_bytes()  # no fragment
        disk.full = False  # space freed: readiness comes back by itself (no part has to be refused first)
        _wait_until(lambda: _call(s, "GET", "/v1/ready")[0] == 200, "the station to be ready again")
        status, got = s.inspect(part, part_id="after-0")
        assert status == 200
        answered[got["part_id"]] = got["decision_id"]
        assert _value(_metrics(s), "inspect_decision_log_available") == 1
    finally:
        s.stop()
    read = read_records([log_dir])
    assert {r.part_id: r.decision_id for r in read.records} == answered and read.skipped_lines == 0


def test_a_read_only_log_folder_is_refused_before_the_model_loads(bundles, tmp_path, monkeypatch):
    """The station started, said ``ready: true`` and answered every part 500."""
    folder = read_only(tmp_path / "ro", monkeypatch)
    try:
        with pytest.raises(DeployError, match=rf"^--log-dir {folder}: cannot write the decision log there \("):
            build_station(ServeConfig(bundle=bundles[0], log_dir=folder), port=0)
    finally:
        folder.chmod(0o755)


def test_a_read_only_keep_images_folder_is_one_line_before_the_model_loads(bundles, tmp_path, monkeypatch):
    """``--keep-images`` on a read-only folder gave a traceback at start; now one line, like ``--log-dir``."""
    import deploy.serve.station as runner

    def loaded(*args, **kwargs):
        raise RuntimeError("the model loaded before --keep-images was checked")

    monkeypatch.setattr(runner, "load_model", loaded)
    folder, a_file = read_only(tmp_path / "kept", monkeypatch), tmp_path / "a-file"
    a_file.write_text("x")
    try:
        for given, why in ((folder, "cannot write kept images there (Permission denied); fix the folder's "
                                    "permissions, or give another --keep-images"),
                           (a_file, "is a file, not a folder; give the folder kept images go to")):
            result = CliRunner().invoke(deploy_app, ["serve", str(bundles[0]), "--port", "0", "--log-dir",
                                                     str(tmp_path / "log"), "--keep-images", str(given)])
            assert (result.exit_code, result.output.strip()) == (1, f"error: --keep-images {given}: {why}")
    finally:
        folder.chmod(0o755)


# -- findings 5 and 6: what one request may cost -----------------------------------------------------------------
def test_max_pixels_bounds_the_decoded_bytes_of_a_request(bundles, tmp_path):
    """A 194 KB 16-bit RGBA PNG (25 MP) took 955 MB: the cap counted pixels, not bytes. --max-pixels N allows at
    most 3 N bytes decoded, read from the header before decoding."""
    s = Station(bundles[0], tmp_path / "log", max_pixels=20_000)
    rgba16 = (np.indices((80, 100)).sum(0)[:, :, None] * np.array([300, 200, 100, 65])).astype(np.uint16)
    try:
        status, _, got = _call(s, "POST", "/v1/inspect", cv2.imencode(".png", rgba16)[1].tobytes(),
                               {"Content-Type": "image/png"})
        assert (status, got["error"]) == (413, "too_large")
        assert got["message"].startswith("body: a 100x80 16-bit 4-channel PNG takes 0 MB decoded")
        status, _, got = _call(s, "POST", "/v1/inspect", cv2.imencode(".png", (rgba16[:, :, 0] // 257).astype(np.uint8))[1]
                               .tobytes(), {"Content-Type": "image/png"})
        assert status == 200 and got["label"]  # 8 000 bytes decoded: within 60 000
    finally:
        s.stop()
    for command in ("serve", "watch"):
        assert "--max-pixels" in CliRunner().invoke(deploy_app, [command, "--help"]).output


def test_a_tiff_whose_width_is_typed_slong_is_refused_413(station):
    """Width typed SLONG skipped the size check: a 256 MP TIFF decoded despite the cap."""
    bomb = tiff_bytes(16_000, 16_000, pixels=b"\0" * 4096, width_type=SLONG)
    status, _, got = _call(station, "POST", "/v1/inspect", bomb, {"Content-Type": "image/tiff"})
    assert (status, got["error"]) == (413, "too_large")
    assert got["message"].startswith("body: a 16000x16000 TIFF (256 MP)")


# -- finding 8: the lower items ------------------------------------------------------------------------------------
def test_headers_that_trickle_in_are_answered_408_and_an_idle_connection_is_closed(station):
    """No header or idle timeout: a client sending its headers a line every 0.1 s kept the socket 40 s+, and a
    connection that sent nothing was never closed. Now both end after --read-timeout-s (1 s here)."""
    answer, took = _raw(station, b"POST /v1/inspect HTTP/1.1\r\nHost: t\r\n",
                        send_slowly=[b"X-Slow: %d\r\n" % i for i in range(100)])
    status, headers, body = _json_answer(answer)
    assert (status, headers["content-type"], body["error"]) == (408, "application/json", "timeout")
    assert body["message"].startswith("the request headers did not arrive within 1 s (")
    assert took < 10  # 100 lines at 0.1 s would have taken 10 s
    idle, took = _raw(station, b"")
    assert idle == b"" and took < LIVENESS_S
    assert station.inspect(sample_images(1)[0].read_bytes())[0] == 200


def test_protocol_errors_are_one_json_line(station):
    """uvicorn answered a request that does not parse in plain text; over-long headers were kept in memory."""
    status, headers, body = _json_answer(_raw(station, b"GARBAGE / NOT-HTTP\r\n\r\n")[0])
    assert (status, headers["content-type"], body["error"]) == (400, "application/json", "bad_request")
    assert body["message"] == "invalid HTTP request: the request line or a header does not parse"
    huge = b"GET /v1/health HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"x" * 1000) for i in range(80))
    status, headers, body = _json_answer(_raw(station, huge)[0])
    assert headers["content-type"] == "application/json"
    assert (status, body["error"]) in ((431, "headers_too_large"), (400, "bad_request"))  # httptools, h11


def test_headers_over_64_kb_in_one_write_are_431(station):
    """The connection bounds headers that arrive in pieces; 70 KB sent in one write arrived whole and got 200."""
    request = (b"GET /v1/health HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Request-Id: big-1\r\nX-Pad: "
               + b"x" * 70_000 + b"\r\n\r\n")
    status, headers, body = _json_answer(_raw(station, request)[0])
    assert (status, body["error"], headers["x-request-id"]) == (431, "headers_too_large", "big-1")
    assert body["message"] == "the request line and headers are over 65536 bytes"
    small = b"GET /v1/health HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Pad: " + b"x" * 60_000 + b"\r\n\r\n"
    assert _json_answer(_raw(station, small)[0])[0] == 200


def test_every_503_says_when_to_retry(station):
    response = station.station.app.state.station.error_response("overloaded", "queue full; retry shortly", 503)
    assert response.status_code == 503 and response.headers["retry-after"] == "1"


def test_a_png_with_a_trailer_after_iend_is_decided_and_a_cut_jpeg_with_an_end_marker_is_refused(station):
    png = sample_images(1)[0].read_bytes()
    plain = station.inspect(png)[1]
    status, got = station.inspect(png + b"camera trailer\n")  # was 400 truncated_image
    assert status == 200 and (got["label"], got["confidence"]) == (plain["label"], plain["confidence"])
    gray = np.clip(np.indices((240, 320)).sum(0) * 0.4 + np.random.default_rng(0).normal(0, 12, (240, 320)), 0, 255)
    jpeg = cv2.imencode(".jpg", gray.astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    status, got = station.inspect(jpeg[: len(jpeg) // 2] + b"\xff\xd9", "image/jpeg")  # was decided, half grey
    assert (status, got["error"]) == (400, "truncated_image")


@pytest.mark.parametrize("char", ["\u2028", "\u0085", "\u202e", "\u2066", "\u200b"],
                         ids=["U+2028", "U+0085", "U+202E", "U+2066", "U+200B"])
def test_part_ids_with_control_line_separator_or_bidi_characters_are_one_400(station, char):
    """They were accepted, and forged or hid text in logs, CSV files and screens."""
    for query in (True, False):
        path = "/v1/inspect" + (f"?part_id={urllib.parse.quote('part' + char + '7')}" if query else "")
        headers = {"Content-Type": "image/png"} if query else \
            {"Content-Type": "image/png", "X-Part-Id": ("part" + char + "7").encode("utf-8")}
        status, _, got = _call(station, "POST", path, sample_images(1)[0].read_bytes(), headers)
        assert (status, got["error"]) == (400, "bad_part_id")
        assert got["message"].startswith(f"part_id holds U+{ord(char):04X} (")


def test_a_utf8_part_id_arrives_as_sent_and_bytes_that_are_not_utf8_are_refused(station):
    """UTF-8 in X-Part-Id arrived as mojibake (Prüfteil -> PrÃ¼fteil) in the answer and the log."""
    png = sample_images(1)[0].read_bytes()
    status, _, got = _call(station, "POST", "/v1/inspect", png,
                           {"Content-Type": "image/png", "X-Part-Id": "Prüfteil-7 検査".encode("utf-8")})
    assert status == 200 and got["part_id"] == "Prüfteil-7 検査"
    status, _, got = _call(station, "POST", "/v1/inspect?part_id=Pr%C3%BCfteil-8", png, {"Content-Type": "image/png"})
    assert status == 200 and got["part_id"] == "Prüfteil-8"
    assert {"Prüfteil-7 検査", "Prüfteil-8"} <= {r.part_id for r in read_records([station.log_dir]).records}
    for path, headers in (("/v1/inspect", {"X-Part-Id": b"Pr\xfcfteil"}), ("/v1/inspect?part_id=Pr%FCfteil", {})):
        status, _, got = _call(station, "POST", path, png, {"Content-Type": "image/png", **headers})
        assert (status, got["error"]) == (400, "bad_part_id") and "UTF-8" in got["message"]


# -- /metrics ------------------------------------------------------------------------------------------------------
def test_metrics_show_memory_queue_depth_and_keep_only_two_models_labels(bundles, tmp_path):
    """/metrics lacked process memory, queue depth and log-failure counters, and every model id ever served kept
    its label set. A reload keeps the replaced model's series (its last counts stay scrapeable) and removes the
    ones before it."""
    a, b = bundles
    c = make_bundle(a.parent / f"c-{tmp_path.name}", seed=1, threshold=0.7)  # inside the reload root
    s = Station(a, tmp_path / "log")
    part = sample_images(1)[0].read_bytes()
    try:
        served = []
        for bundle in (a, b, c):
            if bundle != a:
                assert s.request("POST", "/v1/reload", json.dumps({"bundle": str(bundle)}).encode(),
                                 {"Content-Type": "application/json"})[0] == 200
            assert s.inspect(part)[0] == 200
            served.append(model_id(bundle))
        families = _metrics(s)
    finally:
        s.stop()
    assert _value(families, "process_resident_memory_bytes") > 10e6
    assert _value(families, "inspect_peak_resident_memory_bytes") >= _value(families, "process_resident_memory_bytes") * 0.5
    assert _value(families, "inspect_queue_depth") == 0
    assert _value(families, "inspect_decision_log_failures", "inspect_decision_log_failures_total") == 0
    assert _value(families, "inspect_decision_log_available") == 1
    decided = {x.labels["model_id"] for x in families["inspect_decisions"].samples}
    info = {x.labels["model_id"]: x.value for x in families["inspect_model_info"].samples}
    ratios = {x.labels["model_id"] for x in families["inspect_abstain_ratio"].samples}
    assert decided == ratios == set(info) == set(served[1:])  # the first model's series are gone
    assert info == {served[1]: 0.0, served[2]: 1.0}
