"""Who may use the station, and the record of who did: ``StationAccess`` (what the access features of one station
share: API keys, access log, audit record, idempotency keys, kept images, systemd notifications) and
``AccessMiddleware``, the one ASGI layer every request passes through.

The middleware, per request: take ``X-Request-Id`` (or make one) and echo it on the answer; check the API key
against the route's scope (``required_scope``); answer 401 / 403 itself when it fails (with ``WWW-Authenticate``,
RFC 6750); write the access-log line when the answer has gone out. It is plain ASGI (no ``BaseHTTPMiddleware``), so
a request body still streams to the route as it arrives.

Which routes need which scope, with ``--tokens`` (without, every route is open, as before):

    open      GET /v1/health, GET /v1/ready (liveness and readiness probes), GET /openapi.json
    metrics   GET /metrics (a Prometheus scraper's key: ``authorization: {credentials_file: ...}`` in its job)
    inspect   POST /v1/inspect, GET /v1/decisions..., GET /v1/model, and any other path
    admin     POST /v1/reload
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from deploy.serve.audit import AccessLog, AuditLog
from deploy.serve.auth import ApiKey, TokenStore
from deploy.serve.idempotency import IdempotencyStore
from deploy.serve.images import ImageStore
from deploy.serve.protocol import MAX_HEADER_BYTES
from deploy.serve.state import StationState
from deploy.serve.systemd import Notifier

OPEN_ROUTES = frozenset({"/v1/health", "/v1/ready", "/openapi.json"})
ROUTE_SCOPES = {"/metrics": "metrics", "/v1/reload": "admin"}  # every other route: inspect
REALM = 'Bearer realm="inspection-station"'
REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:@/+=-]{1,128}$")


def required_scope(path: str) -> str | None:
    """The scope a route needs (None: open to all, keys or not). A trailing slash changes nothing (the router would
    redirect ``/v1/reload/`` to ``/v1/reload``): the check never depends on how a path is spelt."""
    path = path.rstrip("/") or "/"
    return None if path in OPEN_ROUTES else ROUTE_SCOPES.get(path, "inspect")


class StationAccess:
    """The access side of one station (``app.state.access``)."""

    def __init__(self, station: StationState) -> None:
        config, settings = station.config, station.config.access
        self.station = station
        self.tokens = TokenStore(settings.tokens_file) if settings.tokens_file is not None else None
        self.access_log = AccessLog(config.log_dir)
        self.audit = AuditLog(config.log_dir)
        self.idempotency = IdempotencyStore(settings.idempotency_ttl_s, settings.idempotency_max_keys, config.log_dir)
        self.images = (ImageStore(settings.keep_images, settings.keep_images_max_count, settings.keep_images_max_bytes)
                       if settings.keep_images is not None else None)
        self.notifier = Notifier(healthy=lambda: station.ready)
        self.search_slots = asyncio.Semaphore(2)  # GET /v1/decisions reads the log from disk: two at a time

    def start(self) -> None:
        """On the event loop, once the model is warm and the socket listens: tell systemd (Type=notify)."""
        self.notifier.start(status=f"serving {self.station.host.current.model_id[:12]}")

    def stop(self) -> None:
        self.notifier.stop()
        if self.tokens is not None:
            self.tokens.close()
        if self.images is not None:
            self.images.close()
        for part in (self.access_log, self.audit, self.idempotency):
            part.close()

    async def authorize(self, scope: dict[str, Any]) -> tuple[ApiKey | None, Any]:
        """(the key, None) when the request may go on; (key or None, the 401/403 answer) when not."""
        need = required_scope(scope["path"])
        if self.tokens is None or need is None:
            return None, None
        token = _bearer(scope)
        if token is None:
            return None, self._deny("unauthenticated", "this station needs an API key: send the header "
                                    "'Authorization: Bearer KEY' (keys: deploy token add)", 401, REALM)
        key, decided = self.tokens.quick(token)
        if not decided:  # scrypt on the key store's own thread, at most once a second per key id (deploy.serve.auth)
            key = await asyncio.wrap_future(self.tokens.check(token))
        if key is None:
            return None, self._deny("invalid_key", "the API key is not one of this station's (revoked, mistyped or "
                                    "from another station)", 401, f'{REALM}, error="invalid_token"')
        if not key.allows(need):
            return key, self._deny("insufficient_scope", f"the key {key.name!r} has scope {', '.join(key.scopes)}; "
                                   f"{scope['path']} needs {need}", 403,
                                   f'{REALM}, error="insufficient_scope", scope="{need}"')
        return key, None

    def _deny(self, kind: str, message: str, status: int, challenge: str):
        response = self.station.error_response(kind, message, status)
        response.headers["WWW-Authenticate"] = challenge
        return response

    def log_request(self, scope: dict[str, Any], answer: dict[str, Any], key_name: str | None, started: float) -> None:
        client = scope.get("client")
        self.access_log.append({
            "client": client[0] if client else None, "method": scope["method"], "route": scope["path"][:200],
            "status": answer["status"], "duration_ms": round((time.perf_counter() - started) * 1000.0, 3),
            "request_id": scope["state"]["request_id"], "key": key_name,
            "decision_id": answer.get("decision_id")})


def access_of(request: Any) -> StationAccess:
    return request.app.state.access


def actor_of(request: Any) -> tuple[str, str | None]:
    """(who, from which address) for the audit record: the key's name, or ``anonymous`` without ``--tokens``."""
    client = request.client
    return request.state.key_name or "anonymous", client.host if client else None


def _header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def header_bytes(scope: dict[str, Any]) -> int:
    """The request line and headers as sent, near enough: method, target, each ``name: value`` and its CRLF. The
    connection (``deploy.serve.protocol``) bounds headers that arrive in pieces; one write of 70 KB arrived whole and
    passed, so the complete request is measured here too."""
    target = len(scope.get("raw_path") or scope["path"].encode("utf-8")) + len(scope.get("query_string") or b"")
    return len(scope["method"]) + target + 12 + sum(len(k) + len(v) + 4 for k, v in scope["headers"])


def _bearer(scope: dict[str, Any]) -> str | None:
    raw = _header(scope, b"authorization")
    if raw is None:
        return None
    scheme, _, token = raw.decode("latin-1").strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


class AccessMiddleware:
    """Request id, API key, access log: around every HTTP request of the app."""

    def __init__(self, app: Any, access: StationAccess) -> None:
        self.app, self.access = app, access

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        given = _header(scope, b"x-request-id")
        request_id = given.decode("ascii") if given is not None and REQUEST_ID.match(given) else _new_request_id()
        state = scope.setdefault("state", {})
        state["request_id"], state["key_name"] = request_id, None
        answer: dict[str, Any] = {"status": 500}

        async def send_with_request_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                answer["status"], answer["started"] = message["status"], True
                headers = list(message.get("headers", []))
                answer["decision_id"] = next((v.decode("latin-1") for k, v in headers if k == b"x-decision-id"), None)
                message = {**message, "headers": headers + [(b"x-request-id", request_id.encode("ascii"))]}
            await send(message)

        try:
            await self._answer(scope, receive, send_with_request_id, request_id)
        except Exception as exc:  # a bug: answered here, so the 500 carries the request id too
            if answer.get("started"):
                raise
            await self.access.station.internal_error(exc)(scope, receive, send_with_request_id)
        finally:
            self.access.log_request(scope, answer, state["key_name"], started)

    async def _answer(self, scope: dict[str, Any], receive: Any, send: Any, request_id: str) -> None:
        """Headers over the bound (431), then the key (401 / 403, a refused reload audited), then the app."""
        if header_bytes(scope) > MAX_HEADER_BYTES:
            too_large = self.access.station.error_response(
                "headers_too_large", f"the request line and headers are over {MAX_HEADER_BYTES} bytes", 431)
            return await too_large(scope, receive, send)
        key, denial = await self.access.authorize(scope)
        scope["state"]["key_name"] = key.name if key else None
        if denial is None:
            return await self.app(scope, receive, send)
        if required_scope(scope["path"]) == "admin":  # a refused attempt at a model change is audited too
            self.access.audit.append(refused_reload_record(scope, request_id, key, denial.status_code))
        await denial(scope, receive, send)


def refused_reload_record(scope: dict[str, Any], request_id: str, key: ApiKey | None, status: int) -> dict[str, Any]:
    client = scope.get("client")
    return {"event": "reload", "result": "unauthenticated" if status == 401 else "insufficient_scope",
            "status": status, "who": key.name if key else None, "address": client[0] if client else None,
            "request_id": request_id}


def _new_request_id() -> str:
    import uuid

    return uuid.uuid4().hex
