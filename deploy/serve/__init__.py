"""``deploy serve``: the inspection station over HTTP (FastAPI + uvicorn, the ``serve`` extra).

    POST /v1/inspect   the image as the body (PNG, JPEG, BMP, TIFF; 8/16 bit; gray/colour) or as a
                       multipart file; ``part_id`` as a query parameter, X-Part-Id header or form field
    GET  /v1/health    the process is alive           GET /v1/ready   a warmed-up model is serving
    GET  /v1/model     manifest summary                GET /metrics    Prometheus text format
    POST /v1/reload    load a bundle (JSON {"bundle": PATH}, default: the serving bundle's folder again),
                       verify and warm it up, switch atomically; SIGHUP does the same for the folder

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
    routes/    one APIRouter per concern: inspection, admin (model, reload), status, metrics
    app        create_app: the FastAPI app from the routers, its error handlers and lifespan
    protocol   uvicorn's HTTP protocol with a header deadline and bound, and protocol errors as JSON
    station    the listening socket and the uvicorn server (build_station)

FastAPI, uvicorn and prometheus-client are imported inside functions: the edge install without the
extra keeps working for ``deploy predict``.
"""

from deploy.serve.app import create_app
from deploy.serve.config import ServeConfig
from deploy.serve.models import LoadedModel, ModelHost, ReloadError, load_model
from deploy.serve.station import Station, bind_socket, build_station

__all__ = ["LoadedModel", "ModelHost", "ReloadError", "ServeConfig", "Station", "bind_socket", "build_station",
           "create_app", "load_model"]
