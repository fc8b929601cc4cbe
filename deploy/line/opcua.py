"""The station as an OPC UA server (asyncua, the ``line`` extra): its status, counters, last result and the PLC
handshake as variables in namespace ``urn:inspection-kit:station``, string node ids (``ns=2;s=Station.Ready``):

    Station.Ready, Station.Station, Station.Line, Station.ModelId
    Station.Counters.Accepted | Rejected | Review                         (UInt32)
    Station.LastResult.PartId | Action | ClassName | ClassIndex | Confidence | DecisionId | Time
    Station.Handshake.Trigger | PartId | Acknowledge                      written by the PLC
    Station.Handshake.TriggerReady | Busy | ResultReady | State | Sequence | ResultPartId | ActionCode |
                      ClassIndex | Confidence | DecisionId | Error | ErrorCode | ErrorText      written by the station

The state machine is ``deploy.line.handshake``. Security by OPC UA's own mechanisms: with ``--opcua-cert`` and
``--opcua-key`` the endpoint offers only Basic256Sha256 sign & encrypt; with ``--opcua-users`` a session needs a
user name and password from that file (anonymous sessions are refused). The server runs in a thread of its own
with its own event loop; it polls the PLC's three inputs every ``POLL_S`` straight from its address space.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import logging
import threading
from typing import Any

from deploy.errors import DeployError
from deploy.line.config import read_opcua_users
from deploy.line.handshake import Handshake, Outputs
from deploy.line.mqtt import line_extra_missing
from deploy.line.tally import StationView

NAMESPACE = "urn:inspection-kit:station"
POLL_S = 0.005
STATUS_EVERY_S = 0.2

# (node id, variant type, initial value, writable by the PLC)
STATION_NODES = [("Station.Ready", "Boolean", False), ("Station.Station", "String", ""),
                 ("Station.Line", "String", ""), ("Station.ModelId", "String", ""),
                 ("Station.Counters.Accepted", "UInt32", 0), ("Station.Counters.Rejected", "UInt32", 0),
                 ("Station.Counters.Review", "UInt32", 0),
                 ("Station.LastResult.PartId", "String", ""), ("Station.LastResult.Action", "String", ""),
                 ("Station.LastResult.ClassName", "String", ""), ("Station.LastResult.ClassIndex", "Int16", -1),
                 ("Station.LastResult.Confidence", "Double", 0.0), ("Station.LastResult.DecisionId", "String", ""),
                 ("Station.LastResult.Time", "String", "")]
PLC_INPUTS = [("Station.Handshake.Trigger", "Boolean", False), ("Station.Handshake.PartId", "String", ""),
              ("Station.Handshake.Acknowledge", "Boolean", False)]
# handshake outputs: node id -> (variant type, the Outputs field)
HANDSHAKE_OUTPUTS = {"Station.Handshake.TriggerReady": ("Boolean", "ready"),
                     "Station.Handshake.Busy": ("Boolean", "busy"),
                     "Station.Handshake.ResultReady": ("Boolean", "result_ready"),
                     "Station.Handshake.State": ("Int16", "state"), "Station.Handshake.Sequence": ("UInt16", "sequence"),
                     "Station.Handshake.ResultPartId": ("String", "part_id"),
                     "Station.Handshake.ActionCode": ("Int16", "action_code"),
                     "Station.Handshake.ClassIndex": ("Int16", "class_index"),
                     "Station.Handshake.Confidence": ("Double", "confidence"),
                     "Station.Handshake.DecisionId": ("String", "decision_id"),
                     "Station.Handshake.Error": ("Boolean", "error"),
                     "Station.Handshake.ErrorCode": ("Int16", "error_code"),
                     "Station.Handshake.ErrorText": ("String", "error_text")}
INITIAL_OUTPUTS = Outputs()


def _user_manager(users: dict[str, str]):
    from asyncua.crypto.permission_rules import User, UserRole
    from asyncua.server.user_managers import UserManager

    class FileUsers(UserManager):
        """Users and passwords from ``--opcua-users``; compared in constant time."""

        def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                     certificate: Any = None):
            expected = users.get(username or "")
            if expected is None or password is None or not hmac.compare_digest(expected.encode(), password.encode()):
                return None
            return User(role=UserRole.User, name=username)

    return FileUsers()


def opcua_warnings(config) -> list[str]:
    """What an operator should hear at start: passwords without encryption."""
    if config.opcua is not None and config.opcua_users is not None and config.opcua_cert is None:
        return ["--opcua-users without --opcua-cert: OPC UA passwords travel in plain text; add --opcua-cert and "
                "--opcua-key (Basic256Sha256 sign & encrypt)"]
    return []


class OpcUaServer:
    def __init__(self, view: StationView) -> None:
        try:
            import asyncua  # noqa: F401
        except ImportError as exc:
            raise line_extra_missing(exc) from None
        self.view, self.config = view, view.config
        self.endpoint = view.config.opcua
        self.users = read_opcua_users(self.config.opcua_users) if self.config.opcua_users else None
        if (self.config.opcua_cert is None) != (self.config.opcua_key is None):
            raise DeployError("OPC UA security needs both --opcua-cert and --opcua-key")
        self.handshake = Handshake(view.decide, view.ready, self.config.timeouts)
        library_log = logging.getLogger("asyncua")
        if library_log.level == logging.NOTSET:  # its start-up warnings are about security: said once, below, if due
            library_log.setLevel(logging.ERROR)
        self._stop = threading.Event()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"opc.tcp://{self.endpoint.host}:{self.endpoint.port}/{self.endpoint.path}"

    def start(self, timeout_s: float = 30.0) -> "OpcUaServer":
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="line-opcua", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout_s) or self._error is not None:
            self.stop()
            error = self._error
            if isinstance(error, OSError) and error.errno == errno.EADDRINUSE or error is None:
                hint = "is the port taken? pick another"
            else:  # a certificate or key that does not load: the port has nothing to do with it
                hint = "check --opcua-cert and --opcua-key" if self.config.opcua_cert else "see the cause above"
            raise DeployError(f"--opcua {self.url}: the OPC UA server did not start ({error or 'time-out'}); {hint}")
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.handshake.close()

    async def _build(self):
        from asyncua import Server, ua

        server = Server(user_manager=_user_manager(self.users) if self.users else None)
        await server.init()
        # asyncua's default user manager makes any session that names the user "admin" (whatever its password) an
        # administrator, who may write the station's outputs (ResultReady, ActionCode, counters) and delete nodes:
        # no client is ever more than a PLC here
        server.allow_remote_admin(False)
        server.set_endpoint(self.url)
        server.set_server_name("inspection-kit station")
        if self.config.opcua_cert is not None:
            await server.load_certificate(str(self.config.opcua_cert))
            await server.load_private_key(str(self.config.opcua_key))
            server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
        else:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        if self.users:
            server.set_security_IDs(["Username"])
        idx = await server.register_namespace(NAMESPACE)
        folders: dict[str, Any] = {"": server.nodes.objects}
        nodes: dict[str, Any] = {}
        every = [(n, t, v, False) for n, t, v in STATION_NODES] + [(n, t, v, True) for n, t, v in PLC_INPUTS] + \
            [(n, t, getattr(INITIAL_OUTPUTS, f), False) for n, (t, f) in HANDSHAKE_OUTPUTS.items()]
        for name, vtype, value, writable in every:
            parent = await self._folder(folders, name.rpartition(".")[0], idx)
            node = await parent.add_variable(ua.NodeId(name, idx), ua.QualifiedName(name.rpartition(".")[2], idx),
                                             ua.Variant(value, getattr(ua.VariantType, vtype)))
            if writable:
                await node.set_writable()
            nodes[name] = (node, vtype)
        return server, nodes

    async def _folder(self, folders: dict[str, Any], path: str, idx: int):
        from asyncua import ua

        if path not in folders:
            parent = await self._folder(folders, path.rpartition(".")[0], idx)
            folders[path] = await parent.add_object(ua.NodeId(path, idx), ua.QualifiedName(path.rpartition(".")[2], idx))
        return folders[path]

    async def _main(self) -> None:
        try:
            server, nodes = await self._build()
            starting = logging.getLogger("asyncua.server.server")
            level = starting.level
            starting.setLevel(logging.CRITICAL)  # its traceback of a taken port: start() says it in one line
            try:
                await server.start()
            finally:
                starting.setLevel(level)
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._started.set()
            return
        self._started.set()
        try:
            await self._serve(server, nodes)
        finally:
            await server.stop()

    async def _serve(self, server: Any, nodes: dict[str, Any]) -> None:
        from asyncua import ua

        shown: dict[str, Any] = {}

        async def show(name: str, value: Any) -> None:
            if shown.get(name, object()) == value:
                return
            node, vtype = nodes[name]
            await server.write_attribute_value(node.nodeid, ua.DataValue(ua.Variant(value, getattr(ua.VariantType, vtype))))
            shown[name] = value

        def read(name: str) -> Any:
            return server.read_attribute_value(nodes[name][0].nodeid).Value.Value

        loop, status_at, tally_version = asyncio.get_running_loop(), 0.0, -1
        while not self._stop.is_set():
            out = self.handshake.step(bool(read("Station.Handshake.Trigger")),
                                      bool(read("Station.Handshake.Acknowledge")),
                                      str(read("Station.Handshake.PartId") or ""))
            for name, (_, field) in HANDSHAKE_OUTPUTS.items():
                await show(name, getattr(out, field))
            if loop.time() - status_at >= STATUS_EVERY_S:
                status_at = loop.time()
                await self._show_status(show)
            version, counts, last = self.view.tally.snapshot()
            if version != tally_version:
                tally_version = version
                await self._show_tally(show, counts, last)
            await asyncio.sleep(POLL_S)

    async def _show_status(self, show) -> None:
        await show("Station.Ready", bool(_safe(self.view.ready, False)))
        await show("Station.Station", self.view.station_id)
        await show("Station.Line", _safe(self.view.line, None) or "")
        await show("Station.ModelId", _safe(self.view.model_id, None) or "")

    async def _show_tally(self, show, counts: dict[str, int], last) -> None:
        await show("Station.Counters.Accepted", counts["accept"] % 2**32)
        await show("Station.Counters.Rejected", counts["reject"] % 2**32)
        await show("Station.Counters.Review", counts["review"] % 2**32)
        if last is not None:
            await show("Station.LastResult.PartId", last.part_id)
            await show("Station.LastResult.Action", last.action)
            await show("Station.LastResult.ClassName", last.label)
            await show("Station.LastResult.ClassIndex", last.class_index)
            await show("Station.LastResult.Confidence", float(last.confidence))
            await show("Station.LastResult.DecisionId", last.decision_id)
            await show("Station.LastResult.Time", last.time)


def _safe(call, default):
    try:
        return call()
    except Exception:
        return default
