"""Pictures inside a self-contained HTML page: PNG bytes as data URIs, thumbnails of line images."""

from __future__ import annotations

import base64

import cv2

from deploy.preprocess import read_image


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def thumbnail(path: str, channels: str, size_px: int = 96) -> str | None:
    """A small PNG of an image file as a data URI; None when the file is gone or unreadable since the run
    (the page still renders, without the picture)."""
    try:
        img = read_image(path, channels)  # type: ignore[arg-type]
    except Exception:
        return None
    scale = size_px / max(img.shape[:2])
    img = cv2.resize(img, (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale))), interpolation=cv2.INTER_AREA)
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img)
    return data_uri(buf.tobytes()) if ok else None
