"""Real servers and clients on 127.0.0.1 for the line-interface tests: a mosquitto broker started from a generated
config file on a free port, and an MQTT subscriber that collects what arrives."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    return found or next((p for p in MOSQUITTO_PATHS if Path(p).is_file()), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, what: str, timeout_s: float = 20.0, every_s: float = 0.02):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


class Mosquitto:
    """A real broker; ``stop`` and ``start`` again on the same port (the broker-outage tests)."""

    def __init__(self, folder: Path, port: int | None = None, password_file: Path | None = None) -> None:
        binary = mosquitto_binary()
        if binary is None:
            pytest.skip("mosquitto is not installed (apt-get install mosquitto; .ci/run installs it)")
        self.binary, self.port = binary, port or free_port()
        self.config = folder / "mosquitto.conf"
        # persistence: a subscriber's session and its queued QoS 1 messages survive the broker's restart (saved on
        # SIGTERM), as on a plant's broker
        lines = [f"listener {self.port} 127.0.0.1", "persistence true", f"persistence_location {folder}/",
                 "log_type error", f"user {pwd.getpwuid(os.getuid()).pw_name}"]  # as root it would become 'mosquitto'
                                                                                  # and lose the test's private folder
        lines += [f"password_file {password_file}", "allow_anonymous false"] if password_file else ["allow_anonymous true"]
        self.config.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen | None = None

    def start(self) -> "Mosquitto":
        self.process = subprocess.Popen([self.binary, "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)

        def listening() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"mosquitto exited: {self.process.stderr.read().decode(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                return False

        wait_until(listening, "mosquitto to listen", 10)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None


class Subscriber:
    """Collects every message under ``prefix/#`` (QoS 1), decoded from JSON, in arrival order."""

    def __init__(self, port: int, prefix: str, credentials: tuple[str, str] | None = None,
                 client_id: str | None = None) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, dict, bool]] = []  # (topic, payload, retained)
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        # a persistent session (clean_session False): what arrives while the subscriber reconnects is queued for it
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"test-sub-{free_port()}",
                                  clean_session=False)
        if credentials:
            self.client.username_pw_set(*credentials)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{prefix}/#", qos=1)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        assert self._subscribed.wait(10), "the test subscriber could not subscribe"

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.messages.append((message.topic, json.loads(message.payload), bool(message.retain)))

    def of(self, topic_suffix: str) -> list[dict]:
        with self._lock:
            return [m for t, m, _ in self.messages if t.endswith("/" + topic_suffix)]

    def decision_ids(self) -> list[str]:
        return [m["event_id"] for m in self.of("decision")]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
