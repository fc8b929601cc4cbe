"""Model administration: ``GET /v1/model`` (manifest summary of the serving model) and
``POST /v1/reload`` (load a bundle, JSON ``{"bundle": PATH}``, default: the serving bundle's folder
again; verify and warm it up, switch atomically; SIGHUP does the same for the folder). The answer says what
changed (``changes``: old and new model id, classes, threshold, ok_class ... where they differ); a bundle
that is refused (``deploy.manifest``: a value that steers decisions missing, a class list that does not fit
the model) answers 409 with the reason, and the old model keeps serving.

No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations at runtime.
"""

import json
from typing import Any

from deploy.serve.models import ReloadError, ReloadForbidden, model_changes
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
    from starlette.concurrency import run_in_threadpool

    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_RELOAD_BODY:
            return station.error_response("too_large", f"a reload request is a small JSON object (at most "
                                          f"{MAX_RELOAD_BODY} bytes)", 413)
    bundle = None
    if body.strip():
        try:
            payload = json.loads(body)
            bundle = payload.get("bundle") if isinstance(payload, dict) else None
        except ValueError:
            pass
        if not isinstance(bundle, str) or not bundle:
            return station.error_response("bad_request", 'send JSON {"bundle": "/path/to/bundle"} (or no body: reload '
                                          "the serving bundle's folder)", 400)
    try:
        new, old = await run_in_threadpool(station.reload, bundle)
    except ReloadForbidden as exc:
        station.metrics.reloads.labels("failed").inc()
        return station.error_response("reload_forbidden", str(exc), 403, model_id=station.host.current.model_id)
    except ReloadError as exc:
        station.metrics.reloads.labels("failed").inc()
        return station.error_response("reload_failed", str(exc), 409, model_id=station.host.current.model_id)
    return json_response({"model_id": new.model_id, "previous_model_id": old.model_id, "bundle": str(new.bundle_dir),
                          "warmup_ms": round(new.warmup_ms, 2), "changes": model_changes(old, new)})
