"""``GET /v1/health`` (the process is alive) and ``GET /v1/ready`` (a warmed-up model is serving and the
decision log takes records: a station that cannot record a decision gets no parts; 503 with the reason and
``Retry-After`` otherwise).

No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations at runtime.
"""

import time

from deploy.serve.state import json_response, station_of


def build_router():
    from fastapi import APIRouter, Request
    from fastapi.responses import Response

    router = APIRouter()

    @router.api_route("/v1/health", methods=["GET", "HEAD"])
    async def health(request: Request) -> Response:
        station = station_of(request)
        return json_response({"status": "alive", "uptime_s": round(time.time() - station.started_at, 3)})

    @router.api_route("/v1/ready", methods=["GET", "HEAD"])
    async def ready(request: Request) -> Response:
        station = station_of(request)
        reason = station.not_ready_reason()
        if reason is not None:
            response = json_response({"ready": False, "reason": reason}, 503)
            response.headers["Retry-After"] = "5"
            return response
        return json_response({"ready": True, "model_id": station.host.current.model_id})

    return router
