"""The station's routes, one ``APIRouter`` per concern; each module builds its router in a function,
so FastAPI (the ``serve`` extra) is imported only when an app is built.

    status       GET /v1/health, GET /v1/ready
    admin        GET /v1/model, POST /v1/reload
    metrics      GET /metrics
    inspection   POST /v1/inspect
    decisions    GET /v1/decisions/{decision_id}, GET /v1/decisions?part_id=P (read back from the decision log)

A route finds what it shares with the others in ``request.app.state.station`` (``deploy.serve.state.station_of``).
"""

from __future__ import annotations


def build_routers() -> list:
    """Every router of the station, in the order their routes are matched."""
    from deploy.serve.routes import admin, decisions, inspection, metrics, status

    return [status.build_router(), admin.build_router(), metrics.build_router(), inspection.build_router(),
            decisions.build_router()]
