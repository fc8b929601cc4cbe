"""Model administration: ``GET /v1/model`` (manifest summary of the serving model) and
``POST /v1/reload`` (load a bundle, JSON ``{"bundle": PATH, "force": BOOL}``, default: the serving bundle's folder
again; verify and warm it up, switch atomically; SIGHUP does the same for the folder). The answer says what
changed (``changes``: old and new model id, classes, threshold, ok_class ... where they differ); a bundle
that is refused (``deploy.manifest``: a value that steers decisions missing, a class list that does not fit
the model) answers 409 with the reason, and the old model keeps serving. A bundle of another line or class set
is 409 ``line_or_classes_differ`` (with ``differs``) unless ``force`` is true. With ``--tokens`` the route needs
the ``admin`` scope (``deploy.serve.access``); every attempt is audited (``deploy.serve.reloads``).

No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations at runtime.
"""

import json
from typing import Any

from deploy.serve.access import access_of, actor_of
from deploy.serve.reloads import Actor, ReloadOutcome, refuse, reload_and_audit
from deploy.serve.state import StationState, json_response, station_of

MAX_RELOAD_BODY = 64 * 1024


def build_router():
    from fastapi import APIRouter, Request
    from fastapi.responses import Response

    router = APIRouter()

    @router.api_route("/v1/model", methods=["GET", "HEAD"])
    async def model_summary(request: Request) -> Response:
        return json_response(station_of(request).host.current.summary())

    @router.post("/v1/reload")
    async def reload(request: Request) -> Response:
        return await reload_bundle(station_of(request), request)

    return router


async def reload_bundle(station: StationState, request: Any):
    """Refused, audited, before any bundle is read: ``--no-reload`` (403), a body that is not declared JSON (415:
    a web page can send ``text/plain`` across origins without a CORS preflight, never ``application/json``), a body
    over ``MAX_RELOAD_BODY`` (413) or not ``{"bundle": PATH, "force": BOOL}`` (400)."""
    from starlette.concurrency import run_in_threadpool

    access = access_of(request)
    who, address = actor_of(request)
    actor = Actor(who, address, request.state.request_id)

    def refused(kind: str, message: str, status: int, bundle: str | None = None):
        return _answer(station, refuse(access.audit, station, actor, kind, message, status, bundle))

    if not station.config.access.allow_reload:
        return refused("reload_disabled", "this station was started with --no-reload: restart it on the new bundle "
                       "(or send it SIGHUP from its machine to reload its bundle folder)", 403)
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        return refused("unsupported_media_type", f"a reload is JSON: send Content-Type: application/json (got "
                       f"{media[:60] or 'none'!r}) with {{\"bundle\": PATH}}, or an empty body for the serving folder", 415)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_RELOAD_BODY:
            return refused("too_large", f"a reload request is a small JSON object (at most {MAX_RELOAD_BODY} bytes)", 413)
    try:
        bundle, force = parse_reload_body(body)
    except ValueError as exc:
        return refused("bad_request", str(exc), 400, bundle_sent(body))
    outcome = await run_in_threadpool(reload_and_audit, station, access.audit, actor, bundle, force)
    return _answer(station, outcome)


def parse_reload_body(body: bytes) -> tuple[str | None, bool]:
    """(bundle or None for the serving folder, force) from ``{"bundle": PATH, "force": BOOL}`` (both optional)."""
    usage = 'send JSON {"bundle": "/path/to/bundle"} (add "force": true to change line or classes; no body: reload ' \
        "the serving bundle's folder)"
    if not body.strip():
        return None, False
    try:
        payload = json.loads(body)
    except ValueError:
        raise ValueError(usage) from None
    if not isinstance(payload, dict) or set(payload) - {"bundle", "force"}:
        raise ValueError(usage)
    bundle, force = payload.get("bundle"), payload.get("force", False)
    if (bundle is not None and (not isinstance(bundle, str) or not bundle)) or not isinstance(force, bool):
        raise ValueError(usage)
    if bundle is not None and "\x00" in bundle:
        raise ValueError('"bundle" holds a NUL byte (U+0000), which no path can hold: send the bundle folder\'s path')
    return bundle, force


def bundle_sent(body: bytes) -> str | None:
    """The ``bundle`` a refused body named, when it is a string, for the audit record (which said null)."""
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    bundle = payload.get("bundle") if isinstance(payload, dict) else None
    return bundle if isinstance(bundle, str) else None


def _answer(station: StationState, outcome: ReloadOutcome):
    if outcome.answer is not None:
        return json_response(outcome.answer)
    return station.error_response(outcome.result, outcome.message, outcome.status, **(outcome.extra or {}))
