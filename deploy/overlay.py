"""Heatmap overlays as PNG: the image, its heatmap, the peak marker, label and confidence.

One writer for ``deploy predict --heatmaps``, the report's examples and the review queue, so an
operator, a reviewer and a manager see the same picture for the same decision. Small camera
images are enlarged (nearest neighbour: the pixels stay the pixels the model saw) to at least
``MIN_SIDE_PX`` so the marker and the text stay readable.

``thumbnail_png`` is the one picture of a line image without its map: the review page (``deploy review``)
and the label audit's page (``kit audit``) both show images through it, scaled the same way.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from deploy.atomic import write_bytes_atomic
from deploy.errors import DeployError
from deploy.heatmap import Heatmap

MIN_SIDE_PX = 256
ALPHA = 0.45  # share of the colour map in the blend
CAPTION_PX = 22  # height of the caption strip above the image
PEAK_BGR = (255, 255, 255)
MASK_BGR = (0, 255, 0)


def render_overlay(image: np.ndarray, heatmap: Heatmap, caption: str, mask: np.ndarray | None = None,
                   channels: str = "gray", min_side_px: int = MIN_SIDE_PX) -> np.ndarray:
    """uint8 BGR HxWx3: ``caption`` in a strip on top, then the image under a JET colour map of
    ``heatmap.map`` with a ring and cross on the peak; ``mask`` (bool HxW, where the defect truly is,
    when known) is outlined in green. ``image``: uint8 HxW or HxWxC in ``channels`` (gray or RGB order)."""
    if image.shape[:2] != heatmap.map.shape:
        raise DeployError(f"overlay: image is {image.shape[1]}x{image.shape[0]} px but the heatmap is "
                          f"{heatmap.map.shape[1]}x{heatmap.map.shape[0]}; pass the image the heatmap was made for")
    bgr = _to_bgr(image, channels)
    scale = max(1, int(np.ceil(min_side_px / min(bgr.shape[:2]))))
    size = (bgr.shape[1] * scale, bgr.shape[0] * scale)
    bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_NEAREST)
    heat = cv2.resize(heatmap.map, size, interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap(np.clip(heat * 255.0 + 0.5, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    out = cv2.addWeighted(bgr, 1.0 - ALPHA, colour, ALPHA, 0.0)
    if mask is not None and mask.any():
        big = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, MASK_BGR, 1, cv2.LINE_AA)
    x, y = ((v + 0.5) * scale for v in heatmap.peak_xy)
    centre, radius = (int(x), int(y)), max(6, 3 * scale)
    for colour_bgr, width in (((0, 0, 0), 3), (PEAK_BGR, 1)):
        cv2.circle(out, centre, radius, colour_bgr, width, cv2.LINE_AA)
        cv2.drawMarker(out, centre, colour_bgr, cv2.MARKER_CROSS, radius, width, cv2.LINE_AA)
    strip = np.full((CAPTION_PX, out.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, caption, (4, CAPTION_PX - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([strip, out])


def overlay_caption(label: str, confidence: float, action: str | None = None, heatmap_label: str | None = None,
                    score: float | None = None) -> str:
    """``scratch 0.97 reject`` (and ``map: dent`` when the map is for another class; ``score 1.31`` for an
    anomaly bundle's decision). ASCII only: OpenCV's built-in font has no other glyphs (the report puts
    translated text next to the PNG)."""
    text = f"{label} {confidence:.2f}" + (f" {action}" if action else "") + (f" score {score:.2f}" if score is not None else "")
    if heatmap_label and heatmap_label != label:
        text += f"  map: {heatmap_label}"
    return text


def encode_overlay(overlay: np.ndarray) -> bytes:
    ok, png = cv2.imencode(".png", overlay)
    if not ok:
        raise DeployError("overlay: OpenCV could not encode the PNG")
    return png.tobytes()


def write_overlay(path: str | Path, image: np.ndarray, heatmap: Heatmap, caption: str, mask: np.ndarray | None = None,
                  channels: str = "gray") -> Path:
    """Render and write one overlay PNG (the folder is created); returns the path."""
    return write_bytes_atomic(path, encode_overlay(render_overlay(image, heatmap, caption, mask, channels)))


def thumbnail_png(path: str | Path, size_px: int = 96, channels: str = "rgb") -> bytes | None:
    """A PNG of an image file whose longer side is ``size_px``: shrunk by area averaging, enlarged by nearest
    neighbour (as ``render_overlay`` enlarges: a 32 px part shows its pixels, not a blur). None when the file is
    gone or cannot be decoded (the page shows the part without its picture)."""
    from deploy.preprocess import read_image

    try:
        img = read_image(path, channels)  # type: ignore[arg-type]
    except (DeployError, OSError):
        return None
    scale = size_px / max(img.shape[:2])
    size = (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale)))
    img = cv2.resize(img, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST)
    ok, png = cv2.imencode(".png", _to_bgr(img, channels))
    return png.tobytes() if ok else None


def _to_bgr(image: np.ndarray, channels: str) -> np.ndarray:
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(image.reshape(image.shape[0], image.shape[1]), cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if channels == "rgb" else image.copy()
