"""``POST /v1/inspect``: one part, decided and recorded.

    the image as the body (PNG, JPEG, BMP, TIFF; 8/16 bit; gray/colour) or as a multipart file;
    ``part_id`` as a query parameter, X-Part-Id header or form field; ``?heatmap=1``
    (``&heatmap_class=C``) adds the defect heatmap: class, peak (x, y) in the image's pixels, method,
    and the map as an 8-bit PNG (base64)

The request path, written once: read (``intake.read_input``) -> decode and preprocess
(``intake.prepare``, once per request) -> decide (``Predictor.decide_batch``: through the
micro-batcher, or directly with the heatmap from the same forward pass) -> record and answer
(``respond``). Bad input gets a 4xx; an overloaded batcher a 503. With ``Idempotency-Key``, a retry gets the first
answer (``deploy.serve.idempotency``); with ``--keep-images`` the image is kept by sha256 and the log names it.

No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations at runtime.
"""

import asyncio
import base64
import time
import uuid
from typing import Any

import cv2
import numpy as np

from deploy.decision_log import DecisionLogUnavailable, DecisionRecord
from deploy.heatmap import Heatmap
from deploy.intake import IntakeError
from deploy.predictor import Decision, Predictor
from deploy.serve.access import access_of
from deploy.serve.batching import BatchResult, MicroBatcher, QueueFull
from deploy.serve.idempotency import inspect_once
from deploy.serve.intake import Prepared, decodes_inline, heatmap_request, prepare, read_input
from deploy.serve.models import LoadedModel
from deploy.serve.state import StationState, json_response, station_of


def build_router():
    from fastapi import APIRouter, Request
    from fastapi.responses import Response

    router = APIRouter()

    @router.post("/v1/inspect")
    async def inspect(request: Request) -> Response:
        station, access = station_of(request), access_of(request)
        return await inspect_once(request, access.idempotency, request.state.key_name or "",  # Idempotency-Key
                                  lambda: inspect_part(station, request), station.error_response, station.config)

    return router


async def inspect_part(station: StationState, request: Any):
    """Acquire the serving model for the whole request (a reload never changes it underneath)."""
    t0 = time.perf_counter()
    model = station.host.acquire()
    try:
        wants_heatmap, heatmap_class = heatmap_request(request.query_params, model.predictor.classes,
                                                       per_class=model.predictor.task == "classify")
    except IntakeError as exc:
        station.host.release(model)
        return station.error_response(exc.kind, str(exc), exc.status)
    if wants_heatmap:
        return await _inspect_explained(station, request, model, heatmap_class, t0)
    return await _inspect_batched(station, request, model, t0)


async def _inspect_batched(station: StationState, request: Any, model: LoadedModel, t0: float):
    """Decode and preprocess as the request arrives, then decide in the model's micro-batcher."""
    from starlette.concurrency import run_in_threadpool

    try:
        model.batcher.begin()
        try:
            data, part_id = await read_input(request, station.config)
            spec = model.predictor.manifest.preprocess
            if decodes_inline(data):
                prepared = prepare(data, spec, max_pixels=station.config.max_pixels)
            else:
                async with station.decode_slots:
                    prepared = await run_in_threadpool(prepare, data, spec, False, station.config.max_pixels)
        except BaseException:
            model.batcher.abandon()
            raise
        result = await _decide_in_batch(model.batcher, prepared.tensor)
    except IntakeError as exc:
        return station.error_response(exc.kind, str(exc), exc.status)
    except QueueFull as exc:
        return station.error_response("overloaded", f"{exc}; retry shortly", 503)
    finally:
        station.host.release(model)
    return respond(station, model, result, part_id, prepared, t0, image=keep_image(request, data, prepared))


async def _decide_in_batch(batcher: MicroBatcher, tensor: np.ndarray) -> BatchResult:
    """Submit one begun request's tensor; its ``BatchResult`` arrives from the batcher's thread."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def settle(value: BatchResult | BaseException) -> None:
        loop.call_soon_threadsafe(_settle, future, value)

    batcher.submit(tensor, settle)
    return await future


def _settle(future: asyncio.Future, value: BatchResult | BaseException) -> None:
    if future.done():  # the client went away
        return
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)


async def _inspect_explained(station: StationState, request: Any, model: LoadedModel, heatmap_class: str | None,
                             t0: float):
    """Decide and explain one image outside the micro-batcher (the map needs the image itself): the same
    decode and preprocessing, the same rule on the same probabilities as the batched path."""
    from starlette.concurrency import run_in_threadpool

    try:
        data, part_id = await read_input(request, station.config)
        async with station.decode_slots:
            prepared, decision, infer_ms = await run_in_threadpool(_decide_explained, model.predictor, data,
                                                                   heatmap_class, station.config.max_pixels)
    except IntakeError as exc:
        return station.error_response(exc.kind, str(exc), exc.status)
    finally:
        station.host.release(model)
    result = BatchResult(decision, infer_ms, 0.0, 1)
    return respond(station, model, result, part_id, prepared, t0, heatmap_payload(decision.heatmap),
                   image=keep_image(request, data, prepared))


def keep_image(request: Any, data: bytes, prepared: Prepared) -> str | None:
    """``--keep-images``: the decided image's bytes under its sha256 (written in the background); the path the
    decision log names, so that review-queue and monitor find served parts."""
    images = access_of(request).images
    return images.keep(data, prepared.image_sha256) if images is not None else None


def _decide_explained(predictor: Predictor, data: bytes, heatmap_class: str | None,
                      max_pixels: int) -> tuple[Prepared, Decision, float]:
    """(prepared image, decision with its heatmap, inference ms): one preprocessing, one forward pass."""
    prepared = prepare(data, predictor.manifest.preprocess, keep_image=True, max_pixels=max_pixels)
    started = time.perf_counter()
    decision = predictor.decide_batch(prepared.tensor[None], [prepared.image], heatmap=True,
                                      heatmap_class=heatmap_class)[0]
    return prepared, decision, (time.perf_counter() - started) * 1000.0


def heatmap_payload(heatmap: Heatmap) -> dict[str, Any]:
    """What the answer carries: the heatmap's label, peak, method and size, and the map as an 8-bit PNG."""
    ok, png = cv2.imencode(".png", (np.clip(heatmap.map, 0, 1) * 255).astype(np.uint8))
    return {**heatmap.to_dict(), "png_base64": base64.b64encode(png.tobytes()).decode("ascii") if ok else None}


def respond(station: StationState, model: LoadedModel, result: BatchResult, part_id: str | None, prepared: Prepared,
            t0: float, explained: dict[str, Any] | None = None, image: str | None = None):
    """Record the decision and answer it (one record, one line, whichever path decided it)."""
    d = result.decision
    total_ms = (time.perf_counter() - t0) * 1000.0
    timings = {"decode": round(prepared.decode_ms, 3), "preprocess": round(prepared.preprocess_ms, 3),
               "queue": round(result.queue_ms, 3), "infer": round(result.infer_ms, 3), "total": round(total_ms, 3)}
    record = DecisionRecord.from_decision(d, part_id=part_id, image_sha256=prepared.image_sha256,
                                          model_id=model.model_id, source="serve", latency_ms=timings,
                                          decision_id=uuid.uuid4().hex, image=image)
    try:
        station.record(record)
    except DecisionLogUnavailable as exc:  # not recorded, so not given: the line retries or sets the part aside
        return station.error_response("decision_log_unavailable", f"{exc}; retry later", 503)
    answer = {"part_id": part_id, "label": d.label, "confidence": d.confidence, "score": d.score,
              "probabilities": d.probabilities, "abstain": d.abstain, "action": d.action,
              "model_id": model.model_id, "runtime": d.runtime, "image_sha256": prepared.image_sha256,
              "decision_id": record.decision_id, "batch_size": result.batch_size, "timings_ms": timings}
    if explained is not None:
        answer["heatmap"] = explained
    response = json_response(answer)
    response.headers["X-Decision-Id"] = record.decision_id  # the access log links request id and decision by it
    return response
