"""``deploy serve`` on a plant network (issue 27, finding 7): API keys and scopes, the reload's media type and
line/class guard, TLS, the access log and the audit record, request ids.

Real servers on 127.0.0.1 (a thread, or a torch-blocked subprocess), real HTTP(S), the real decision log; every
wait is bounded (``LIVENESS_S``) and only a hang reaches it."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import ssl
import stat
import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from typer.testing import CliRunner  # noqa: E402

from deploy.cli import app as deploy_app  # noqa: E402
from deploy.decision_log import read_records  # noqa: E402
from deploy.manifest import model_id  # noqa: E402
from deploy.serve import ServeConfig, build_station  # noqa: E402
from deploy.serve.audit import read_audit  # noqa: E402
from deploy.serve.auth import SCOPES, TokenStore, access_warnings, add_token, read_token_file  # noqa: E402
from deploy.serve.config import AccessConfig  # noqa: E402
from tests.edge_bundle import make_bundle, sample_images  # noqa: E402

pytestmark = pytest.mark.edge

REPO = Path(__file__).resolve().parents[1]
LIVENESS_S = 60
JSON = {"Content-Type": "application/json"}
PNG = {"Content-Type": "image/png"}


# -- a station and a client ---------------------------------------------------------------------------------------

class Station:
    """A started server on 127.0.0.1 and a small client (a new connection per request; HTTPS with ``cafile``)."""

    def __init__(self, bundle: Path, log_dir: Path | None, cafile: Path | None = None, **access) -> None:
        config = ServeConfig(bundle=bundle, log_dir=log_dir, access=AccessConfig(**access))
        self.station = build_station(config, port=0).start()
        self.host, self.port = self.station.sock.getsockname()[:2]
        self.log_dir, self.cafile = log_dir, cafile

    def connect(self) -> http.client.HTTPConnection:
        if self.cafile is not None:
            context = ssl.create_default_context(cafile=str(self.cafile))
            return http.client.HTTPSConnection(self.host, self.port, timeout=20, context=context)
        return http.client.HTTPConnection(self.host, self.port, timeout=20)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                key: str | None = None) -> tuple[int, dict, dict]:
        headers = dict(headers or {})
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        conn = self.connect()
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            answer_headers = {k.lower(): v for k, v in response.getheaders()}
        finally:
            conn.close()
        is_json = answer_headers.get("content-type", "").startswith("application/json") and raw
        return response.status, answer_headers, (json.loads(raw) if is_json else {"text": raw.decode("utf-8", "replace")})

    def inspect(self, data: bytes, key: str | None = None, part_id: str | None = None, **headers) -> tuple[int, dict, dict]:
        path = "/v1/inspect" + (f"?part_id={part_id}" if part_id else "")
        return self.request("POST", path, data, {**PNG, **headers}, key)

    def reload(self, payload: dict | None, key: str | None = None, headers: dict | None = None) -> tuple[int, dict, dict]:
        body = json.dumps(payload).encode() if payload is not None else b""
        return self.request("POST", "/v1/reload", body, JSON if headers is None else headers, key)

    def stop(self) -> None:
        self.station.stop()


def _wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + LIVENESS_S
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """The serving bundle, a newer one of the same line, another line's, one with another class set; all inside
    the reload root (the folder holding the first)."""
    root = tmp_path_factory.mktemp("bundles")
    return {"a": make_bundle(root / "a", seed=0), "b": make_bundle(root / "b", seed=1),
            "other_line": make_bundle(root / "other_line", seed=1, line="press_line"),
            "other_classes": make_bundle(root / "other_classes", seed=1, classes=["dent", "ok", "crack"])}


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("keys")
    tokens = folder / "tokens"
    made = {name: add_token(tokens, name, [scope]) for name, scope in
            (("scraper", "metrics"), ("cell-7", "inspect"), ("mes-admin", "admin"))}
    return {"file": tokens, **made}


@pytest.fixture(scope="module")
def guarded(bundles, keys, tmp_path_factory):
    """A station with API keys, as on a plant network."""
    s = Station(bundles["a"], tmp_path_factory.mktemp("log"), tokens_file=keys["file"])
    yield s
    s.stop()


def _png(i: int = 0) -> bytes:
    return sample_images(3)[i].read_bytes()


# -- API keys -----------------------------------------------------------------------------------------------------

def test_the_token_file_holds_salted_hashes_and_the_key_is_shown_once(tmp_path):
    runner, tokens = CliRunner(), tmp_path / "tokens"
    added = runner.invoke(deploy_app, ["token", "add", "--file", str(tokens), "--name", "cell-7", "--scope", "inspect"])
    assert added.exit_code == 0, added.output
    key = added.stdout.strip()
    assert re.fullmatch(r"isk_[0-9a-f]{12}\.[A-Za-z0-9_-]{43}", key)
    text = tokens.read_text()
    assert key not in text and key.split(".")[1] not in text  # neither the key nor its secret is stored
    line = json.loads(text)
    assert (line["name"], line["scopes"], line["key_id"]) == ("cell-7", ["inspect"], key[4:16])
    algorithm, n, r, p, salt, digest = line["hash"].split("$")
    assert (algorithm, n, r, p) == ("scrypt", "16384", "8", "1") and len(salt) == 32 and len(digest) == 64
    assert hashlib.scrypt(key.encode(), salt=bytes.fromhex(salt), n=16384, r=8, p=1, dklen=32).hex() == digest
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o600
    again = runner.invoke(deploy_app, ["token", "add", "--file", str(tokens), "--name", "cell-7", "--scope", "admin"])
    assert again.exit_code == 1 and again.output.strip() == (
        f"error: {tokens}: a key named 'cell-7' exists; revoke it first (deploy token revoke --file {tokens} "
        "--name cell-7) or pick another name")
    bad = runner.invoke(deploy_app, ["token", "add", "--file", str(tokens), "--name", "x", "--scope", "root"])
    assert bad.exit_code == 1 and bad.output.strip() == ("error: --scope 'root': use one of metrics, inspect, admin "
                                                         "(admin includes inspect, inspect includes metrics)")
    listed = runner.invoke(deploy_app, ["token", "list", "--file", str(tokens)])
    assert listed.exit_code == 0 and listed.stdout.split("\t")[:3] == ["cell-7", "inspect", key[4:16]]
    assert key not in listed.output
    assert runner.invoke(deploy_app, ["token", "revoke", "--file", str(tokens), "--name", "cell-7"]).exit_code == 0
    assert read_token_file(tokens) == {}
    gone = runner.invoke(deploy_app, ["token", "revoke", "--file", str(tokens), "--name", "cell-7"])
    assert gone.exit_code == 1 and gone.output.strip() == f"error: {tokens}: no key named 'cell-7' (names: none)"


@pytest.mark.parametrize("command", ["add", "list", "revoke"])
def test_token_commands_have_help_with_an_example(command):
    result = CliRunner().invoke(deploy_app, ["token", command, "--help"])
    assert result.exit_code == 0 and "Example: deploy token " + command in result.output


def test_the_scopes_are_a_ladder_and_a_known_key_is_checked_once_with_scrypt(tmp_path, monkeypatch):
    key = add_token(tmp_path / "t", "cell-7", ["inspect"])
    store = TokenStore(tmp_path / "t")
    entry = next(iter(read_token_file(tmp_path / "t").values()))
    assert [entry.allows(s) for s in SCOPES] == [True, True, False]
    calls = []
    import deploy.serve.auth as auth

    real = auth.verify_key
    monkeypatch.setattr(auth, "verify_key", lambda k, h: calls.append(k) or real(k, h))
    assert store.quick(key) == (None, False)  # not seen: the slow check decides
    assert store.verify(key).name == "cell-7" and store.quick(key)[0].name == "cell-7"
    wrong = key[:-4] + "AAAA"
    assert store.quick(wrong) == (None, False) and store.verify(wrong) is None
    assert store.quick(wrong) == (None, True)  # a failure is remembered: no second scrypt
    assert store.quick("isk_000000000000.whatever") == (None, True)  # unknown key id: no hashing at all
    assert store.quick("hunter2") == (None, True)
    assert calls == [key, wrong]


def test_a_station_with_keys_refuses_the_unauthenticated_and_the_non_admin(guarded, keys, bundles):
    status, headers, got = guarded.inspect(_png())
    assert (status, got["error"]) == (401, "unauthenticated")
    assert headers["www-authenticate"] == 'Bearer realm="inspection-station"'
    status, headers, got = guarded.inspect(_png(), key=keys["cell-7"][:-2] + "xx")
    assert (status, got["error"]) == (401, "invalid_key")
    assert headers["www-authenticate"] == 'Bearer realm="inspection-station", error="invalid_token"'
    status, _, got = guarded.inspect(_png(), key=keys["cell-7"])
    assert status == 200 and got["model_id"] == model_id(bundles["a"])
    assert guarded.inspect(_png(), key=keys["mes-admin"])[0] == 200  # admin includes inspect
    status, headers, got = guarded.reload(None, key=keys["cell-7"])
    assert (status, got["error"]) == (403, "insufficient_scope")
    assert got["message"] == "the key 'cell-7' has scope inspect; /v1/reload needs admin"
    assert headers["www-authenticate"].endswith('error="insufficient_scope", scope="admin"')
    assert guarded.request("GET", "/metrics", key=keys["scraper"])[0] == 200
    assert guarded.request("GET", "/metrics")[0] == 401
    assert guarded.inspect(_png(), key=keys["scraper"])[2]["error"] == "insufficient_scope"
    for open_route in ("/v1/health", "/v1/ready"):
        assert guarded.request("GET", open_route)[0] == 200, open_route
    status, _, got = guarded.reload(None, key=keys["mes-admin"])
    assert status == 200 and got["changes"] == {}


def test_a_key_added_or_revoked_takes_effect_without_a_restart(bundles, tmp_path):
    tokens = tmp_path / "tokens"
    add_token(tokens, "first", ["admin"])
    s = Station(bundles["a"], tmp_path / "log", tokens_file=tokens)
    try:
        late = add_token(tokens, "late", ["inspect"])
        _wait_until(lambda: s.inspect(_png(), key=late)[0] == 200, "the added key to be taken")
        CliRunner().invoke(deploy_app, ["token", "revoke", "--file", str(tokens), "--name", "late"])
        _wait_until(lambda: s.inspect(_png(), key=late)[0] == 401, "the revoked key to be refused")
    finally:
        s.stop()


def test_a_warning_when_others_can_reach_a_station_without_keys(tmp_path):
    assert access_warnings("127.0.0.1", AccessConfig()) == access_warnings("::1", AccessConfig()) == []
    assert access_warnings("0.0.0.0", AccessConfig()) == [
        "listening on 0.0.0.0 without --tokens: anyone who reaches this port can inspect parts, read decisions and "
        "switch the model (deploy token add, then deploy serve --tokens FILE)"]
    add_token(tmp_path / "t", "a", ["admin"])
    os.chmod(tmp_path / "t", 0o666)
    assert access_warnings("10.0.0.5", AccessConfig(tokens_file=tmp_path / "t")) == [
        "listening on 10.0.0.5 without --tls-cert/--tls-key: API keys and images cross the network in clear text",
        f"{tmp_path / 't'} is writable by others, who could add a key: chmod 600 {tmp_path / 't'}"]


# -- reload: media type, switch, guard, audit ---------------------------------------------------------------------

def test_a_reload_is_json_only_and_no_reload_turns_it_off(bundles, tmp_path):
    """``text/plain``, a form, or no media type at all are what a page on any PC can send across origins without a
    CORS preflight: 415, and the model does not change. ``--no-reload``: 403, audited."""
    s = Station(bundles["a"], tmp_path / "log")
    try:
        target = json.dumps({"bundle": str(bundles["b"])}).encode()
        for headers in ({"Content-Type": "text/plain"}, {"Content-Type": "application/x-www-form-urlencoded"}, {}):
            status, _, got = s.request("POST", "/v1/reload", target if headers else b"", headers)
            assert (status, got["error"]) == (415, "unsupported_media_type"), headers
        assert s.request("GET", "/v1/model")[2]["model_id"] == model_id(bundles["a"])
    finally:
        s.stop()
    off = Station(bundles["a"], tmp_path / "log-off", allow_reload=False)
    try:
        status, _, got = off.reload({"bundle": str(bundles["b"])})
        assert (status, got["error"]) == (403, "reload_disabled")
        assert got["message"].startswith("this station was started with --no-reload")
    finally:
        off.stop()
    assert [(r["result"], r["status"], r["who"]) for r in read_audit(tmp_path / "log")] == \
        [("unsupported_media_type", 415, "anonymous")] * 3
    assert [(r["result"], r["status"]) for r in read_audit(tmp_path / "log-off")] == [("reload_disabled", 403)]


def test_the_line_and_class_guard_and_the_audit_record_of_every_model_change(bundles, keys, tmp_path):
    s = Station(bundles["a"], tmp_path / "log", tokens_file=keys["file"])
    admin = keys["mes-admin"]
    try:
        status, _, got = s.reload({"bundle": str(bundles["other_line"])}, key=admin)
        assert (status, got["error"], got["model_id"]) == (409, "line_or_classes_differ", model_id(bundles["a"]))
        assert got["differs"] == {"line": {"old": "station_line", "new": "press_line"}}
        assert got["message"] == (f"reload of {bundles['other_line']} refused: it changes the line (station_line -> "
                                  f"press_line); still serving {model_id(bundles['a'])[:12]}. To switch anyway, send "
                                  '{"bundle": ..., "force": true}')
        status, _, got = s.reload({"bundle": str(bundles["other_classes"])}, key=admin)
        assert (status, got["differs"]) == (409, {"classes": {"old": ["dent", "ok", "scratch"],
                                                              "new": ["dent", "ok", "crack"]}})
        assert s.request("GET", "/v1/model", key=admin)[2]["model_id"] == model_id(bundles["a"])
        status, _, got = s.reload({"bundle": str(bundles["other_classes"]), "force": True}, key=admin)
        assert status == 200 and got["forced"] is True and got["model_id"] == model_id(bundles["other_classes"])
        assert got["changes"]["classes"] == {"old": ["dent", "ok", "scratch"], "new": ["dent", "ok", "crack"]}
        assert s.reload({"bundle": str(bundles["a"])}, key=keys["cell-7"])[0] == 403
        assert s.reload({"bundle": str(bundles["a"])})[0] == 401
    finally:
        s.stop()
    audit = read_audit(tmp_path / "log")
    assert [(r["result"], r["status"], r["who"], r["force"] if "force" in r else None) for r in audit] == [
        ("line_or_classes_differ", 409, "mes-admin", False), ("line_or_classes_differ", 409, "mes-admin", False),
        ("ok", 200, "mes-admin", True), ("insufficient_scope", 403, "cell-7", None), ("unauthenticated", 401, None, None)]
    switch = audit[2]
    assert switch["address"] == "127.0.0.1" and re.fullmatch(r"[0-9a-f]{32}", switch["request_id"])
    assert switch["old"] == {"model_id": model_id(bundles["a"]), "line": "station_line",
                             "classes": ["dent", "ok", "scratch"], "bundle": str(bundles["a"])}
    assert switch["new"] == {"model_id": model_id(bundles["other_classes"]), "line": "station_line",
                             "classes": ["dent", "ok", "crack"], "bundle": str(bundles["other_classes"])}
    assert audit[0]["differs"] == {"line": {"old": "station_line", "new": "press_line"}}
    tokens_text = keys["file"].read_text()
    for path in (tmp_path / "log").iterdir():  # no key in any record, only names
        text = path.read_text()
        assert not any(keys[n] in text for n in ("scraper", "cell-7", "mes-admin")) and tokens_text not in text


def test_sighup_reloads_are_guarded_and_audited(bundles, tmp_path):
    """SIGHUP reloads the serving folder; a folder replaced by another line's bundle is refused (no force there)."""
    from deploy.serve.reloads import reload_on_signal

    live = bundles["a"].parent / f"live-{tmp_path.name}"
    shutil.copytree(bundles["a"], live)
    s = Station(live, tmp_path / "log")
    try:
        state, audit = s.station.app.state.station, s.station.app.state.access.audit
        shutil.rmtree(live)
        shutil.copytree(bundles["other_line"], live)
        reload_on_signal(state, audit)
        assert state.host.current.model_id == model_id(bundles["a"])
        shutil.rmtree(live)
        shutil.copytree(bundles["b"], live)
        reload_on_signal(state, audit)
        assert state.host.current.model_id == model_id(bundles["b"])
    finally:
        s.stop()
    records = read_audit(tmp_path / "log")
    assert [(r["who"], r["result"], r["address"]) for r in records] == [("SIGHUP", "line_or_classes_differ", None),
                                                                        ("SIGHUP", "ok", None)]


# -- TLS ----------------------------------------------------------------------------------------------------------

def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 from the openssl binary (the cryptography package is not a dependency
    of the kit, and the standard library cannot make one)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    if shutil.which("openssl") is None:
        pytest.skip("no openssl binary here to make a test certificate")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=LIVENESS_S)
    return cert, key


def test_tls_from_a_certificate_and_key(bundles, keys, tmp_path):
    cert, key = _self_signed(tmp_path)
    s = Station(bundles["a"], tmp_path / "log", cafile=cert, tokens_file=keys["file"], tls_cert=cert, tls_key=key)
    try:
        assert s.station.url.startswith("https://127.0.0.1:")
        status, _, got = s.inspect(_png(), key=keys["cell-7"])
        assert status == 200 and got["action"] in ("accept", "reject", "review")
        assert s.inspect(_png())[0] == 401
        plain = http.client.HTTPConnection(s.host, s.port, timeout=20)  # plain HTTP to the TLS port: no answer
        with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
            plain.request("GET", "/v1/health")
            plain.getresponse().read()
        plain.close()
        other = ssl.create_default_context()  # a client that does not trust the certificate refuses it
        conn = http.client.HTTPSConnection(s.host, s.port, timeout=20, context=other)
        with pytest.raises(ssl.SSLCertVerificationError):
            conn.request("GET", "/v1/health")
        conn.close()
    finally:
        s.stop()


def test_a_certificate_without_its_key_is_one_line(bundles, tmp_path):
    cert, _ = _self_signed(tmp_path)
    runner = CliRunner()
    half = runner.invoke(deploy_app, ["serve", str(bundles["a"]), "--port", "0", "--no-log", "--tls-cert", str(cert)])
    assert half.exit_code == 1 and half.output.strip() == "error: TLS needs both --tls-cert CERT.pem and --tls-key KEY.pem"
    wrong = runner.invoke(deploy_app, ["serve", str(bundles["a"]), "--port", "0", "--no-log", "--tls-cert", str(cert),
                                       "--tls-key", str(cert)])
    assert wrong.exit_code == 1 and wrong.output.startswith(f"error: --tls-cert {cert} / --tls-key {cert}: cannot load")


# -- request ids and the access log -------------------------------------------------------------------------------

def test_request_ids_are_echoed_and_the_access_log_names_the_key_never_the_key(guarded, keys):
    status, headers, got = guarded.inspect(_png(), key=keys["cell-7"], part_id="rid-1", **{"X-Request-Id": "cam7-000123"})
    assert status == 200 and headers["x-request-id"] == "cam7-000123" and headers["x-decision-id"] == got["decision_id"]
    made = guarded.request("GET", "/v1/health")[1]["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    replaced = guarded.request("GET", "/v1/health", headers={"X-Request-Id": "x" * 200})[1]["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", replaced)  # too long: a fresh one, never the client's text
    assert guarded.inspect(_png())[1]["x-request-id"]  # refused requests carry one too
    _wait_until(lambda: any(r["request_id"] == replaced for r in _access_lines(guarded.log_dir)), "the access line")
    lines = {r["request_id"]: r for r in _access_lines(guarded.log_dir)}
    mine = lines["cam7-000123"]
    assert (mine["method"], mine["route"], mine["status"], mine["key"], mine["client"]) == \
        ("POST", "/v1/inspect", 200, "cell-7", "127.0.0.1")
    assert mine["decision_id"] == got["decision_id"] and mine["duration_ms"] > 0
    assert lines[made]["key"] is None and lines[made]["status"] == 200
    logged = {r.decision_id: r for r in read_records([guarded.log_dir]).records}
    assert logged[got["decision_id"]].part_id == "rid-1"
    text = "".join(p.read_text() for p in guarded.log_dir.glob("access-*.jsonl"))
    assert not any(keys[n] in text for n in ("scraper", "cell-7", "mes-admin"))


def _access_lines(folder: Path) -> list[dict]:
    return [json.loads(line) for p in sorted(folder.glob("access-*.jsonl")) for line in p.read_text().splitlines()
            if line.endswith("}")]
