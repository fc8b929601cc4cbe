"""``create_app``: the FastAPI app of one station, built from the routers (``deploy.serve.routes``),
with its error handlers and its lifespan (decision-log group commit, SIGHUP reload, clean stop).

Every error is one JSON line ``{"error": KIND, "message": ...}`` and counted by kind in /metrics;
user input gets a 4xx, only a bug a 500. FastAPI and Starlette are imported inside functions (the
``serve`` extra).
"""

from __future__ import annotations

import asyncio
import signal
import threading
from contextlib import asynccontextmanager
from typing import Any

from deploy.errors import DeployError
from deploy.serve.config import ServeConfig
from deploy.serve.models import LoadedModel
from deploy.serve.state import StationState


def serve_extra_missing(exc: ImportError) -> DeployError:
    return DeployError(f"deploy serve needs the serve extra ({exc.name} is not installed): "
                       'pip install "inspection-kit[serve]"')


def create_app(model: LoadedModel, config: ServeConfig):
    """The FastAPI app serving ``model``; ``app.state.host`` swaps models, ``app.state.log`` logs,
    ``app.state.station`` is what the routes share."""
    try:
        from fastapi import FastAPI

        from deploy.serve.routes import build_routers
        routers = build_routers()
    except ImportError as exc:
        raise serve_extra_missing(exc) from None

    station = StationState.serving(model, config)
    app = FastAPI(title="inspection-kit station", lifespan=_lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json")
    app.state.station = station
    app.state.host, app.state.log, app.state.metrics = station.host, station.log, station.metrics
    _add_error_handlers(app, station)
    for router in routers:
        app.include_router(router)
    _add_access(app, station)
    return app


def _add_access(app: Any, station: StationState) -> None:
    """API keys, request ids, access log, audit, idempotency, kept images, systemd (``deploy.serve.access``), and
    the OpenAPI description that docs/openapi.json is a copy of (``deploy.serve.openapi``)."""
    from deploy.serve.access import AccessMiddleware, StationAccess
    from deploy.serve.openapi import install_openapi

    app.state.access = StationAccess(station)
    app.add_middleware(AccessMiddleware, access=app.state.access)
    install_openapi(app)


@asynccontextmanager
async def _lifespan(app: Any):
    from deploy.serve.reloads import reload_on_signal

    station: StationState = app.state.station
    station.start()
    if threading.current_thread() is threading.main_thread():  # SIGHUP: reload the bundle folder (audited)
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP,
                                    lambda: loop.run_in_executor(None, reload_on_signal, station, app.state.access.audit))
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    app.state.access.start()  # systemd: READY=1, then the watchdog
    yield
    app.state.access.stop()
    station.stop()
    line = getattr(app.state, "line", None)
    if line is not None:  # after the log's last sync: the MQTT sink says offline, the PLC servers close
        line.stop()


def _add_error_handlers(app: Any, station: StationState) -> None:
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import ClientDisconnect

    async def http_error(request: Any, exc: StarletteHTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        return station.error_response(kind, str(exc.detail), exc.status_code)

    async def validation_error(request: Any, exc: RequestValidationError):
        return station.error_response("bad_request", "; ".join(str(e.get("msg")) for e in exc.errors())[:500], 422)

    async def client_gone(request: Any, exc: ClientDisconnect):  # nobody reads the answer
        return station.error_response("client_disconnect", "the client closed the connection before its body was sent",
                                      400)

    async def internal_error(request: Any, exc: Exception):  # a bug outside AccessMiddleware, which answers the rest
        return station.internal_error(exc)

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(ClientDisconnect, client_gone)
    app.add_exception_handler(Exception, internal_error)
