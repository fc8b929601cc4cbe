"""``deploy serve``: a real uvicorn server on 127.0.0.1 (in a thread, or a torch-blocked subprocess),
real HTTP requests, a real bundle (tests/edge_bundle.py) and the real decision log."""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("fastapi")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from deploy.serve.batching import MicroBatcher  # noqa: E402
from deploy.cli import app as deploy_app  # noqa: E402
from deploy.decision_log import read_records  # noqa: E402
from deploy.manifest import model_id  # noqa: E402
from deploy.serve import ServeConfig, build_station  # noqa: E402
from tests.edge_bundle import BLOCK_HEAVY, make_bundle, sample_images  # noqa: E402

pytestmark = pytest.mark.edge

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-6  # same decode, preprocessing and runtime; only batch arithmetic may differ
LIVENESS_S = 60  # how long a test waits for something that must happen; only a hang takes this long
MAX_BYTES = 300_000
JSON = {"Content-Type": "application/json"}  # a reload is JSON (415 otherwise: a web page could send text/plain)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bundles")
    return make_bundle(root / "a", seed=0), make_bundle(root / "b", seed=1)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """Sample parts in every format the station takes: PNG 8 and 16 bit, colour JPEG, BMP, TIFF."""
    out = tmp_path_factory.mktemp("formats")
    paths = sample_images(4)
    gray = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in paths[:4]]
    cv2.imwrite(str(out / "part16.png"), gray[0].astype(np.uint16) * 257)
    cv2.imwrite(str(out / "colour.jpg"), cv2.merge([gray[1], gray[1] // 2, gray[1]]), [cv2.IMWRITE_JPEG_QUALITY, 95])
    cv2.imwrite(str(out / "part.bmp"), gray[2])
    cv2.imwrite(str(out / "part.tif"), gray[3])
    return paths + [out / "part16.png", out / "colour.jpg", out / "part.bmp", out / "part.tif"]


class Station:
    """A started server plus a small HTTP client (one keep-alive connection per thread)."""

    def __init__(self, bundle: Path, log_dir: Path, **config) -> None:
        self.station = build_station(ServeConfig(bundle=bundle, log_dir=log_dir, **config), port=0).start()
        self.host, self.port = self.station.sock.getsockname()[:2]
        self.log_dir = log_dir
        self._local = threading.local()

    def connection(self) -> http.client.HTTPConnection:
        if getattr(self._local, "conn", None) is None:
            self._local.conn = http.client.HTTPConnection(self.host, self.port, timeout=20)
        return self._local.conn

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
        reused = getattr(self._local, "conn", None) is not None
        conn = self.connection()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            raw = response.read()
        except (ConnectionError, http.client.HTTPException):
            self._local.conn = None  # the server closed the connection after an error: open a new one
            if reused:  # an idle keep-alive connection the station closed (its idle timeout): retry once, as clients do
                return self.request(method, path, body, headers)
            raise
        if response.getheader("connection", "").lower() == "close":
            conn.close()
            self._local.conn = None
        text = raw.decode("utf-8")
        return response.status, (json.loads(text) if response.getheader("content-type", "").startswith("application/json") else {"text": text})

    def inspect(self, data: bytes, content_type: str = "image/png", part_id: str | None = None) -> tuple[int, dict]:
        path = "/v1/inspect" + (f"?part_id={part_id}" if part_id else "")
        return self.request("POST", path, data, {"Content-Type": content_type})

    def stop(self) -> None:
        self.station.stop()


@pytest.fixture(scope="module")
def station(bundles, tmp_path_factory):
    s = Station(bundles[0], tmp_path_factory.mktemp("log"), max_bytes=MAX_BYTES)
    yield s
    s.stop()


def _multipart(data: bytes, part_id: str, filename: str = "part.png", content_type: str = "image/png") -> tuple[bytes, str]:
    boundary = "----station-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"part_id\"\r\n\r\n{part_id}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _deploy_predict(bundle: Path, paths: list[Path]) -> list[dict]:
    result = CliRunner().invoke(deploy_app, ["predict", str(bundle), *map(str, paths), "--runtime", "onnx"])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_decisions_over_http_equal_deploy_predict(station, bundles, images):
    expected = _deploy_predict(bundles[0], images)
    assert len(expected) == len(images) == 16
    assert {e["action"] for e in expected} >= {"accept", "reject"}  # the check covers more than one action
    answers = []
    for i, (path, want) in enumerate(zip(images, expected)):
        data = path.read_bytes()
        if i % 2:
            body, content_type = _multipart(data, f"mp-{i}", path.name, "application/octet-stream")
            status, got = station.request("POST", "/v1/inspect", body, {"Content-Type": content_type})
        else:
            status, got = station.inspect(data, "application/octet-stream", part_id=f"raw-{i}")
        assert status == 200, got
        answers.append(got)
        assert got["part_id"] == (f"mp-{i}" if i % 2 else f"raw-{i}")
        assert (got["label"], got["abstain"], got["action"], got["runtime"]) == \
            (want["label"], want["abstain"], want["action"], want["runtime"]), path.name
        assert abs(got["confidence"] - want["confidence"]) <= TOLERANCE
        assert max(abs(got["probabilities"][c] - p) for c, p in want["probabilities"].items()) <= TOLERANCE
        assert got["model_id"] == model_id(bundles[0])
        assert set(got["timings_ms"]) == {"decode", "preprocess", "queue", "infer", "total"}
        assert got["timings_ms"]["total"] >= got["timings_ms"]["infer"] > 0
    logged = {r.part_id: r for r in read_records([station.log_dir]).records if r.part_id and r.part_id[:3] in ("raw", "mp-")}
    assert len(logged) == 16
    import hashlib

    for i, path in enumerate(images):
        record = logged[f"mp-{i}" if i % 2 else f"raw-{i}"]
        assert record.image_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert record.source == "serve" and record.label == expected[i]["label"] and record.action == expected[i]["action"]
        assert record.decision_id and record.decision_id == answers[i]["decision_id"]  # the log line of this answer
    assert len({r.decision_id for r in logged.values()}) == 16


def _bad_inputs() -> list[tuple[str, bytes, dict, int, str]]:
    png = sample_images(1)[0].read_bytes()
    ok, jpg = cv2.imencode(".jpg", cv2.imread(str(sample_images(1)[0]), cv2.IMREAD_GRAYSCALE))
    jpeg = jpg.tobytes()
    mp_no_file = (b"------b\r\nContent-Disposition: form-data; name=\"part_id\"\r\n\r\n7\r\n------b--\r\n")
    return [
        *_declared_size_bombs(jpeg),
        ("empty body", b"", {"Content-Type": "image/png"}, 400, "empty_body"),
        ("text, not an image", b"part 17 looked fine\n" * 5, {"Content-Type": "application/octet-stream"}, 400, "not_an_image"),
        ("truncated PNG", png[: len(png) // 2], {"Content-Type": "image/png"}, 400, "truncated_image"),
        ("truncated JPEG", jpeg[: len(jpeg) - 300], {"Content-Type": "image/jpeg"}, 400, "truncated_image"),
        ("PNG header, garbage after", png[:40] + os.urandom(2000) + png[-12:], {}, 400, "corrupt_image"),
        ("over --max-bytes", png + b"\0" * MAX_BYTES, {"Content-Type": "image/png"}, 413, "too_large"),
        ("a PNG declaring 100000 x 100000 px", png[:16] + (100_000).to_bytes(4, "big") * 2 + png[24:], {}, 413, "too_large"),
        ("unsupported media type", png, {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        ("a GIF", b"GIF89a" + b"\0" * 200, {}, 415, "unsupported_media_type"),
        ("multipart without a file", mp_no_file, {"Content-Type": "multipart/form-data; boundary=----b"}, 400, "no_image"),
        ("control characters in part_id", png, {"Content-Type": "image/png", "X-Part-Id": "a\tb"}, 400, "bad_part_id"),
    ]


def _declared_size_bombs(jpeg: bytes) -> list[tuple[str, bytes, dict, int, str]]:
    """Small files whose headers declare big pictures. libjpeg decodes a JPEG whose scan data is missing
    into a grey-padded picture without an error: the 2 KB JPEG declaring 30000 x 30000 px was decoded
    (1.7 GB, seconds) and *accepted* as a good part."""
    import struct

    def jpeg_of(width: int, height: int) -> bytes:
        data = bytearray(jpeg)
        sof = data.index(b"\xff\xc0")
        struct.pack_into(">HH", data, sof + 5, height, width)
        return bytes(data)

    gray = cv2.imread(str(sample_images(1)[0]), cv2.IMREAD_GRAYSCALE)
    bmp = bytearray(cv2.imencode(".bmp", gray)[1].tobytes())
    struct.pack_into("<ii", bmp, 18, 30_000, 30_000)
    tif = bytearray(cv2.imencode(".tif", gray)[1].tobytes())
    ifd = struct.unpack_from("<I", tif, 4)[0]
    for k in range(struct.unpack_from("<H", tif, ifd)[0]):
        tag, typ = struct.unpack_from("<HH", tif, ifd + 2 + 12 * k)
        if tag in (256, 257):
            struct.pack_into("<H" if typ == 3 else "<I", tif, ifd + 2 + 12 * k + 8, 30_000)
    return [
        ("a 2 KB JPEG declaring 30000 x 30000 px", jpeg_of(30_000, 30_000), {"Content-Type": "image/jpeg"}, 413, "too_large"),
        ("a 2 KB JPEG declaring 4000 x 4000 px", jpeg_of(4000, 4000), {"Content-Type": "image/jpeg"}, 400, "truncated_image"),
        ("a BMP declaring 30000 x 30000 px", bytes(bmp), {"Content-Type": "image/bmp"}, 413, "too_large"),
        ("a TIFF declaring 30000 x 30000 px", bytes(tif), {"Content-Type": "image/tiff"}, 413, "too_large"),
    ]


@pytest.mark.parametrize("case", _bad_inputs(), ids=lambda c: c[0])
def test_bad_input_answers_4xx_with_one_json_line_and_keeps_serving(station, case):
    name, body, headers, status, kind = case
    got_status, got = station.request("POST", "/v1/inspect", body, headers)
    assert (got_status, got.get("error")) == (status, kind), got
    assert "Traceback" not in got["message"] and "\n" not in got["message"]
    ok_status, ok = station.inspect(sample_images(1)[0].read_bytes())
    assert ok_status == 200 and ok["label"]


def test_a_chunked_body_over_the_limit_is_413(station):
    """No Content-Length: the limit applies while the body streams in."""
    conn = http.client.HTTPConnection(station.host, station.port, timeout=20)
    chunk = b"\0" * 65536
    conn.request("POST", "/v1/inspect", body=iter([chunk] * (MAX_BYTES // len(chunk) + 2)),
                 headers={"Content-Type": "application/octet-stream"}, encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 413 and json.loads(response.read())["error"] == "too_large"
    conn.close()


def _wait_until(condition, what: str) -> None:
    """Wait for something that must happen; only a hang reaches the deadline."""
    deadline = time.monotonic() + LIVENESS_S
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.01)


def test_a_client_that_goes_away_mid_body_is_no_server_error(station):
    """It was counted as errors{kind="internal"} with two tracebacks on stderr per request."""
    import socket

    def errors() -> dict[str, float]:
        text = station.request("GET", "/metrics")[1]["text"]
        family = {f.name: f for f in text_string_to_metric_families(text)}["inspect_errors"]
        return {x.labels["kind"]: x.value for x in family.samples if x.name == "inspect_errors_total"}

    before = errors()
    for _ in range(2):
        with socket.create_connection((station.host, station.port)) as sock:
            sock.sendall(b"POST /v1/inspect HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
                         + b"\x89PNG\r\n\x1a\n" + b"\0" * 1000)
            time.sleep(0.05)
    _wait_until(lambda: errors().get("client_disconnect", 0) - before.get("client_disconnect", 0) >= 2,
                "two client_disconnect errors")
    after = errors()
    assert after.get("client_disconnect", 0) - before.get("client_disconnect", 0) == 2
    assert after.get("internal", 0) == before.get("internal", 0) == 0
    assert station.inspect(sample_images(1)[0].read_bytes())[0] == 200
    batcher = station.station.app.state.host.current.batcher
    assert (batcher._preparing, batcher.queued) == (0, 0)


def test_head_on_the_status_routes_and_a_bounded_reload_body(station, bundles):
    for path in ("/v1/health", "/v1/ready", "/v1/model", "/metrics"):
        conn = http.client.HTTPConnection(station.host, station.port, timeout=20)
        conn.request("HEAD", path)
        response = conn.getresponse()
        assert (path, response.status, response.read()) == (path, 200, b"")  # was 405
        conn.close()
    huge = json.dumps({"bundle": "x" * 100_000}).encode()
    status, got = station.request("POST", "/v1/reload", huge, JSON)
    assert (status, got["error"]) == (413, "too_large")
    assert station.request("GET", "/v1/ready")[1]["model_id"] == model_id(bundles[0])


def test_small_bodies_declaring_many_pixels_are_not_decoded_on_the_event_loop():
    """A 16 KB PNG of zeros declares 16 MP: a quarter of a second of decoding, during which the
    event loop answered no one."""
    from deploy.serve.intake import INLINE_DECODE_BYTES, decodes_inline

    bomb = cv2.imencode(".png", np.zeros((4000, 4000), np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])[1].tobytes()
    assert len(bomb) <= INLINE_DECODE_BYTES
    assert decodes_inline(bomb) is False
    assert decodes_inline(sample_images(1)[0].read_bytes()) is True


def test_a_bundle_without_a_decision_block_keeps_its_certified_good_part_class(bundles, tmp_path):
    """Bundles verified before model.json had ``decision`` name their good-part class in
    ``operating_point``; without it every confident defect was answered ``accept``."""
    legacy = tmp_path / "legacy"
    shutil.copytree(bundles[0], legacy)
    manifest = json.loads((legacy / "model.json").read_text())
    manifest.pop("decision")
    manifest["operating_point"] = {"threshold": manifest["operating_threshold"], "ok_class": "ok"}
    (legacy / "model.json").write_text(json.dumps(manifest))
    from deploy.predictor import Predictor

    predictor = Predictor.from_bundle(legacy, "onnx")
    assert predictor.manifest.decision_rule.ok_class == "ok"
    want = {d["path"]: d["action"] for d in _deploy_predict(bundles[0], sample_images(3))}
    got = {str(p): d.action for p, d in zip(sample_images(3), predictor.predict_paths(sample_images(3)))}
    assert got == want and "reject" in got.values()


def test_health_ready_model(station, bundles):
    assert station.request("GET", "/v1/health")[1]["status"] == "alive"
    status, ready = station.request("GET", "/v1/ready")
    assert status == 200 and ready == {"ready": True, "model_id": model_id(bundles[0])}
    summary = station.request("GET", "/v1/model")[1]
    assert summary["line"] == "station_line" and summary["classes"] == ["dent", "ok", "scratch"]
    assert summary["threshold"] == 0.55 and summary["temperature"] == 1.0 and summary["runtime"] == "onnx"
    assert summary["artefacts"]["onnx"]["sha256"] == json.loads((bundles[0] / "model.json").read_text())["artefacts"]["onnx"]["sha256"]
    assert station.request("GET", "/v1/nothing")[0] == 404


def test_reload_swaps_the_model_under_load_without_a_failed_request(bundles, tmp_path):
    a, b = bundles
    broken = a.parent / f"broken-{tmp_path.name}"  # inside the reload root (the folder holding the first bundle)
    shutil.copytree(b, broken)
    data = bytearray((broken / "model.onnx").read_bytes())
    data[-20] ^= 0xFF
    (broken / "model.onnx").write_bytes(bytes(data))
    s = Station(a, tmp_path / "log", max_batch=4, max_wait_ms=2)
    payload = sample_images(1)[0].read_bytes()
    stop, results = threading.Event(), []

    def client():
        while not stop.is_set():
            t = time.perf_counter()
            status, got = s.inspect(payload)
            results.append((t, status, got.get("model_id")))

    threads = [threading.Thread(target=client) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        _wait_until(lambda: len(results) >= 10, "10 requests before the swap")  # counts, not sleeps: a busy
        status, swapped = s.request("POST", "/v1/reload", json.dumps({"bundle": str(b)}).encode(), JSON)  # machine is slow
        swapped_at = time.perf_counter()
        assert status == 200 and swapped["model_id"] == model_id(b) and swapped["previous_model_id"] == model_id(a)
        _wait_until(lambda: sum(r[0] > swapped_at for r in results) >= 10, "10 requests after the swap")
        status, failed = s.request("POST", "/v1/reload", json.dumps({"bundle": str(broken)}).encode(), JSON)
        assert status == 409 and failed["error"] == "reload_failed"
        assert "sha256" in failed["message"] and "still serving" in failed["message"]
        assert failed["model_id"] == model_id(b)
        status, _ = s.request("POST", "/v1/reload", b"not json", JSON)
        assert status == 400
        for outside in (str(tmp_path), "/etc", "/etc/passwd", str(a.parent / ".." / "elsewhere")):
            status, refused = s.request("POST", "/v1/reload", json.dumps({"bundle": outside}).encode(), JSON)
            assert status == 403 and refused["error"] == "reload_forbidden" and refused["model_id"] == model_id(b)
        answered = len(results)
        _wait_until(lambda: len(results) >= answered + 5, "5 requests after the refused reloads")
    finally:
        stop.set()
        for t in threads:
            t.join(20)
        s.stop()
    statuses = Counter(r[1] for r in results)
    assert statuses == {200: len(results)} and len(results) > 20, statuses
    ids = Counter(r[2] for r in results)
    assert ids[model_id(a)] > 0 and ids[model_id(b)] > 0 and set(ids) == {model_id(a), model_id(b)}
    # a request that started after the swap answered never got the old model
    assert all(r[2] == model_id(b) for r in results if r[0] > swapped_at)
    records = read_records([tmp_path / "log"]).records
    assert len(records) == len(results) and Counter(r.model_id for r in records) == ids


def test_a_reload_refuses_a_bundle_that_would_decide_wrongly_and_says_what_changed(bundles, tmp_path):
    """A model.json without ``decision.ok_class`` reloaded with 200 and answered a 100 % scratch ``accept``; a
    class list of 2 names for 3 outputs reloaded with 200 and failed every batch holding a part of the third
    class. Both are refused (409, the reason; the old model keeps serving); a reload that succeeds says what
    changed."""
    a = bundles[0]
    root = a.parent  # the reload root: the folder holding the first bundle
    no_ok = root / f"no-ok-{tmp_path.name}"
    shutil.copytree(a, no_ok)
    manifest = json.loads((no_ok / "model.json").read_text())
    manifest["decision"].pop("ok_class")
    (no_ok / "model.json").write_text(json.dumps(manifest))
    narrow = make_bundle(root / f"narrow-{tmp_path.name}", classes=["dent", "ok"])
    strict = make_bundle(root / f"strict-{tmp_path.name}", seed=1, threshold=0.7)
    s = Station(a, tmp_path / "log")
    scratch = sample_images(1, ("scratch",))[0].read_bytes()
    try:
        before = s.inspect(scratch)[1]
        for bundle, reason in ((no_ok, f"{no_ok / 'model.json'}: decision.ok_class: missing"),
                               (narrow, f"{narrow / 'model.onnx'}: the model gives 3 scores per image, model.json "
                                        "names 2 classes (dent, ok)")):
            status, refused = s.request("POST", "/v1/reload", json.dumps({"bundle": str(bundle)}).encode(), JSON)
            assert (status, refused["error"], refused["model_id"]) == (409, "reload_failed", model_id(a))
            assert refused["message"].startswith(f"reload of {bundle} failed, still serving {model_id(a)[:12]}: {reason}")
            assert s.inspect(scratch)[1]["action"] == before["action"]  # still the old model, deciding as before
        status, swapped = s.request("POST", "/v1/reload", json.dumps({"bundle": str(strict)}).encode(), JSON)
        assert status == 200 and swapped["model_id"] == model_id(strict) and swapped["previous_model_id"] == model_id(a)
        assert swapped["changes"] == {"model_id": {"old": model_id(a), "new": model_id(strict)},
                                      "threshold": {"old": 0.55, "new": 0.7}}
        status, again = s.request("POST", "/v1/reload", b"", JSON)  # the same folder again: nothing changed
        assert status == 200 and again["changes"] == {}
        status, back = s.request("POST", "/v1/reload", json.dumps({"bundle": str(a)}).encode(), JSON)
        assert status == 200 and back["changes"]["threshold"] == {"old": 0.7, "new": 0.55}
    finally:
        s.stop()


def test_metrics_parse_and_count_what_was_sent(bundles, tmp_path):
    s = Station(bundles[0], tmp_path / "log")
    try:
        sent = Counter()
        for path in sample_images(5):
            status, got = s.inspect(path.read_bytes())
            assert status == 200
            sent[(got["action"], got["label"])] += 1
        abstained = sum(1 for r in read_records([tmp_path / "log"]).records if r.abstain)
        for body, kind in [(b"", "empty_body"), (b"junk" * 10, "not_an_image"), (b"junk" * 10, "not_an_image")]:
            assert s.inspect(body)[1]["error"] == kind
        status, text = s.request("GET", "/metrics")
    finally:
        s.stop()
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text["text"])}
    decided = Counter()
    for sample in families["inspect_decisions"].samples:
        if sample.name == "inspect_decisions_total":
            assert sample.labels["model_id"] == model_id(bundles[0])
            decided[(sample.labels["action"], sample.labels["label"])] += sample.value
    assert decided == sent and sum(sent.values()) == 15
    errors = {s.labels["kind"]: s.value for s in families["inspect_errors"].samples if s.name == "inspect_errors_total"}
    assert errors == {"empty_body": 1.0, "not_an_image": 2.0}
    ratio = next(s.value for s in families["inspect_abstain_ratio"].samples)
    assert ratio == pytest.approx(abstained / 15)
    count = next(s.value for s in families["inspect_latency_seconds"].samples
                 if s.name == "inspect_latency_seconds_count" and s.labels["stage"] == "total")
    assert count == 15
    info = [s for s in families["inspect_model_info"].samples]
    assert [(i.labels["model_id"], i.value) for i in info] == [(model_id(bundles[0]), 1.0)]


def test_load_4_clients_x_200_mixed_requests(bundles, tmp_path):
    """The bounded load test: good and bad images from 4 concurrent clients; no 5xx, every good
    request decided and logged, every bad one a 4xx, none lost."""
    s = Station(bundles[0], tmp_path / "log", max_bytes=MAX_BYTES)
    goods = [p.read_bytes() for p in sample_images(6)]
    bads = [b"", b"not an image at all", goods[0][:500], goods[1] + b"\0" * MAX_BYTES]
    answers: list[list[tuple[bool, int]]] = [[] for _ in range(4)]

    def client(k: int) -> None:
        rng = random.Random(k)
        for i in range(200):
            good = rng.random() < 0.8
            body = goods[rng.randrange(len(goods))] if good else bads[rng.randrange(len(bads))]
            try:
                status, _ = s.inspect(body, part_id=f"c{k}-{i}")
            except (ConnectionError, http.client.HTTPException):
                status = -1
            answers[k].append((good, status))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    elapsed = time.perf_counter() - started
    status, text = s.request("GET", "/metrics")
    batcher = s.station.app.state.host.current.batcher
    assert (batcher._preparing, batcher.queued) == (0, 0)  # every begun request was submitted or abandoned
    s.stop()
    flat = [a for per in answers for a in per]
    good_statuses = Counter(st for good, st in flat if good)
    bad_statuses = Counter(st for good, st in flat if not good)
    print(f"load: {len(flat)} requests in {elapsed:.1f}s; good {dict(good_statuses)}, bad {dict(bad_statuses)}")
    assert len(flat) == 800
    assert set(good_statuses) == {200}
    assert all(400 <= st < 500 for st in bad_statuses)
    logged = read_records([tmp_path / "log"]).records
    assert len(logged) == good_statuses[200] and len({r.part_id for r in logged}) == len(logged)
    batches = {f.name: f for f in text_string_to_metric_families(text["text"])}["inspect_batch_size"]
    assert next(x.value for x in batches.samples if x.name == "inspect_batch_size_sum") == good_statuses[200]


class _SlowModel:
    """Stands in for a Predictor: records batch sizes, takes 5 ms per call."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        self.sizes.append(len(batch))
        time.sleep(0.005)
        return np.tile([[0.9, 0.1]], (len(batch), 1))

    def decide(self, p: np.ndarray) -> list[int]:
        return list(range(len(p)))

    def decide_batch(self, batch: np.ndarray) -> list[int]:  # the Predictor's one decide path
        return self.decide(self.probabilities(batch))


def _submit_alone(batcher: MicroBatcher) -> object:
    """Submit one image that no request keeps company; its ``BatchResult`` (a generous wait: fails only
    when the batcher never runs it)."""
    got: list = []
    done = threading.Event()
    batcher.submit(np.zeros((1, 2, 2), np.float32), lambda r: (got.append(r), done.set()), begun=False)
    assert done.wait(LIVENESS_S), "the batcher never ran the request"
    return got[0]


def test_micro_batching_waits_only_for_requests_already_arriving():
    """Asserted on what the batcher did (batch sizes, its own queue time against max_wait_ms), not on how
    fast this machine ran it: on a busy machine a wall-clock bound fails for no fault of the batcher."""
    model = _SlowModel()
    patient = MicroBatcher(model, max_batch=4, max_wait_ms=600_000)  # a wait for company would never end
    try:
        alone = _submit_alone(patient)  # alone: no wait for company
        assert alone.batch_size == 1 and alone.queue_ms < 600_000
        results, all_done = [], threading.Event()

        def collect(r):
            results.append(r)
            if len(results) == 4:
                all_done.set()

        for _ in range(4):
            patient.begin()  # four requests arriving together
        for _ in range(4):
            patient.submit(np.zeros((1, 2, 2), np.float32), collect)
            time.sleep(0.01)
        assert all_done.wait(LIVENESS_S)
        assert model.sizes == [1, 4] and {r.batch_size for r in results} == {4}
    finally:
        patient.close(wait=True)
    batcher = MicroBatcher(model, max_batch=4, max_wait_ms=300)
    try:
        batcher.begin()  # one that never comes (bad input): the queued one waits at most max_wait_ms
        waited = _submit_alone(batcher)  # answered before abandon(): it stopped waiting by itself
        assert waited.batch_size == 1 and waited.queue_ms >= 299.999  # it waited for the one arriving (float rounding aside)
        batcher.abandon()
        assert model.sizes == [1, 4, 1]
    finally:
        batcher.close(wait=True)


def test_deploy_serve_runs_without_torch_and_reloads_on_sighup(bundles, tmp_path):
    """The CLI in a subprocess with torch, timm, albumentations and kit blocked: serve, SIGHUP
    reload of the replaced bundle folder, graceful stop on SIGTERM."""
    (tmp_path / "sitecustomize.py").write_text(BLOCK_HEAVY)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    live = tmp_path / "live"
    shutil.copytree(bundles[0], live)
    proc = subprocess.Popen([sys.executable, "-m", "deploy", "serve", str(live), "--port", "0", "--runtime", "onnx",
                             "--log-dir", str(tmp_path / "log")], env=env, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert line.startswith("# deploy serve: http://127.0.0.1:"), line + proc.stderr.read()
        port = int(line.split("http://127.0.0.1:")[1].split()[0])
        client = http.client.HTTPConnection("127.0.0.1", port, timeout=20)

        def get(path: str) -> dict:
            for _ in range(200):
                try:
                    client.request("GET", path)
                    return json.loads(client.getresponse().read())
                except ConnectionError:
                    time.sleep(0.05)
            raise AssertionError("server never answered")

        assert get("/v1/ready")["model_id"] == model_id(bundles[0])
        client.request("POST", "/v1/inspect", body=sample_images(1)[0].read_bytes(), headers={"Content-Type": "image/png"})
        response = client.getresponse()
        assert response.status == 200 and json.loads(response.read())["model_id"] == model_id(bundles[0])
        shutil.rmtree(live)
        shutil.copytree(bundles[1], live)
        proc.send_signal(signal.SIGHUP)
        _wait_until(lambda: get("/v1/model")["model_id"] == model_id(bundles[1]), "SIGHUP to reload the folder")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) in (0, -signal.SIGTERM)  # uvicorn shuts down gracefully, then re-raises the signal
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    records = read_records([tmp_path / "log"]).records
    assert [r.model_id for r in records] == [model_id(bundles[0])]


@pytest.mark.parametrize("command", ["serve", "watch", "monitor"])
def test_station_commands_have_help_with_an_example(command):
    result = CliRunner().invoke(deploy_app, [command, "--help"])
    assert result.exit_code == 0 and "Example: deploy " + command in result.output


def test_station_commands_fail_in_one_line(bundles, tmp_path):
    runner = CliRunner()
    missing = runner.invoke(deploy_app, ["serve", str(tmp_path / "nope"), "--port", "0"])
    assert missing.exit_code == 1
    assert missing.output.strip() == f"error: {tmp_path / 'nope'}: no model.json; is this an exported bundle? (kit export RUN_DIR)"
    with build_station(ServeConfig(bundle=bundles[0], log_dir=None), port=0).sock as taken:
        port = taken.getsockname()[1]
        busy = runner.invoke(deploy_app, ["serve", str(bundles[0]), "--port", str(port), "--no-log"])
    assert busy.exit_code == 1 and busy.output.startswith(f"error: cannot listen on 127.0.0.1:{port}")
    no_dir = runner.invoke(deploy_app, ["watch", str(tmp_path / "in"), "--bundle", str(bundles[0]), "--done", str(tmp_path / "d")])
    assert no_dir.exit_code == 1 and no_dir.output.strip() == f"error: {tmp_path / 'in'}: no such folder to watch"
    (tmp_path / "in").mkdir()
    inside = runner.invoke(deploy_app, ["watch", str(tmp_path / "in"), "--bundle", str(bundles[0]), "--done", str(tmp_path / "in" / "done")])
    assert inside.exit_code == 1 and "must be outside the watched folder" in inside.output


def test_a_decision_explained_with_its_heatmap(station, bundles, images):
    """?heatmap=1: the same decision as without, plus the map (PNG in the image's pixels) and its peak."""
    import base64

    data = images[0].read_bytes()
    plain_status, plain = station.inspect(data)
    status, got = station.request("POST", "/v1/inspect?heatmap=1&part_id=hm-1", data, {"Content-Type": "image/png"})
    assert (plain_status, status) == (200, 200), got
    assert (got["label"], got["action"], got["abstain"]) == (plain["label"], plain["action"], plain["abstain"])
    assert abs(got["confidence"] - plain["confidence"]) <= TOLERANCE
    image = cv2.imread(str(images[0]), cv2.IMREAD_UNCHANGED)
    heat = got["heatmap"]
    assert heat["label"] == got["label"] and heat["size"] == [image.shape[1], image.shape[0]]
    png = cv2.imdecode(np.frombuffer(base64.b64decode(heat["png_base64"]), np.uint8), cv2.IMREAD_UNCHANGED)
    assert png.shape == image.shape[:2] and png.max() == 255
    x, y = heat["peak_xy"]
    assert png[y, x] == 255  # the peak is where the map is largest
    status, other = station.request("POST", "/v1/inspect?heatmap_class=scratch", data, {"Content-Type": "image/png"})
    assert status == 200 and other["heatmap"]["label"] == "scratch"
    assert "hm-1" in {r.part_id for r in read_records([station.log_dir]).records}
    for query, kind in (("heatmap=maybe", "bad_request"), ("heatmap_class=%3Cscript%3E", "bad_request")):
        status, refused = station.request("POST", f"/v1/inspect?{query}", data, {"Content-Type": "image/png"})
        assert status == 400 and refused["error"] == kind, refused


def test_a_body_that_trickles_in_times_out_with_408(bundles, tmp_path):
    """A client sending its body too slowly is answered 408 and holds no model; the station keeps serving."""
    import socket

    s = Station(bundles[0], tmp_path / "log", read_timeout_s=0.5)
    try:
        with socket.create_connection((s.host, s.port), timeout=LIVENESS_S) as sock:
            sock.sendall(b"POST /v1/inspect HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n"
                         + b"\x89PNG\r\n\x1a\n")
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                part = sock.recv(4096)
                if not part:
                    break
                answer += part
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408") and json.loads(body)["error"] == "timeout", answer
        # the configured read timeout answered, with the 8 bytes sent and the rest never coming (not a wall clock
        # in the test: on a busy machine the answer may come late, never early)
        assert json.loads(body)["message"] == "the body did not arrive within 0.5 s (8 bytes received)"
        assert s.inspect(sample_images(1)[0].read_bytes())[0] == 200
        batcher = s.station.app.state.host.current.batcher
        assert (batcher._preparing, batcher.queued) == (0, 0)
    finally:
        s.stop()
