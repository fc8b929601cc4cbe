"""``LineConfig``: the line interfaces one station runs, from ``--publish``, ``--opcua`` and ``--modbus``.

URLs are parsed and checked before anything starts (a ``DeployError`` in one line). Secrets never travel on the
command line: an MQTT URL with ``user:password@`` is refused (``ps`` shows every argument to every user of the
machine); credentials come from a file (``--publish-credentials``, ``--opcua-users``).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from deploy.errors import DeployError

MQTT_PORTS = {"mqtt": 1883, "mqtts": 8883}


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str
    port: int
    path: str  # the MQTT topic prefix; the OPC UA endpoint path

    @property
    def tls(self) -> bool:
        return self.scheme == "mqtts"


@dataclass
class HandshakeTimeouts:
    """The handshake's time-outs (``deploy.line.handshake``)."""

    image_s: float = 5.0  # Busy: the triggered part's image must arrive (file or HTTP) within this
    acknowledge_s: float = 10.0  # ResultReady: the PLC must acknowledge within this (else error ack_timeout)


@dataclass
class LineConfig:
    station_id: str = field(default_factory=socket.gethostname)
    publish: Endpoint | None = None  # MQTT broker and topic prefix
    publish_credentials: Path | None = None  # two lines: user name, password
    publish_ca: Path | None = None  # CA certificate (PEM) of an mqtts:// broker (default: the system's)
    opcua: Endpoint | None = None
    opcua_users: Path | None = None  # lines "name:password"; with it, anonymous OPC UA sessions are refused
    opcua_cert: Path | None = None  # server certificate (DER or PEM) and key: Basic256Sha256 sign & encrypt
    opcua_key: Path | None = None
    modbus: Endpoint | None = None
    handshake_images: Path | None = None  # the folder a triggered part's image is dropped in (PART_ID.png ...)
    timeouts: HandshakeTimeouts = field(default_factory=HandshakeTimeouts)

    @property
    def handshake(self) -> bool:
        return self.opcua is not None or self.modbus is not None

    @property
    def any(self) -> bool:
        return self.publish is not None or self.handshake


def parse_mqtt_url(url: str) -> Endpoint:
    """``mqtt://host[:1883]/topic/prefix`` or ``mqtts://host[:8883]/prefix``."""
    parts = urlsplit(url)
    if parts.scheme not in MQTT_PORTS:
        raise DeployError(f"--publish {url!r}: give mqtt://HOST:1883/TOPIC/PREFIX (or mqtts:// for TLS)")
    if parts.username or parts.password:
        raise DeployError(f"--publish: no user name or password in the URL (every user of the machine sees the command "
                          "line); put them in a file: --publish-credentials FILE (line 1 the user, line 2 the password)")
    prefix = parts.path.strip("/")
    if not parts.hostname or not prefix or any(c in prefix for c in "+#\x00"):
        raise DeployError(f"--publish {url!r}: needs a host and a topic prefix without wildcards, "
                          "e.g. mqtt://127.0.0.1:1883/plant/line7")
    return Endpoint(parts.scheme, parts.hostname, _port(parts, MQTT_PORTS[parts.scheme], "--publish", url), prefix)


def parse_opcua_url(url: str) -> Endpoint:
    """``opc.tcp://host[:4840][/path]``: the address the station's OPC UA server listens on."""
    parts = urlsplit(url)
    if parts.scheme != "opc.tcp" or not parts.hostname:
        raise DeployError(f"--opcua {url!r}: give opc.tcp://HOST:4840 (the address the station listens on)")
    return Endpoint("opc.tcp", parts.hostname, _port(parts, 4840, "--opcua", url), parts.path.strip("/"))


def parse_modbus_url(url: str) -> Endpoint:
    """``modbus://host[:502]``: the address the station's Modbus TCP server listens on."""
    parts = urlsplit(url)
    if parts.scheme != "modbus" or not parts.hostname:
        raise DeployError(f"--modbus {url!r}: give modbus://HOST:502 (the address the station listens on)")
    return Endpoint("modbus", parts.hostname, _port(parts, 502, "--modbus", url), "")


def _port(parts, default: int, option: str, url: str) -> int:
    try:
        return parts.port or default
    except ValueError:
        raise DeployError(f"{option} {url!r}: the port must be a number from 1 to 65535") from None


def read_mqtt_credentials(path: Path) -> tuple[str, str]:
    """(user, password) from a file of two lines; ``DeployError`` naming the file otherwise."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DeployError(f"--publish-credentials {path}: cannot read it ({exc})") from None
    if len(lines) < 2 or not lines[0]:
        raise DeployError(f"--publish-credentials {path}: needs two lines, the user name and the password")
    return lines[0], lines[1]


def check_ca_file(path: Path) -> None:
    """``--publish-ca``: PEM certificates TLS can load; ``DeployError`` naming the file otherwise (checked before the
    station starts: the publisher process would fail on it at every restart)."""
    import ssl

    try:
        ssl.create_default_context().load_verify_locations(cafile=str(path))
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise DeployError(f"--publish-ca {path}: not a CA certificate file TLS can load ({exc}); give the broker's "
                          "CA certificate in PEM") from None


def read_opcua_users(path: Path) -> dict[str, str]:
    """``name:password`` per line (``#`` comments); ``DeployError`` naming the file and line otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DeployError(f"--opcua-users {path}: cannot read it ({exc})") from None
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, password = line.partition(":")
        if not sep or not name or not password:
            raise DeployError(f"--opcua-users {path}:{number}: write NAME:PASSWORD, one user a line")
        users[name] = password
    if not users:
        raise DeployError(f"--opcua-users {path}: holds no user (NAME:PASSWORD, one a line)")
    return users


def build_line_config(publish: str | None = None, publish_credentials: Path | None = None,
                      publish_ca: Path | None = None, station_id: str | None = None, opcua: str | None = None,
                      opcua_users: Path | None = None, opcua_cert: Path | None = None, opcua_key: Path | None = None,
                      modbus: str | None = None, handshake_images: Path | None = None, image_timeout_s: float = 5.0,
                      acknowledge_timeout_s: float = 10.0) -> LineConfig:
    """The CLI's options -> ``LineConfig``, every URL and file checked (``DeployError`` in one line)."""
    config = LineConfig(publish=parse_mqtt_url(publish) if publish else None, publish_credentials=publish_credentials,
                        publish_ca=publish_ca, opcua=parse_opcua_url(opcua) if opcua else None, opcua_users=opcua_users,
                        opcua_cert=opcua_cert, opcua_key=opcua_key, modbus=parse_modbus_url(modbus) if modbus else None,
                        handshake_images=handshake_images,
                        timeouts=HandshakeTimeouts(image_s=image_timeout_s, acknowledge_s=acknowledge_timeout_s))
    if station_id:
        config.station_id = station_id
    if publish_credentials is not None:
        read_mqtt_credentials(publish_credentials)
    if publish_ca is not None:
        check_ca_file(publish_ca)
    if opcua_users is not None:
        read_opcua_users(opcua_users)
    if (publish_credentials or publish_ca) and config.publish is None:
        raise DeployError("--publish-credentials and --publish-ca go with --publish mqtt://HOST:1883/PREFIX")
    if (opcua_users or opcua_cert or opcua_key) and config.opcua is None:
        raise DeployError("--opcua-users, --opcua-cert and --opcua-key go with --opcua opc.tcp://HOST:4840")
    if handshake_images is not None and not config.handshake:
        raise DeployError("--handshake-images goes with --opcua or --modbus (the PLC handshake)")
    return config
