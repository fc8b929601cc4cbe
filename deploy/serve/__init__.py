"""``deploy serve``: the inspection station over HTTP (FastAPI + uvicorn, the ``serve`` extra).

    POST /v1/inspect   the image as the body (PNG, JPEG, BMP, TIFF; 8/16 bit; gray/colour) or as a
                       multipart file; ``part_id`` as a query parameter, X-Part-Id header or form field
    GET  /v1/health    the process is alive           GET /v1/ready   a warmed-up model is serving
    GET  /v1/model     manifest summary                GET /metrics    Prometheus text format
    POST /v1/reload    load a bundle (JSON {"bundle": PATH, "force": BOOL}, default: the serving bundle's folder
                       again), verify and warm it up, switch atomically; SIGHUP does the same for the folder
    GET  /v1/decisions/{decision_id}, GET /v1/decisions?part_id=P   decisions read back from the decision log
    GET  /openapi.json the API description (docs/openapi.json is a copy)

With ``--tokens`` every route but health, ready and openapi.json needs an API key of the route's scope
(``access``); every request goes to the access log and every model change to the audit record.
Every decided part is appended to the decision log (``deploy.decision_log``). Bad input gets a 4xx
and one JSON line ``{"error": KIND, "message": ...}``; the server keeps serving. Concurrent
requests are micro-batched (``batching``). A reload builds the new model beside the old one;
requests that already hold the old model finish on it, and its batcher stops when the last of them
is answered.

The parts, each importing only downwards:

    config     ServeConfig: the station's settings
    batching   MicroBatcher: concurrent requests share one inference call
    models     a loaded, warmed-up model and the host that swaps models atomically
    metrics    Prometheus metrics (GET /metrics)
    intake     a request's body -> image bytes, part id, heatmap wish; bytes -> the preprocessed tensor
    state      what the routes share: host, decision log, metrics; answers and reloads
    auth       API keys: the token file, deploy token, the per-request check
    audit      the access log and the audit record
    idempotency, images, systemd   Idempotency-Key, --keep-images, sd_notify
    access     StationAccess (the above, per station) and the middleware: request id, key, access line
    reloads    a model change (HTTP or SIGHUP), its line/class guard answer and audit record
    line       the line interfaces of a station (--publish, --opcua, --modbus; deploy.line) and the handshake's decider
    routes/    one APIRouter per concern: inspection, admin (model, reload), status, metrics, decisions
    openapi    the OpenAPI description (GET /openapi.json, docs/openapi.json)
    protocol   uvicorn's HTTP protocol with a header deadline and bound, and protocol errors as JSON
    app        create_app: the FastAPI app from the routers, its error handlers, middleware and lifespan
    station    the listening socket and the uvicorn server (build_station)

FastAPI, uvicorn and prometheus-client are imported inside functions: the edge install without the
extra keeps working for ``deploy predict``.
"""

from deploy.serve.app import create_app
from deploy.serve.config import AccessConfig, ServeConfig
from deploy.serve.models import LoadedModel, ModelHost, ReloadError, load_model
from deploy.serve.station import Station, bind_socket, build_station

__all__ = ["AccessConfig", "LoadedModel", "ModelHost", "ReloadError", "ServeConfig", "Station", "bind_socket", "build_station",
           "create_app", "load_model"]
