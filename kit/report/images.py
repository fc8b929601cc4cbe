"""Pictures inside a self-contained HTML page: PNG bytes as data URIs, thumbnails of line images."""

from __future__ import annotations

import base64

from deploy.overlay import thumbnail_png


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def thumbnail(path: str, channels: str, size_px: int = 96) -> str | None:
    """A small PNG of an image file as a data URI (``deploy.overlay.thumbnail_png``, the review page's picture
    too); None when the file is gone or unreadable since the run (the page still renders, without the picture)."""
    png = thumbnail_png(path, size_px, channels)
    return data_uri(png) if png is not None else None
