"""``deploy review QUEUE_DIR``: the review queue as a page in the browser (torch-free; the serve extra's FastAPI).

The page (``deploy/review_page/``: plain HTML, JavaScript and CSS shipped in the package, no build step,
nothing fetched from elsewhere) asks the inspector's name, then shows one part at a time: its image, the
model's heatmap overlay, label and confidence, and why it was queued. Keys 1-9 give a class, ``a`` agrees
with the model, ``u`` undoes, ``s`` skips. It talks to a small JSON API:

    GET  /                          the page; /review.js, /review.css its script and style (open)
    GET  /api/config                whether a key is needed (open)
    GET  /api/queue                 classes, parts with their labels, counts (inspect)
    GET  /api/labels                the labels given so far and the counts (inspect): each page asks every 5 s
    GET  /api/image?part=KEY&kind=  image | overlay of one part, PNG (inspect); only files inside QUEUE_DIR
    POST /api/labels                {"part", "label", "inspector"}: one label (inspect); "" as label clears it

With ``--tokens`` the API needs ``Authorization: Bearer KEY`` of scope ``inspect`` (the station's token file
and scope ladder, ``deploy.serve.auth``): the page asks for the key with the name and keeps it for the tab.
Every error is one JSON line ``{"error": KIND, "message": ...}``, a 4xx for anything the client sent. Labels go
to ``deploy.review`` (journal, then queue.csv, atomically). Every answer carries a Content-Security-Policy
that allows only the page's own script and style (no inline script), and the page writes every string from
the line (part ids, class names, inspector names) with ``textContent``.
"""

# no `from __future__ import annotations`: FastAPI reads the route signatures, whose Request is imported in create_review_app

import asyncio
import json
import threading
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from deploy.errors import DeployError
from deploy.overlay import thumbnail_png
from deploy.review import ReviewError, ReviewQueue

PAGE_FILES = {"/": ("index.html", "text/html; charset=utf-8"), "/review.js": ("review.js", "text/javascript; charset=utf-8"),
              "/review.css": ("review.css", "text/css; charset=utf-8")}
OPEN_PATHS = frozenset({*PAGE_FILES, "/api/config", "/favicon.ico"})
IMAGE_PX = 384  # the part's picture on the page (deploy.overlay.thumbnail_png: small parts enlarged pixel by pixel)
MAX_BODY_BYTES = 4096  # a label is a few dozen bytes
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                    "Cache-Control": "no-store", "X-Frame-Options": "DENY"}
REALM = 'Bearer realm="inspection-review"'


def page_file(name: str) -> bytes:
    return resources.files("deploy").joinpath("review_page", name).read_bytes()


def _error(kind: str, message: str, status: int, headers: dict[str, str] | None = None):
    from starlette.responses import Response

    body = json.dumps({"error": kind, "message": message}, ensure_ascii=False) + "\n"
    return Response(body, status_code=status, media_type="application/json", headers=headers)


class _Denied(Exception):
    def __init__(self, response: Any) -> None:
        self.response = response


@dataclass
class ReviewAccess:
    """The station's API keys (``deploy.serve.auth.TokenStore``), or none: every route open (loopback use)."""

    tokens_file: Path | None = None
    scope: str = "inspect"
    store: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.tokens_file is not None:
            from deploy.serve.auth import TokenStore

            self.store = TokenStore(self.tokens_file)

    async def key_name(self, request: Any) -> str | None:
        """The name of the request's key (None without --tokens); raises ``_Denied`` with the 401/403."""
        if self.store is None:
            return None
        scheme, _, token = (request.headers.get("authorization") or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _Denied(_error("unauthenticated", "this review page needs an API key of scope inspect: enter it "
                                 "with your name (keys: deploy token add)", 401, {"WWW-Authenticate": REALM}))
        key, decided = self.store.quick(token)
        if not decided:  # scrypt on the key store's own thread
            key = await asyncio.wrap_future(self.store.check(token))
        if key is None:
            raise _Denied(_error("invalid_key", "the API key is not one of this station's (revoked, mistyped or from "
                                 "another station)", 401, {"WWW-Authenticate": f'{REALM}, error="invalid_token"'}))
        if not key.allows(self.scope):
            raise _Denied(_error("insufficient_scope", f"the key {key.name!r} has scope {', '.join(key.scopes)}; "
                                 f"labelling needs {self.scope}", 403,
                                 {"WWW-Authenticate": f'{REALM}, error="insufficient_scope", scope="{self.scope}"'}))
        return key.name

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


def create_review_app(queue: ReviewQueue, access: ReviewAccess | None = None):
    """The FastAPI app of one review queue."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.exceptions import RequestValidationError
        from starlette.exceptions import HTTPException
        from starlette.responses import Response
    except ImportError as exc:
        raise DeployError(f"deploy review needs the serve extra ({exc.name} is not installed): "
                          'pip install "inspection-kit[serve]"') from None
    access = access or ReviewAccess()
    app = FastAPI(title="inspection-kit review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.queue, app.state.access = queue, access

    def json_answer(payload: Any, status: int = 200):
        return Response(json.dumps(payload, ensure_ascii=False) + "\n", status_code=status, media_type="application/json")

    @app.middleware("http")
    async def guard(request: Request, call_next: Any):
        """The key for every API route (the page itself is open), security headers on every answer."""
        try:
            request.state.key_name = None if request.url.path in OPEN_PATHS else await access.key_name(request)
            response = await call_next(request)
        except _Denied as denied:
            response = denied.response
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    for path, (name, media_type) in PAGE_FILES.items():
        def serve_page(name: str = name, media_type: str = media_type):
            return Response(page_file(name), media_type=media_type)

        app.add_api_route(path, serve_page, methods=["GET"], include_in_schema=False)

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():
        return Response(status_code=204)

    @app.get("/api/config")
    def config():
        return json_answer({"auth": access.store is not None, "queue": queue.folder.name})

    @app.get("/api/queue")
    def queue_view():
        parts = queue.parts()
        return json_answer({"classes": queue.classes, "parts": parts, "summary": queue.summary(parts)})

    @app.get("/api/image")
    def image(part: str = "", kind: str = "image"):
        if kind not in ("image", "overlay"):
            return _error("bad_request", f"kind {kind!r}: use image or overlay", 400)
        path = queue.file_of(part, kind)
        if path is None:
            return _error("not_found", f"no {kind} for part {part!r} in this queue", 404)
        png = thumbnail_png(path, IMAGE_PX) if kind == "image" else path.read_bytes()
        if png is None:
            return _error("not_found", f"the {kind} of part {part!r} cannot be read", 404)
        return Response(png, media_type="image/png")

    @app.get("/api/labels")
    def labels_view():
        parts = queue.parts()
        return json_answer({"summary": queue.summary(parts), "labels": _labels(parts)})

    @app.post("/api/labels")
    async def label(request: Request):
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return _error("too_large", f"a label is at most {MAX_BODY_BYTES} bytes", 413)
        try:
            data = json.loads(body)
        except ValueError:
            return _error("bad_request", 'send JSON: {"part": KEY, "label": CLASS, "inspector": NAME}', 400)
        if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("part", "label", "inspector")):
            return _error("bad_request", 'send {"part": KEY, "label": CLASS, "inspector": NAME}, each a string', 400)
        try:
            entry = await asyncio.to_thread(queue.label, data["part"], data["label"], data["inspector"],
                                            request.state.key_name)
        except ReviewError as exc:
            return _error(exc.kind, str(exc), exc.status)
        parts = queue.parts()
        return json_answer({"label": entry, "summary": queue.summary(parts), "labels": _labels(parts)})

    @app.exception_handler(HTTPException)
    async def http_error(request: Any, exc: HTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        return _error(kind, str(exc.detail), exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Any, exc: RequestValidationError):
        return _error("bad_request", "; ".join(str(e.get("msg")) for e in exc.errors())[:500], 422)

    @app.exception_handler(Exception)
    async def internal_error(request: Any, exc: Exception):  # a bug, never the client's input: traceback to stderr
        import traceback

        traceback.print_exception(exc)
        return _error("internal", "the review server failed on this request; its log has the details", 500)

    return app


def _labels(parts: list) -> dict:
    """Part key -> [label, inspector] of every labelled part: what a page needs to catch up with the others."""
    return {p["key"]: [p["label"], p["labelled_by"]] for p in parts if p["label"]}


def review_warnings(host: str, tokens_file: Path | None, tls_cert: Path | None) -> list[str]:
    """What ``deploy review`` says at start about a page others can reach."""
    from deploy.serve.auth import is_loopback, token_file_warnings

    warnings = []
    if not is_loopback(host) and tokens_file is None:
        warnings.append(f"listening on {host} without --tokens: anyone who reaches this port can see the queue's "
                        "images and label them (deploy token add --scope inspect, then deploy review --tokens FILE)")
    if not is_loopback(host) and tokens_file is not None and tls_cert is None:
        warnings.append(f"listening on {host} without --tls-cert/--tls-key: API keys and images cross the network in "
                        "clear text")
    return warnings + (token_file_warnings(tokens_file) if tokens_file is not None else [])


@dataclass
class ReviewServer:
    """uvicorn around the review app; ``run()`` blocks (the CLI), ``start()`` runs it in a thread (tests)."""

    app: Any
    host: str = "127.0.0.1"
    port: int = 8080
    server: Any = None
    thread: threading.Thread | None = field(default=None, repr=False)
    sock: Any = field(default=None, repr=False)
    tls: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from deploy.serve.station import bind_socket

        self.sock = bind_socket(self.host, self.port)

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    def _server(self):
        import uvicorn

        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off", server_header=False,
                                **self.tls)
        self.server = uvicorn.Server(config)
        return self.server

    def run(self) -> None:
        try:
            self._server().run(sockets=[self.sock])
        finally:
            self.app.state.access.close()

    def start(self, timeout_s: float = 30.0) -> "ReviewServer":
        from deploy.serve.station import start_in_thread

        self.thread = start_in_thread(self._server(), self.sock, timeout_s, "the review server")
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout_s)
        self.sock.close()
        self.app.state.access.close()
