"""Pictures inside a self-contained HTML page: PNG bytes as data URIs, thumbnails of line images."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from deploy.overlay import thumbnail_png


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def thumbnail(path: str, channels: str, size_px: int = 96) -> str | None:
    """A small PNG of an image file as a data URI (``deploy.overlay.thumbnail_png``, the review page's picture
    too); None when the file is gone or unreadable since the run (the page still renders, without the picture)."""
    png = thumbnail_png(path, size_px, channels)
    return data_uri(png) if png is not None else None


def views_grid_png(run_dir: Path, recipe: Any, spec: Any, classes: list[str]) -> bytes | None:
    """The training views, one image per class (original, weak, strong x 2), drawn for the report. The data stage's
    ``views.png`` has two images per class: scaled to one A4 page its labels printed at 4 pt (issue 28); one per class
    fits a page at its own size. None when the split's images are gone (the page then uses ``views.png``)."""
    import tempfile

    from kit.data.preview import render_views_preview
    from kit.rundir import load_split
    from kit.views.build import build_view

    try:
        split = load_split(run_dir, "val", spec, classes)
    except Exception:  # images moved or deleted since the run: the stored views.png still shows the views
        return None
    size, channels = tuple(spec.image_size), spec.num_channels
    pipelines = {"weak": build_view(recipe.views.weak, "views.weak", size, channels),
                 "strong": build_view(recipe.views.strong, "views.strong", size, channels)}
    with tempfile.TemporaryDirectory(prefix="kit-report-") as tmp:
        path = render_views_preview(split, classes, pipelines, Path(tmp) / "views.png", per_class=1, seed=recipe.seed)
        return path.read_bytes()
