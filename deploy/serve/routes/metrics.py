"""``GET /metrics``: the station's Prometheus metrics (``deploy.serve.metrics``) in text format.

No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations at runtime.
"""

from deploy.serve.state import station_of


def build_router():
    from fastapi import APIRouter, Request
    from fastapi.responses import Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    router = APIRouter()

    @router.api_route("/metrics", methods=["GET", "HEAD"])
    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(station_of(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router
