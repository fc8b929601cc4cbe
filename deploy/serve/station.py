"""The listening socket and the uvicorn server around a station's app (``deploy serve``'s runner).

uvicorn is imported inside functions: the edge install without the serve extra keeps working for
``deploy predict``.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from deploy.decision_log import check_log_folder
from deploy.errors import DeployError
from deploy.serve.app import create_app, serve_extra_missing
from deploy.serve.config import ServeConfig
from deploy.serve.images import check_image_folder
from deploy.serve.models import load_model
from deploy.serve.protocol import KEEP_ALIVE_S, MAX_HEADER_BYTES, station_protocol


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the server starts, so ``--port 0`` can say which port it got."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise DeployError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


@dataclass
class Station:
    """A configured uvicorn server around one app; ``run()`` blocks (the CLI), ``start()`` runs it in a
    thread (tests, benchmarks) until ``stop()``."""

    app: Any
    sock: socket.socket
    server: Any = None
    thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"{'https' if self.app.state.station.config.access.tls_cert else 'http'}://{host}:{port}"

    def _server(self):
        import uvicorn

        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="on",
                                timeout_graceful_shutdown=10, server_header=False, date_header=False,
                                **tls_options(self.app.state.station.config))
        # a deadline and a bound for the headers, JSON protocol errors (deploy.serve.protocol)
        config.http = station_protocol(self.app.state.station.config.read_timeout_s)
        config.timeout_keep_alive, config.h11_max_incomplete_event_size = KEEP_ALIVE_S, MAX_HEADER_BYTES
        self.server = uvicorn.Server(config)
        return self.server

    def run(self) -> None:
        self._server().run(sockets=[self.sock])

    def start(self, timeout_s: float = 30.0) -> "Station":
        self.thread = start_in_thread(self._server(), self.sock, timeout_s, "the server")
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout_s)
        self.sock.close()


def start_in_thread(server: Any, sock: socket.socket, timeout_s: float, what: str) -> threading.Thread:
    """Run a uvicorn ``server`` on ``sock`` in a daemon thread and wait until it serves (tests, ``deploy review``)."""
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise DeployError(f"{what} did not start")
        time.sleep(0.01)
    return thread


def tls_options(config: ServeConfig) -> dict[str, str]:
    """uvicorn's own TLS (``--tls-cert``, ``--tls-key``); nothing without them."""
    access = config.access
    if access.tls_cert is None:
        return {}
    return {"ssl_certfile": str(access.tls_cert), "ssl_keyfile": str(access.tls_key)}


def check_tls(config: ServeConfig) -> None:
    """Both files or neither, and a certificate and key that load together, checked before the model loads."""
    check_tls_files(config.access.tls_cert, config.access.tls_key)


def check_tls_files(cert: Any, key: Any) -> None:
    """``check_tls`` for a certificate and key given as paths (``deploy review`` too)."""
    import ssl

    if (cert is None) != (key is None):
        raise DeployError("TLS needs both --tls-cert CERT.pem and --tls-key KEY.pem")
    if cert is None:
        return
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise DeployError(f"--tls-cert {cert} / --tls-key {key}: cannot load them ({exc}); give a PEM certificate "
                          "(chain) and its unencrypted PEM key") from None


def build_station(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000) -> Station:
    """Load and warm the model (errors are ``DeployError``: one line in the CLI), bind, build the app."""
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise serve_extra_missing(exc) from None
    if config.max_batch < 1:
        raise DeployError(f"--max-batch must be at least 1 (got {config.max_batch})")
    if config.max_wait_ms < 0:
        raise DeployError(f"--max-wait-ms must be >= 0 (got {config.max_wait_ms})")
    if config.log_dir is not None:  # before the model loads: a station that cannot record must not start
        check_log_folder(config.log_dir)
    if config.access.keep_images is not None:
        check_image_folder(config.access.keep_images)
    check_tls(config)
    model = load_model(config.bundle, config)
    sock = bind_socket(host, port)
    app = create_app(model, config)
    if config.line.any:  # MQTT, OPC UA, Modbus: started before the first part, stopped with the app (lifespan)
        from deploy.serve.line import start_line

        try:
            app.state.line = start_line(app.state.station, config.line)
        except BaseException:
            sock.close()
            raise
    return Station(app, sock)
