"""The station's OpenAPI description: served at ``GET /openapi.json`` and shipped as ``docs/openapi.json``.

Written here as data, one entry per operation, with every error kind the operation can answer (``ERRORS``: the kind,
its status, what it means), because the routes read raw requests (streamed image bodies, multipart, headers) that
FastAPI cannot describe by itself. Tests keep it true: the operations are exactly the app's routes, every kind
the station's code can answer is in ``ERRORS``, each attack of the suite answers a status and kind its operation
documents, and ``docs/openapi.json`` equals what a station serves. After changing the API:

    python -m deploy.serve.openapi docs/openapi.json

``API_VERSION`` is the HTTP API's version (paths stay under ``/v1``; the minor version grows with additions).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.serve.access import required_scope

API_VERSION = "1.1.0"

# kind -> (statuses, meaning). Every kind the station answers; tests/test_station_access.py checks the code for more.
ERRORS: dict[str, tuple[tuple[int, ...], str]] = {
    "empty_body": ((400,), "no bytes in the body"),
    "not_an_image": ((400,), "bytes that are not a PNG, JPEG, BMP or TIFF image"),
    "truncated_image": ((400,), "the image data ends early"),
    "corrupt_image": ((400,), "the image data does not decode"),
    "unsupported_image": ((400,), "an image the station cannot convert to the model's channels"),
    "bad_part_id": ((400,), "part_id longer than 200 characters or holding control characters"),
    "bad_multipart": ((400,), "a multipart body that does not parse"),
    "no_image": ((400,), "a multipart body without a file part"),
    "bad_request": ((400, 422), "a malformed parameter or body (the message says which)"),
    "client_disconnect": ((400,), "the client closed the connection before its body was sent"),
    "bad_idempotency_key": ((400,), "an Idempotency-Key that is not 1 to 255 visible ASCII characters"),
    "unauthenticated": ((401,), "no API key (with --tokens): send Authorization: Bearer KEY"),
    "invalid_key": ((401,), "an API key this station does not know (revoked, mistyped, another station's)"),
    "insufficient_scope": ((403,), "the key lacks the route's scope (admin for reloads)"),
    "reload_disabled": ((403,), "the station was started with --no-reload"),
    "reload_forbidden": ((403,), "the bundle is outside --reload-root"),
    "not_found": ((404,), "no such route, or no such decision in the decision log"),
    "decision_log_off": ((404,), "the station writes no decision log (--no-log)"),
    "method_not_allowed": ((405,), "the route does not take this method"),
    "timeout": ((408,), "the body did not arrive within --read-timeout-s"),
    "reload_failed": ((409,), "the bundle failed its checks (sha256, manifest, outputs); the old model serves on"),
    "line_or_classes_differ": ((409,), "the bundle is of another line or class set; send force: true to switch"),
    "idempotency_in_progress": ((409,), "a request with this Idempotency-Key is still being decided"),
    "too_large": ((413,), "a body over --max-bytes, an image over --max-pixels (or its decoded bytes over 3 per "
                          "pixel of it), or a reload body over 64 KB"),
    "unsupported_media_type": ((415,), "a media type the route does not take (a reload must be application/json)"),
    "headers_too_large": ((431,), "the request line and headers are over 64 KB"),
    "idempotency_key_reused": ((422,), "the Idempotency-Key was used for another image or part id"),
    "internal": ((500,), "a bug in the station, never the input; see its log"),
    "overloaded": ((503,), "more requests queued than --max-queue; retry shortly"),
    "decision_log_unavailable": ((503,), "the decision could not be recorded (a full or failing disk): no decision "
                                         "is given; retry after Retry-After"),
}
IMAGE_KINDS = ("empty_body", "not_an_image", "truncated_image", "corrupt_image", "unsupported_image", "bad_part_id",
               "bad_multipart", "no_image", "bad_request", "client_disconnect", "timeout", "too_large",
               "unsupported_media_type", "overloaded", "bad_idempotency_key", "idempotency_key_reused",
               "idempotency_in_progress", "decision_log_unavailable")
AUTH_KINDS = ("unauthenticated", "invalid_key", "insufficient_scope")
IMAGE_TYPES = ("image/png", "image/jpeg", "image/bmp", "image/tiff", "application/octet-stream")


@dataclass(frozen=True)
class Operation:
    path: str
    method: str
    operation_id: str
    summary: str
    answer: str | None  # the 200 answer's schema name (None: text, or no body for HEAD)
    errors: tuple[str, ...] = ()
    parameters: tuple[dict[str, Any], ...] = ()
    body: dict[str, Any] | None = None
    extra_answers: dict[str, Any] = field(default_factory=dict)


def _param(name: str, where: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": where, "required": where == "path", "description": description,
            "schema": schema or {"type": "string"}}


REQUEST_ID = _param("X-Request-Id", "header", "echoed on the answer and written to the access log; made when absent "
                    "(1 to 128 of A-Z a-z 0-9 . _ : @ / + = -)")
NOT_READY = {"503": {"description": "not ready (shutting down)", "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/Ready"}}}}}
INSPECT_BODY = {"required": True, "content": {
    **{t: {"schema": {"type": "string", "format": "binary"}} for t in IMAGE_TYPES},
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary", "description": "the image file (the first file part)"},
        "part_id": {"type": "string"}}}}}}
RELOAD_BODY = {"required": False, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ReloadRequest"}}}}


def _operations() -> list[Operation]:
    inspect_params = (
        _param("part_id", "query", "the part's id (also X-Part-Id or a form field); at most 200 printable characters"),
        _param("heatmap", "query", "1: add the defect heatmap (decided alone, outside the micro-batch)",
               {"type": "string", "enum": ["0", "1", "true", "false", "yes", "no"]}),
        _param("heatmap_class", "query", "map this class instead of the predicted one (classifiers only)"),
        _param("X-Part-Id", "header", "the part's id, when not in the query"),
        _param("Idempotency-Key", "header", "a retry with the same key gets the first decision (same decision_id), "
               "never a second one; 1 to 255 visible ASCII characters, remembered 24 h"))
    ops = [Operation("/v1/inspect", "post", "inspect", "Decide one part: the image in, the decision out", "InspectAnswer",
                     IMAGE_KINDS, inspect_params, INSPECT_BODY),
           Operation("/v1/reload", "post", "reload", "Load, check, warm up and switch to a bundle (admin)",
                     "ReloadAnswer", ("reload_disabled", "unsupported_media_type", "too_large", "bad_request",
                                      "reload_forbidden", "reload_failed", "line_or_classes_differ"), (), RELOAD_BODY),
           Operation("/v1/decisions/{decision_id}", "get", "getDecision", "A decision read back from the decision log",
                     "DecisionRecord", ("bad_request", "not_found", "decision_log_off"),
                     (_param("decision_id", "path", "the decision_id of an answer"),)),
           Operation("/v1/decisions", "get", "listDecisions", "A part's decisions from the decision log, newest first",
                     "DecisionList", ("bad_request", "not_found", "decision_log_off"),
                     (_param("part_id", "query", "the part id"), _param("limit", "query", "at most this many (1 to 1000)",
                                                                        {"type": "integer", "default": 100}))),
           Operation("/metrics", "get", "metrics", "Prometheus metrics (text format 0.0.4)", None)]
    for path, name, summary, answer, extra in (
            ("/v1/health", "Health", "The process is alive (open: liveness probe)", "Health", {}),
            ("/v1/ready", "Ready", "A warmed-up model serves (open: readiness probe)", "Ready", NOT_READY),
            ("/v1/model", "Model", "The serving model: line, classes, threshold, rule, hashes", "ModelSummary", {}),
            ("/metrics", "Metrics", "Prometheus metrics (text format 0.0.4)", None, {})):
        if path != "/metrics":
            ops.append(Operation(path, "get", f"get{name}", summary, answer, extra_answers=extra))
        ops.append(Operation(path, "head", f"head{name}", f"{summary}: headers only", None, extra_answers=extra))
    return ops


def _error_answers(kinds: tuple[str, ...]) -> dict[str, Any]:
    by_status: dict[int, list[str]] = {}
    for kind in kinds:
        for status in ERRORS[kind][0]:
            by_status.setdefault(status, []).append(kind)
    answers = {}
    for status in sorted(by_status):
        listed = by_status[status]
        answers[str(status)] = {
            "description": "; ".join(f"`{k}`: {ERRORS[k][1]}" for k in listed),
            "headers": {"X-Request-Id": {"schema": {"type": "string"}}},
            "content": {"application/json": {"schema": {"allOf": [
                {"$ref": "#/components/schemas/Error"}, {"properties": {"error": {"enum": listed}}}]}}}}
    return answers


def _operation(op: Operation) -> dict[str, Any]:
    scope = required_scope(op.path)
    kinds = op.errors + (AUTH_KINDS if scope is not None else ()) + ("headers_too_large", "internal")
    ok: dict[str, Any] = {"description": "OK", "headers": {"X-Request-Id": {"schema": {"type": "string"}}}}
    if op.answer is not None:
        ok["content"] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{op.answer}"}}}
    elif op.method == "get":
        ok["content"] = {"text/plain": {"schema": {"type": "string"}}}
    if op.path == "/v1/inspect":
        ok["headers"] = {**ok["headers"], "X-Decision-Id": {"schema": {"type": "string"}},
                         "Idempotent-Replayed": {"schema": {"type": "string", "enum": ["true"]},
                                                 "description": "present when this is the first answer again"}}
    out: dict[str, Any] = {
        "operationId": op.operation_id, "summary": op.summary,
        "parameters": [*op.parameters, REQUEST_ID],
        "responses": {"200": ok, **op.extra_answers, **_error_answers(tuple(dict.fromkeys(kinds)))},
        "security": [] if scope is None else [{"apiKey": [scope]}, {}],
    }
    if scope is not None:
        out["description"] = (f"With --tokens: an API key with scope `{scope}` or above (metrics < inspect < admin). "
                              "Without --tokens the station is open.")
    if op.body is not None:
        out["requestBody"] = op.body
    return out


def build_openapi() -> dict[str, Any]:
    """The whole description, the same for every station (nothing in it depends on the bundle)."""
    paths: dict[str, dict[str, Any]] = {}
    for op in _operations():
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {"title": "inspection-kit station", "version": API_VERSION,
                 "description": "deploy serve: one part in, one decision out, every decision in the decision log. "
                                "Errors are one JSON object {error: KIND, message: ...}. See docs/station.md."},
        "paths": paths,
        "components": {"schemas": SCHEMAS, "securitySchemes": {"apiKey": {
            "type": "http", "scheme": "bearer",
            "description": "deploy serve --tokens FILE: keys made by deploy token add; scopes metrics < inspect < admin"}}},
    }


def install_openapi(app: Any) -> None:
    """``GET /openapi.json`` serves ``build_openapi()`` (FastAPI's own route, our document)."""
    document = build_openapi()
    app.openapi = lambda: document


def _nullable(kind: str) -> dict[str, Any]:
    return {"type": [kind, "null"]}


_NUMBERS = {"type": "object", "additionalProperties": {"type": "number"}}
SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error", "message"], "properties": {
        "error": {"type": "string", "description": "the kind: one word a program can branch on"},
        "message": {"type": "string", "description": "one line for a person: what is wrong and what to do"},
        "model_id": {"type": "string", "description": "reload errors: the model still serving"},
        "differs": {"type": "object", "description": "line_or_classes_differ: {line|classes: {old, new}}"}}},
    "InspectAnswer": {"type": "object", "required": ["label", "action", "decision_id", "model_id"], "properties": {
        "part_id": _nullable("string"), "label": {"type": "string"}, "confidence": {"type": "number"},
        "score": {**_nullable("number"), "description": "an anomaly bundle's score; null for a classifier"},
        "probabilities": {"type": ["object", "null"], "additionalProperties": {"type": "number"}},
        "abstain": {"type": "boolean"}, "action": {"type": "string", "enum": ["accept", "reject", "review"]},
        "model_id": {"type": "string"}, "runtime": {"type": "string"}, "image_sha256": {"type": "string"},
        "decision_id": {"type": "string", "description": "the id of its decision-log line"},
        "batch_size": {"type": "integer"}, "timings_ms": _NUMBERS,
        "heatmap": {"type": "object", "properties": {
            "label": {"type": "string"}, "peak_xy": {"type": "array", "items": {"type": "integer"}},
            "method": {"type": "string"}, "size": {"type": "array", "items": {"type": "integer"}},
            "png_base64": _nullable("string")}}}},
    "DecisionRecord": {"type": "object", "description": "one line of the decision log", "properties": {
        "time": {"type": "string"}, "part_id": _nullable("string"), "image_sha256": {"type": "string"},
        "label": {"type": "string"}, "confidence": {"type": "number"}, "probabilities": _NUMBERS,
        "abstain": {"type": "boolean"}, "action": {"type": "string"}, "model_id": {"type": "string"},
        "runtime": {"type": "string"}, "latency_ms": _NUMBERS, "source": {"type": "string"},
        "image": _nullable("string"), "version": {"type": "integer"}, "decision_id": _nullable("string"),
        "score": _nullable("number")}},
    "DecisionList": {"type": "object", "properties": {
        "part_id": {"type": "string"}, "truncated": {"type": "boolean"},
        "decisions": {"type": "array", "items": {"$ref": "#/components/schemas/DecisionRecord"}}}},
    "ReloadRequest": {"type": "object", "additionalProperties": False, "properties": {
        "bundle": {"type": "string", "description": "a bundle folder inside --reload-root (default: the serving one)"},
        "force": {"type": "boolean", "default": False, "description": "switch even to another line or class set"}}},
    "ReloadAnswer": {"type": "object", "properties": {
        "model_id": {"type": "string"}, "previous_model_id": {"type": "string"}, "bundle": {"type": "string"},
        "warmup_ms": {"type": "number"}, "forced": {"type": "boolean"},
        "changes": {"type": "object", "description": "{field: {old, new}} for what differs"}}},
    "ModelSummary": {"type": "object", "properties": {
        "model_id": {"type": "string"}, "bundle": {"type": "string"}, "line": _nullable("string"),
        "task": {"type": "string"}, "classes": {"type": "array", "items": {"type": "string"}},
        "threshold": _nullable("number"), "temperature": {"type": "number"}, "decision": {"type": "object"},
        "runtime": {"type": "string"}, "providers": {"type": "string"}, "preprocess": {"type": "object"},
        "artefacts": {"type": "object"}, "created_at": _nullable("string"), "loaded_at": {"type": "string"},
        "warmup_ms": {"type": "number"}}},
    "Health": {"type": "object", "properties": {"status": {"type": "string"}, "uptime_s": {"type": "number"}}},
    "Ready": {"type": "object", "properties": {"ready": {"type": "boolean"}, "model_id": {"type": "string"},
                                                "reason": {"type": "string"}}},
}


def write_openapi(path: str | Path) -> Path:
    from deploy.atomic import write_text_atomic

    return write_text_atomic(path, json.dumps(build_openapi(), indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    print(write_openapi(sys.argv[1] if len(sys.argv) > 1 else "docs/openapi.json"))
