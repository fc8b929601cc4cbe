"""Imaging-condition statistics of a line, and the reference profile a bundle carries for drift checks.

The statistics describe how a camera sees the part, not what the part is: brightness, contrast,
illumination non-uniformity, sharpness, noise, dominant orientation. ``kit calibrate`` uses them
to propose views; ``deploy monitor`` compares new images against the profile stored at export, with the
model's outputs on the same held-out images (a classifier's logits, an anomaly bundle's scores).
All are computed on the prepared image (ROI + resize), the same pixels the model sees.
"""

from __future__ import annotations

from typing import Any, Iterable

import cv2
import numpy as np

PROFILE_NAME = "profile.json"
PROFILE_FORMAT = "inspection-kit/profile"
MAX_REFERENCE_VALUES = 2000  # per statistic; enough for PSI bins and a KS test

STATISTICS: dict[str, str] = {
    "brightness": "mean grey level (0-255)",
    "contrast": "standard deviation of grey levels",
    "nonuniformity": "illumination non-uniformity: (max - min) / mean of 4x4 block means of a blurred image",
    "sharpness": "log10 variance of the Laplacian (focus)",
    "noise": "noise sigma (Immerkaer's estimator, grey levels)",
    "orientation": "dominant gradient orientation (degrees, 0-180)",
    "coherence": "how strongly one orientation dominates (0: none, 1: all edges parallel)",
}

_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)


def _gray(img: np.ndarray) -> np.ndarray:
    if img.ndim == 3 and img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    return img.reshape(img.shape[0], img.shape[1])


def image_statistics(img: np.ndarray) -> dict[str, float]:
    """uint8 HxW(xC) -> the imaging statistics of one image."""
    g = _gray(img).astype(np.float32)
    h, w = g.shape
    mean = float(g.mean())
    blurred = cv2.GaussianBlur(g, (0, 0), sigmaX=max(1.0, min(h, w) / 8))
    blocks = cv2.resize(blurred, (4, 4), interpolation=cv2.INTER_AREA)
    lap = cv2.Laplacian(g, cv2.CV_32F)
    # Immerkaer (1996): sigma = sqrt(pi/2) / (6 (W-2)(H-2)) * sum |I * N|
    conv = cv2.filter2D(g, cv2.CV_32F, _NOISE_KERNEL)[1:-1, 1:-1]
    noise = float(np.sqrt(np.pi / 2) * np.abs(conv).sum() / (6.0 * max(1, (w - 2) * (h - 2))))
    gx, gy = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    jxx, jyy, jxy = float((gx * gx).sum()), float((gy * gy).sum()), float((gx * gy).sum())
    angle = 0.5 * np.degrees(np.arctan2(2 * jxy, jxx - jyy))  # gradient direction of the structure tensor
    coherence = float(np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / (jxx + jyy)) if jxx + jyy > 0 else 0.0
    return {
        "brightness": mean,
        "contrast": float(g.std()),
        "nonuniformity": float((blocks.max() - blocks.min()) / max(mean, 1.0)),
        "sharpness": float(np.log10(lap.var() + 1e-6)),
        "noise": noise,
        "orientation": float(angle % 180.0),
        "coherence": coherence,
    }


def statistics_table(images: Iterable[np.ndarray]) -> dict[str, np.ndarray]:
    rows = [image_statistics(img) for img in images]
    return {name: np.array([r[name] for r in rows], dtype=np.float64) for name in STATISTICS}


def _subsample(values: np.ndarray, limit: int = MAX_REFERENCE_VALUES) -> list[float]:
    if len(values) > limit:
        values = np.sort(values)[np.linspace(0, len(values) - 1, limit).round().astype(int)]
    return [round(float(v), 6) for v in values]


def build_profile(stats: dict[str, np.ndarray], logits: np.ndarray, source: str, thresholds: dict[str, float]) -> dict[str, Any]:
    """The reference a classifier's bundle carries: image statistics and the model's logits on held-out images
    (logits, not confidences, so a later temperature or threshold applies to both sides alike)."""
    return {
        "format": PROFILE_FORMAT, "version": 1, "task": "classify", "source": source, "images": int(len(logits)),
        "statistics": {name: _subsample(v) for name, v in stats.items()},
        "descriptions": STATISTICS,
        "logits": [[round(float(x), 5) for x in row] for row in logits],
        "thresholds": thresholds,
    }


def build_anomaly_profile(stats: dict[str, np.ndarray], scores: np.ndarray, source: str, thresholds: dict[str, float],
                          kind_distance: np.ndarray | None = None) -> dict[str, Any]:
    """The reference an anomaly bundle carries: image statistics and the model's ``score`` output (N) on held-out
    images, and for the hybrid its ``kind_distance`` output (N x kinds). Raw outputs, not decisions, so a later
    ``accept_below`` / ``reject_at`` / ``kind_radius`` applies to both sides alike: ``deploy monitor`` compares
    the score distribution and the mix of the labels the bundle's rule gives."""
    scores = np.asarray(scores, np.float64).reshape(-1)
    profile = {
        "format": PROFILE_FORMAT, "version": 1, "task": "anomaly", "source": source, "images": int(len(scores)),
        "statistics": {name: _subsample(v) for name, v in stats.items()},
        "descriptions": STATISTICS,
        "scores": [float(x) for x in scores],  # unrounded: a rounded 0.018839 is not the 0.0188389 a part scores again
        "thresholds": thresholds,
    }
    if kind_distance is not None:
        kind_distance = np.asarray(kind_distance, np.float64)
        if kind_distance.ndim != 2 or len(kind_distance) != len(scores):
            raise ValueError(f"kind_distance has shape {list(kind_distance.shape)}, expected [{len(scores)}, kinds]")
        profile["kind_distance"] = [[float(x) for x in row] for row in kind_distance]
    return profile
