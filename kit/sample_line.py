"""A deterministic synthetic camera line: grayscale rolled-metal surfaces with six classes.

The kit ships its own small data set so that a fresh clone can run, test and demo the whole
flow without any download. The images imitate what makes a real line hard: a brushed/rolled
texture, uneven lighting, slight rotation and shift, focus blur and sensor noise. Each image's
global gain is randomised, so no class can be told apart by mean brightness alone.

Regenerate the committed copy with ``kit sample-data sample_data/sample_line``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from kit.io import write_atomic

CLASS_COUNTS = {"ok": 160, "scratch": 100, "dent": 100, "stain": 100, "crack": 100, "inclusion": 100}


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Rolled steel: streaks along the rolling direction plus fine grain, float32 around 0."""
    noise = rng.normal(0.0, 1.0, (size, size)).astype(np.float32)
    streaks = cv2.GaussianBlur(noise, (0, 0), sigmaX=rng.uniform(6, 14), sigmaY=rng.uniform(0.4, 0.9))
    streaks /= streaks.std() + 1e-6
    grain = cv2.GaussianBlur(rng.normal(0.0, 1.0, (size, size)).astype(np.float32), (0, 0), 0.7)
    grain /= grain.std() + 1e-6
    y = np.arange(size, dtype=np.float32)[:, None]
    bands = np.sin(2 * np.pi * y / rng.uniform(9, 20) + rng.uniform(0, 2 * np.pi))
    return 3.0 * streaks + 1.5 * grain + rng.uniform(1.0, 2.5) * bands


def _point(rng: np.random.Generator, size: int, margin: int) -> tuple[int, int]:
    return int(rng.integers(margin, size - margin)), int(rng.integers(margin, size - margin))


def _scratch(img: np.ndarray, rng: np.random.Generator) -> None:
    size = img.shape[0]
    x0, y0 = _point(rng, size, size // 6)
    angle = rng.uniform(0, np.pi)
    length = rng.uniform(0.35, 0.7) * size
    dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
    layer = np.zeros_like(img)
    cv2.line(layer, (int(x0 - dx), int(y0 - dy)), (int(x0 + dx), int(y0 + dy)), 1.0, int(rng.integers(2, 5)), cv2.LINE_AA)
    sign = rng.choice([-1.0, 1.0])
    img += sign * rng.uniform(60, 90) * cv2.GaussianBlur(layer, (0, 0), 0.6)


def _crack(img: np.ndarray, rng: np.random.Generator) -> None:
    size = img.shape[0]
    layer = np.zeros_like(img)
    for _branch in range(int(rng.integers(1, 3))):
        x, y = (float(v) for v in _point(rng, size, size // 4))
        heading = rng.uniform(0, 2 * np.pi)
        points = [(x, y)]
        for _step in range(int(rng.integers(8, 16))):
            heading += rng.normal(0, 0.6)
            step = rng.uniform(3.5, 6.0)
            x, y = x + np.cos(heading) * step, y + np.sin(heading) * step
            points.append((x, y))
        pts = np.array(points, dtype=np.int32).reshape(-1, 1, 2)
        cv2.polylines(layer, [pts], False, 1.0, int(rng.integers(2, 5)), cv2.LINE_AA)
    img -= rng.uniform(50, 75) * cv2.GaussianBlur(layer, (0, 0), 0.5)


def _dent(img: np.ndarray, rng: np.random.Generator) -> None:
    size = img.shape[0]
    cx, cy = _point(rng, size, size // 4)
    r = rng.uniform(10, 16)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    bump = np.exp(-(((xx - cx) ** 2) / (2 * r**2) + ((yy - cy) ** 2) / (2 * (r * rng.uniform(0.6, 1.4)) ** 2)))
    light = rng.uniform(0, 2 * np.pi)
    shade = np.cos(light) * np.gradient(bump, axis=1) + np.sin(light) * np.gradient(bump, axis=0)
    img += rng.uniform(600, 900) * shade


def _stain(img: np.ndarray, rng: np.random.Generator) -> None:
    size = img.shape[0]
    mask = np.zeros_like(img)
    cx, cy = _point(rng, size, size // 4)
    for _blob in range(int(rng.integers(2, 5))):
        ox, oy = rng.normal(0, 5, 2)
        axes = (int(rng.uniform(8, 18)), int(rng.uniform(6, 13)))
        cv2.ellipse(mask, (int(cx + ox), int(cy + oy)), axes, rng.uniform(0, 180), 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), rng.uniform(2.0, 4.0))
    mottled = cv2.GaussianBlur(rng.normal(0, 1, img.shape).astype(np.float32), (0, 0), 2.0)
    img += mask * (rng.choice([-1.0, 1.0]) * rng.uniform(40, 60) + 15.0 * mottled)
    img *= 1.0 - 0.6 * mask  # a film flattens the texture underneath


def _inclusion(img: np.ndarray, rng: np.random.Generator) -> None:
    size = img.shape[0]
    cx, cy = _point(rng, size, size // 5)
    layer = np.zeros_like(img)
    for _dot in range(int(rng.integers(2, 6))):
        px, py = cx + rng.normal(0, 7), cy + rng.normal(0, 2)
        axes = (int(rng.integers(3, 7)), int(rng.integers(2, 5)))
        cv2.ellipse(layer, (int(px), int(py)), axes, 0, 0, 360, 1.0, -1, cv2.LINE_AA)
    img -= rng.uniform(60, 90) * cv2.GaussianBlur(layer, (0, 0), 0.7)


_DEFECTS = {"scratch": _scratch, "dent": _dent, "stain": _stain, "crack": _crack, "inclusion": _inclusion}


def _nuisance(img: np.ndarray, rng: np.random.Generator, out_size: int) -> np.ndarray:
    """The camera: pose jitter, uneven lighting, random gain, focus blur, sensor noise."""
    size = img.shape[0]
    centre = (size / 2 + rng.uniform(-3, 3), size / 2 + rng.uniform(-3, 3))
    rot = cv2.getRotationMatrix2D(centre, rng.uniform(-8, 8), rng.uniform(0.95, 1.05))
    img = cv2.warpAffine(img, rot, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    start = (size - out_size) // 2
    img = img[start : start + out_size, start : start + out_size]
    yy, xx = np.mgrid[0:out_size, 0:out_size].astype(np.float32) / out_size - 0.5
    lighting = 1.0 + rng.uniform(-0.35, 0.35) * xx + rng.uniform(-0.35, 0.35) * yy
    lighting -= rng.uniform(0.0, 0.4) * (xx**2 + yy**2)
    gain = rng.uniform(0.7, 1.25)
    img = (128.0 + img) * lighting * gain + rng.uniform(-15, 15)
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.1))
    img += rng.normal(0.0, rng.uniform(1.5, 6.0), img.shape).astype(np.float32)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def render_sample_image(label: str, index: int, seed: int = 0, size_px: int = 96) -> np.ndarray:
    """One deterministic uint8 HxW image of class ``label``."""
    if label != "ok" and label not in _DEFECTS:
        raise ValueError(f"unknown sample class {label!r}; choose from {sorted(CLASS_COUNTS)}")
    class_id = sorted(CLASS_COUNTS).index(label)
    rng = np.random.default_rng([seed, class_id, index])
    work = int(size_px * 1.25)
    img = _texture(rng, work)
    if label != "ok":
        _DEFECTS[label](img, rng)
    return _nuisance(img, rng, size_px)


def generate_sample_line(
    out_dir: str | Path,
    counts: dict[str, int] | None = None,
    seed: int = 0,
    size_px: int = 96,
) -> dict[str, int]:
    """Write ``out_dir/<class>/<class>_NNNN.png`` and return the count per class."""
    out_dir = Path(out_dir)
    counts = dict(CLASS_COUNTS if counts is None else counts)
    for label, n in counts.items():
        for i in range(n):
            img = render_sample_image(label, i, seed=seed, size_px=size_px)
            ok, png = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 9])
            assert ok, "OpenCV failed to encode a PNG it produced itself"
            write_atomic(out_dir / label / f"{label}_{i:04d}.png", lambda tmp, data=png: tmp.write_bytes(data.tobytes()))
    return counts
