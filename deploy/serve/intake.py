"""What ``POST /v1/inspect`` reads: the request's body (raw or multipart), its part id and heatmap
wish, each checked; then the image bytes -> decoded image -> the preprocessed tensor, once.

Checking and decoding image bytes is ``deploy.intake`` (shared with ``deploy watch``); this module
is the HTTP side of it. Starlette is imported inside functions (the ``serve`` extra).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from deploy.intake import (MAX_PART_ID_CHARS, MAX_PIXELS, IntakeError, check_media_type, check_part_id,  # noqa: F401 (re-exported)
                           decode_bytes, peek_header)
from deploy.preprocess import PreprocessSpec, preprocess
from deploy.serve.config import ServeConfig

# Small images decode on the event loop (a thread hop costs more than the decode); small in bytes *and*
# in declared pixels: a 60 KB PNG can declare 60 megapixels of zeros, half a second of decoding. An image
# whose header does not say its size is never decoded inline.
INLINE_DECODE_BYTES = 64 * 1024
INLINE_DECODE_PIXELS = 1_000_000
# Larger ones decode in threads, this many at a time: decoding is CPU-bound, and each decode may hold
# up to intake.max_decoded_bytes(--max-pixels) in memory (and its 8-bit conversion).
DECODE_SLOTS = max(2, min(8, os.cpu_count() or 1))
MULTIPART_LIMITS = {"max_files": 1, "max_fields": 8, "max_part_size": 64 * 1024}


@dataclass
class Prepared:
    """One request's image, decoded and preprocessed."""

    tensor: np.ndarray  # float32 CxHxW, the model input
    image_sha256: str
    decode_ms: float
    preprocess_ms: float
    image: np.ndarray | None = None  # the decoded image, kept only where a heatmap needs its pixels


def header_part_id(headers: Any) -> str | None:
    """``X-Part-Id`` as the UTF-8 it was sent in. HTTP hands header bytes over as Latin-1 (Starlette decodes
    them so), which turned ``Prüfteil`` into ``PrÃ¼fteil``; the bytes are read back and decoded as UTF-8, and
    bytes that are not UTF-8 are refused rather than guessed at."""
    value = headers.get("x-part-id")
    if value is None:
        return None
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise IntakeError("bad_part_id", "X-Part-Id is not UTF-8; send the part id's UTF-8 bytes, or percent-encode "
                          "them in ?part_id=") from None


def decodes_inline(data: bytes) -> bool:
    """Small enough, in bytes and in the pixels its header declares, to decode on the event loop; an image
    whose header does not say its size goes to a thread (its decode is not known to be short)."""
    if len(data) > INLINE_DECODE_BYTES:
        return False
    header = peek_header(data)
    return header is not None and header.pixels <= INLINE_DECODE_PIXELS and \
        header.decoded_bytes <= 3 * INLINE_DECODE_PIXELS


def prepare(data: bytes, spec: PreprocessSpec, keep_image: bool = False, max_pixels: int = MAX_PIXELS) -> Prepared:
    """Decode (``IntakeError`` says why not) and preprocess one image's bytes, timing each step."""
    t0 = time.perf_counter()
    image = decode_bytes(data, spec.channels, source="body", max_pixels=max_pixels).image
    t1 = time.perf_counter()
    tensor = preprocess(image, spec)
    digest = hashlib.sha256(data).hexdigest()
    return Prepared(tensor, digest, (t1 - t0) * 1000.0, (time.perf_counter() - t1) * 1000.0,
                    image if keep_image else None)


def heatmap_request(query: Any, classes: list[str], per_class: bool = True) -> tuple[bool, str | None]:
    """``?heatmap=1`` (and optional ``heatmap_class=C``): explain the decision with the bundle's heatmap.
    ``per_class`` False (an anomaly bundle: one map, not one per class) refuses ``heatmap_class``."""
    raw = query.get("heatmap", "0").strip().lower()
    if raw not in ("0", "1", "true", "false", "yes", "no", ""):
        raise IntakeError("bad_request", f"heatmap must be 1 or 0 (got {raw[:20]!r})")
    wanted = raw in ("1", "true", "yes")
    cls = query.get("heatmap_class")
    if cls is not None and not per_class:
        raise IntakeError("bad_request", "heatmap_class: an anomaly bundle has one map (where the part differs from the "
                          "good parts), not one per class; ask for heatmap=1 alone")
    if cls is not None and cls not in classes:
        raise IntakeError("bad_request", f"heatmap_class {cls[:40]!r} is not a class of this model ({', '.join(classes)})")
    return wanted or cls is not None, cls


async def read_body(request: Any, config: ServeConfig) -> bytes:
    """The whole body of a starlette ``Request``, at most ``--max-bytes``, within ``--read-timeout-s``."""
    length = request.headers.get("content-length")
    if length is not None:
        if not (length.isascii() and length.isdigit()):  # isdigit alone takes U+00B2, which int() refuses
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


async def read_input(request: Any, config: ServeConfig) -> tuple[bytes, str | None]:
    """(image bytes, part id) from a raw body or a multipart form."""
    content_type = request.headers.get("content-type", "")
    part_id = request.query_params.get("part_id") or header_part_id(request.headers)
    multipart = content_type.lower().startswith("multipart/form-data")
    if not multipart:
        check_media_type(content_type)  # before the body is read
        check_part_id(part_id)
    body = await read_body(request, config)
    if not multipart:
        return body, check_part_id(part_id)
    return await _read_multipart(request, body, part_id)


async def _read_multipart(request: Any, body: bytes, part_id: str | None) -> tuple[bytes, str | None]:
    """The first file part of an already-read multipart body, and the part id (query/header first)."""
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import Request

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(**MULTIPART_LIMITS)
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
    return data, check_part_id(part_id or (field_id if isinstance(field_id, str) else None))
