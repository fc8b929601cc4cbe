"""The MQTT sink (paho-mqtt, the ``line`` extra): the station's events on a broker.

Topics under the URL's prefix (``--publish mqtt://host:1883/plant/line7``):

    PREFIX/decision   every decided part (QoS 1, not retained)
    PREFIX/model      a model change (QoS 1)
    PREFIX/drift      a ``deploy monitor`` verdict (QoS 1)
    PREFIX/status     the station's status, retained (QoS 1): online with ready and model id; the last will, set at
                      connect, is the same status with ``state: offline``, published by the broker when the station
                      goes without saying goodbye (and by the station itself when it stops)

A batch counts as delivered only when the broker acknowledged (PUBACK) every message of it; the connection is
kept by paho's own loop thread, which reconnects with back-off (1 s doubling to 8 s). TLS with ``mqtts://``
(the system's CAs, or ``--publish-ca``); user and password from ``--publish-credentials FILE``.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Any

from deploy.errors import DeployError
from deploy.line.config import Endpoint, read_mqtt_credentials
from deploy.line.cursor import LogCursor
from deploy.line.events import encode
from deploy.line.follower import Follower

ACK_TIMEOUT_S = 10.0
RECONNECT_S = (1, 8)
KEEPALIVE_S = 15


def line_extra_missing(exc: ImportError) -> DeployError:
    return DeployError(f"the line interfaces need the line extra ({exc.name} is not installed): "
                       'pip install "inspection-kit[line]"')


class MqttSink:
    name = "mqtt"

    def __init__(self, endpoint: Endpoint, client_id: str, credentials: Any = None, ca_file: Any = None) -> None:
        try:
            import paho.mqtt.client as mqtt
        except ImportError as exc:
            raise line_extra_missing(exc) from None
        self.endpoint, self.prefix = endpoint, endpoint.path
        self._mqtt = mqtt
        self._connected = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                                  clean_session=True)
        if credentials is not None:
            user, password = read_mqtt_credentials(credentials)
            self.client.username_pw_set(user, password)
        if endpoint.tls:
            try:
                self.client.tls_set(ca_certs=str(ca_file) if ca_file else None)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise DeployError(f"--publish-ca {ca_file}: TLS cannot load it ({exc})") from None
        self.client.reconnect_delay_set(*RECONNECT_S)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *a: self._connected.clear()
        self._status: bytes | None = None
        self.problem: str | None = None  # why the last batch was not delivered, for the follower's error line

    def topic(self, kind: str) -> str:
        return f"{self.prefix}/{kind}"

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if getattr(reason, "is_failure", False):
            self.problem = f"the broker at {self._address()} refused the connection: {reason}"
            return
        self._connected.set()
        self.problem = None
        if self._status is not None:  # every (re)connect says online again: the will may have said offline
            client.publish(self.topic("status"), self._status, qos=1, retain=True)

    def start(self, status: dict[str, Any], offline: dict[str, Any]) -> None:
        self._status = encode(status)
        self.client.will_set(self.topic("status"), encode(offline), qos=1, retain=True)
        self.client.connect_async(self.endpoint.host, self.endpoint.port, keepalive=KEEPALIVE_S)
        self.client.loop_start()

    def publish_status(self, status: dict[str, Any]) -> None:
        self._status = encode(status)
        if self.connected:
            self.client.publish(self.topic("status"), self._status, qos=1, retain=True)

    def deliver(self, events: list[dict[str, Any]], timeout_s: float = ACK_TIMEOUT_S) -> bool:
        """Publish every event (QoS 1); True once the broker acknowledged them all, False when it is not connected
        or has not acknowledged within ``timeout_s`` (the follower sends the batch again later)."""
        if not self._connected.wait(min(timeout_s, 1.0)):
            if not (self.problem or "").startswith("the broker at"):  # keep a refusal's reason
                self.problem = f"not connected to the broker at {self._address()} (is it running, is the address right?)"
            return False
        infos = []
        for event in events:
            info = self.client.publish(self.topic(event["event"]), encode(event), qos=1)
            if info.rc != self._mqtt.MQTT_ERR_SUCCESS:
                self.problem = f"publishing to the broker at {self._address()} failed ({self._mqtt.error_string(info.rc)})"
                return False
            infos.append(info)
        deadline = time.monotonic() + timeout_s
        for info in infos:  # waits on paho's condition, no polling
            try:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            except (RuntimeError, ValueError):  # the connection went: not sent
                return False
            if not info.is_published():
                self.problem = f"the broker at {self._address()} did not acknowledge within {timeout_s:g} s"
                return False
        self.problem = None
        return True

    def _address(self) -> str:
        return f"{self.endpoint.scheme}://{self.endpoint.host}:{self.endpoint.port}"

    def stop(self, offline: dict[str, Any]) -> None:
        """Say offline (retained) before leaving; the broker keeps it for every later subscriber."""
        if self.connected:
            info = self.client.publish(self.topic("status"), encode(offline), qos=1, retain=True)
            try:
                info.wait_for_publish(2.0)
            except (RuntimeError, ValueError):
                pass
        self.client.disconnect()
        self.client.loop_stop()


def publish_once(sink: MqttSink, event: dict[str, Any], timeout_s: float = 10.0) -> bool:
    """One event (a drift verdict) from a command that then exits: connect, publish, wait for the ack, leave."""
    sink.client.connect_async(sink.endpoint.host, sink.endpoint.port, keepalive=KEEPALIVE_S)
    sink.client.loop_start()
    try:
        return sink.deliver([event], timeout_s) if sink._connected.wait(timeout_s) else False
    finally:
        sink.client.disconnect()
        sink.client.loop_stop()


def follower_client_id(station_id: str, log_dir: Any) -> str:
    """One MQTT client id per decision log followed: two publishers of one station (``deploy serve`` and ``deploy
    watch`` on one host, both named after the host by default) with the same id would take the broker's session
    from each other at every reconnect, and each takeover publishes the other's last will (status offline). The
    same log folder keeps its id across restarts."""
    folder = hashlib.sha256(str(Path(log_dir).resolve()).encode("utf-8")).hexdigest()[:8]
    return f"inspection-kit-{station_id[:40]}-{folder}"


def start_mqtt_follower(log_dir: Any, config: Any, source: Any, status: Any, err: Any = None,
                        exclusive: bool = False):
    """The MQTT sink following ``log_dir`` through its cursor (``LogCursor(log_dir, "mqtt")``), started."""
    sink = MqttSink(config.publish, client_id=follower_client_id(config.station_id, log_dir),
                    credentials=config.publish_credentials, ca_file=config.publish_ca)
    return Follower(LogCursor(log_dir, "mqtt", exclusive), sink, source, status, err=err).start()
