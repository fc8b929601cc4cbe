"""The HTTP side of ``deploy serve``: the FastAPI app, its routes and how a request becomes a decision.

    POST /v1/inspect   the image as the body (PNG, JPEG, BMP, TIFF; 8/16 bit; gray/colour) or as a
                       multipart file; ``part_id`` as a query parameter, X-Part-Id header or form field;
                       ``?heatmap=1`` (``&heatmap_class=C``) adds the defect heatmap: class, peak (x, y) in the
                       image's pixels, method, and the map as an 8-bit PNG (base64)
    GET  /v1/health    the process is alive           GET /v1/ready   a warmed-up model is serving
    GET  /v1/model     manifest summary                GET /metrics    Prometheus text format
    POST /v1/reload    load a bundle (JSON {"bundle": PATH}, default: the serving bundle's folder again),
                       verify and warm it up, switch atomically; SIGHUP does the same for the folder

Every error is one JSON line ``{"error": KIND, "message": ...}`` and counted by kind in /metrics;
user input gets a 4xx, only a bug a 500.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations (``Request``,
# imported inside ``create_app``) at runtime.
import asyncio
import base64
import hashlib
import json
import os
import signal
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import cv2
import numpy as np

from deploy.batching import BatchResult, QueueFull
from deploy.decision_log import DecisionLog, DecisionRecord
from deploy.intake import IntakeError, check_media_type, declared_size, decode_bytes, sniff_format
from deploy.preprocess import preprocess
from deploy.serve_metrics import StationMetrics
from deploy.serve_models import LoadedModel, ModelHost, ReloadError, ReloadForbidden, ServeConfig

# Small images decode on the event loop (a thread hop costs more than the decode); small in bytes *and*
# in declared pixels: a 60 KB PNG can declare 60 megapixels of zeros, half a second of decoding.
INLINE_DECODE_BYTES = 64 * 1024
INLINE_DECODE_PIXELS = 1_000_000
# Larger ones decode in threads, this many at a time: decoding is CPU-bound, and each decode may hold
# an image of up to intake.MAX_PIXELS in memory.
DECODE_SLOTS = max(2, min(8, os.cpu_count() or 1))
MAX_PART_ID_CHARS = 200
MAX_RELOAD_BODY = 64 * 1024


def _error_body(kind: str, message: str, **extra: Any) -> bytes:
    return (json.dumps({"error": kind, "message": message, **extra}, ensure_ascii=False) + "\n").encode("utf-8")


def _part_id(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if len(value) > MAX_PART_ID_CHARS or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise IntakeError("bad_part_id", f"part_id must be at most {MAX_PART_ID_CHARS} printable characters "
                          f"(got {len(value)} characters)")
    return value


def _decodes_inline(data: bytes) -> bool:
    if len(data) > INLINE_DECODE_BYTES:
        return False
    fmt = sniff_format(data)
    size = declared_size(data, fmt) if fmt else None
    return size is None or size[0] * size[1] <= INLINE_DECODE_PIXELS


def _settle(future: asyncio.Future, value: BatchResult | BaseException) -> None:
    if future.done():  # the client went away
        return
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)


def create_app(model: LoadedModel, config: ServeConfig):
    """The FastAPI app serving ``model``; ``app.state.host`` swaps models, ``app.state.log`` logs."""
    from deploy.serve import serve_extra_missing

    try:
        from fastapi import FastAPI, Request
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import Response
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        from starlette.concurrency import run_in_threadpool
        from starlette.exceptions import HTTPException as StarletteHTTPException
        from starlette.requests import ClientDisconnect
    except ImportError as exc:
        raise serve_extra_missing(exc) from None

    metrics = StationMetrics()
    host = ModelHost(model, config, on_batch=lambda n, ms: metrics.batch_size.observe(n))
    model.batcher.on_batch = host.on_batch
    metrics.serving(model)
    log = DecisionLog(config.log_dir, durable=False) if config.log_dir is not None else None
    started_at = time.time()
    state = {"ready": True}
    stop_sync = threading.Event()
    decode_slots = asyncio.Semaphore(DECODE_SLOTS)

    def sync_log() -> None:  # group commit: one fsync a second instead of one per request
        while not stop_sync.wait(config.fsync_interval_s):
            log.sync()

    def json_response(payload: Any, status: int = 200) -> Response:
        return Response(json.dumps(payload, ensure_ascii=False) + "\n", status_code=status, media_type="application/json")

    def error_response(kind: str, message: str, status: int, **extra: Any) -> Response:
        metrics.errors.labels(kind).inc()
        return Response(_error_body(kind, message, **extra), status_code=status, media_type="application/json")

    async def lifespan(app):
        sync_thread = None
        if log is not None:
            sync_thread = threading.Thread(target=sync_log, name="decision-log-sync", daemon=True)
            sync_thread.start()
        if threading.current_thread() is threading.main_thread():  # SIGHUP: reload the bundle folder
            loop = asyncio.get_running_loop()
            try:
                loop.add_signal_handler(signal.SIGHUP, lambda: loop.run_in_executor(None, reload_quietly))
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        yield
        state["ready"] = False
        stop_sync.set()
        host.close()
        if log is not None:
            log.sync()
            log.close()

    app = FastAPI(title="inspection-kit station", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.host, app.state.log, app.state.metrics = host, log, metrics

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        return error_response(kind, str(exc.detail), exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return error_response("bad_request", "; ".join(str(e.get("msg")) for e in exc.errors())[:500], 422)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect) -> Response:  # nobody reads the answer
        return error_response("client_disconnect", "the client closed the connection before its body was sent", 400)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:  # a bug, never the user's input
        import traceback

        traceback.print_exception(exc)
        return error_response("internal", f"{type(exc).__name__}: the server failed; see its log", 500)

    @app.api_route("/v1/health", methods=["GET", "HEAD"])
    async def health() -> Response:
        return json_response({"status": "alive", "uptime_s": round(time.time() - started_at, 3)})

    @app.api_route("/v1/ready", methods=["GET", "HEAD"])
    async def ready() -> Response:
        if not state["ready"]:
            return json_response({"ready": False, "reason": "shutting down"}, 503)
        return json_response({"ready": True, "model_id": host.current.model_id})

    @app.api_route("/v1/model", methods=["GET", "HEAD"])
    async def model_summary() -> Response:
        return json_response(host.current.summary())

    @app.api_route("/metrics", methods=["GET", "HEAD"])
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def read_body(request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise IntakeError("bad_request", f"Content-Length {length[:40]!r} is not a number")
            if int(length) > config.max_bytes:
                raise IntakeError("too_large", f"the body has {int(length)} bytes, more than --max-bytes "
                                  f"{config.max_bytes}", 413)
        chunks, size = [], 0

        async def receive_all() -> None:
            nonlocal size
            async for chunk in request.stream():
                size += len(chunk)
                if size > config.max_bytes:
                    raise IntakeError("too_large", f"the body is over --max-bytes {config.max_bytes} bytes", 413)
                chunks.append(chunk)

        try:  # a client trickling its body must not hold a model (or a reload) for ever
            await asyncio.wait_for(receive_all(), config.read_timeout_s)
        except asyncio.TimeoutError:
            raise IntakeError("timeout", f"the body did not arrive within {config.read_timeout_s:g} s "
                              f"({size} bytes received)", 408) from None
        return b"".join(chunks)

    async def read_input(request: Request) -> tuple[bytes, str | None]:
        """(image bytes, part id) from a raw body or a multipart form."""
        content_type = request.headers.get("content-type", "")
        part_id = request.query_params.get("part_id") or request.headers.get("x-part-id")
        multipart = content_type.lower().startswith("multipart/form-data")
        if not multipart:
            check_media_type(content_type)  # before the body is read
            _part_id(part_id)
        body = await read_body(request)
        if not multipart:
            return body, _part_id(part_id)

        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=1, max_fields=8, max_part_size=64 * 1024)
        except StarletteHTTPException as exc:
            raise IntakeError("bad_multipart", f"multipart body: {exc.detail}") from None
        files = [v for v in form.values() if hasattr(v, "read") and hasattr(v, "filename")]
        if not files:
            raise IntakeError("no_image", "the multipart body has no file part; send the image as a file field "
                              "(e.g. curl -F image=@part.png)")
        upload = files[0]
        check_media_type(upload.content_type)
        data = await upload.read()
        field_id = form.get("part_id")
        return data, _part_id(part_id or (field_id if isinstance(field_id, str) else None))

    def decode_and_prepare(data: bytes, spec) -> tuple[np.ndarray, str, float, float]:
        t0 = time.perf_counter()
        image = decode_bytes(data, spec.channels, source="body").image
        t1 = time.perf_counter()
        tensor = preprocess(image, spec)
        digest = hashlib.sha256(data).hexdigest()
        return tensor, digest, (t1 - t0) * 1000.0, (time.perf_counter() - t1) * 1000.0

    def heatmap_request(request: Request, classes: list[str]) -> tuple[bool, str | None]:
        """``?heatmap=1`` (and optional ``heatmap_class=C``): explain the decision with the bundle's heatmap."""
        raw = request.query_params.get("heatmap", "0").strip().lower()
        if raw not in ("0", "1", "true", "false", "yes", "no", ""):
            raise IntakeError("bad_request", f"heatmap must be 1 or 0 (got {raw[:20]!r})")
        wanted = raw in ("1", "true", "yes")
        cls = request.query_params.get("heatmap_class")
        if cls is not None and cls not in classes:
            raise IntakeError("bad_request", f"heatmap_class {cls[:40]!r} is not a class of this model ({', '.join(classes)})")
        return wanted or cls is not None, cls

    def decide_with_heatmap(predictor, data: bytes, cls: str | None):
        """Decode, decide and explain one image in one pass (outside the micro-batcher: the map needs the
        image itself); the decision is the same rule on the same probabilities as the batched path."""
        t0 = time.perf_counter()
        image = decode_bytes(data, predictor.manifest.preprocess.channels, source="body").image
        t1 = time.perf_counter()
        decision = predictor.predict_images([image], heatmap=True, heatmap_class=cls)[0]
        t2 = time.perf_counter()
        ok, png = cv2.imencode(".png", (np.clip(decision.heatmap.map, 0, 1) * 255).astype(np.uint8))
        explained = {**decision.heatmap.to_dict(), "png_base64": base64.b64encode(png.tobytes()).decode("ascii") if ok else None}
        return decision, explained, hashlib.sha256(data).hexdigest(), (t1 - t0) * 1000.0, (t2 - t1) * 1000.0

    @app.post("/v1/inspect")
    async def inspect(request: Request) -> Response:
        t0 = time.perf_counter()
        model = host.acquire()
        try:
            wants_heatmap, heatmap_class = heatmap_request(request, model.predictor.classes)
        except IntakeError as exc:
            host.release(model)
            return error_response(exc.kind, str(exc), exc.status)
        if wants_heatmap:
            try:
                data, part_id = await read_input(request)
                async with decode_slots:
                    d, explained, digest, decode_ms, infer_ms = await run_in_threadpool(
                        decide_with_heatmap, model.predictor, data, heatmap_class)
            except IntakeError as exc:
                return error_response(exc.kind, str(exc), exc.status)
            finally:
                host.release(model)
            result = BatchResult(d, infer_ms, 0.0, 1)
            return respond(model, d, part_id, digest, result, {"decode": decode_ms, "preprocess": 0.0}, t0, explained)
        try:
            model.batcher.begin()
            try:
                data, part_id = await read_input(request)
                spec = model.predictor.manifest.preprocess
                if _decodes_inline(data):
                    tensor, digest, decode_ms, prep_ms = decode_and_prepare(data, spec)
                else:
                    async with decode_slots:
                        tensor, digest, decode_ms, prep_ms = await run_in_threadpool(decode_and_prepare, data, spec)
            except BaseException:
                model.batcher.abandon()
                raise
            loop = asyncio.get_running_loop()
            future: asyncio.Future = loop.create_future()

            def settle(value: BatchResult | BaseException) -> None:
                loop.call_soon_threadsafe(_settle, future, value)

            model.batcher.submit(tensor, settle)
            result: BatchResult = await future
        except IntakeError as exc:
            return error_response(exc.kind, str(exc), exc.status)
        except QueueFull as exc:
            return error_response("overloaded", f"{exc}; retry shortly", 503)
        finally:
            host.release(model)
        return respond(model, result.decision, part_id, digest, result, {"decode": decode_ms, "preprocess": prep_ms}, t0)

    def respond(model: LoadedModel, d, part_id: str | None, digest: str, result: BatchResult, before: dict[str, float],
                t0: float, explained: dict[str, Any] | None = None) -> Response:
        """Log the decision and answer it (one record, one line, whichever path decided it)."""
        total_ms = (time.perf_counter() - t0) * 1000.0
        timings = {"decode": round(before["decode"], 3), "preprocess": round(before["preprocess"], 3),
                   "queue": round(result.queue_ms, 3), "infer": round(result.infer_ms, 3), "total": round(total_ms, 3)}
        record = DecisionRecord(
            time=datetime.now(timezone.utc).isoformat(timespec="microseconds"), part_id=part_id, image_sha256=digest,
            label=d.label, confidence=d.confidence, probabilities=d.probabilities or {}, abstain=d.abstain,
            action=d.action, model_id=model.model_id, runtime=d.runtime, latency_ms=timings, source="serve",
            decision_id=uuid.uuid4().hex)
        if log is not None:
            log.append(record)
        metrics.decided(record)
        answer = {"part_id": part_id, "label": d.label, "confidence": d.confidence,
                  "probabilities": d.probabilities, "abstain": d.abstain, "action": d.action,
                  "model_id": model.model_id, "runtime": d.runtime, "image_sha256": digest,
                  "decision_id": record.decision_id, "batch_size": result.batch_size, "timings_ms": timings}
        if explained is not None:
            answer["heatmap"] = explained
        return json_response(answer)

    def reload_now(bundle: str | None) -> tuple[LoadedModel, LoadedModel]:
        new, old = host.reload(bundle)
        metrics.serving(new, old)
        metrics.reloads.labels("ok").inc()
        return new, old

    def reload_quietly() -> None:  # SIGHUP: nobody to answer, so say it on stderr
        try:
            new, old = reload_now(None)
            print(f"# reload: {old.model_id[:12]} -> {new.model_id[:12]} ({new.bundle_dir})", file=sys.stderr, flush=True)
        except ReloadError as exc:
            metrics.reloads.labels("failed").inc()
            print(f"error: {exc}", file=sys.stderr, flush=True)

    @app.post("/v1/reload")
    async def reload(request: Request) -> Response:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_RELOAD_BODY:
                return error_response("too_large", f"a reload request is a small JSON object (at most {MAX_RELOAD_BODY} "
                                      "bytes)", 413)
        bundle = None
        if body.strip():
            try:
                payload = json.loads(body)
                bundle = payload.get("bundle") if isinstance(payload, dict) else None
            except ValueError:
                payload = None
            if not isinstance(bundle, str) or not bundle:
                return error_response("bad_request", 'send JSON {"bundle": "/path/to/bundle"} (or no body: reload '
                                      "the serving bundle's folder)", 400)
        try:
            new, old = await run_in_threadpool(reload_now, bundle)
        except ReloadForbidden as exc:
            metrics.reloads.labels("failed").inc()
            return error_response("reload_forbidden", str(exc), 403, model_id=host.current.model_id)
        except ReloadError as exc:
            metrics.reloads.labels("failed").inc()
            return error_response("reload_failed", str(exc), 409, model_id=host.current.model_id)
        return json_response({"model_id": new.model_id, "previous_model_id": old.model_id, "bundle": str(new.bundle_dir),
                              "warmup_ms": round(new.warmup_ms, 2)})

    return app
