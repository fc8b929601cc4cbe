"""Synthetic defects pasted into good parts: what an anomaly teacher learns to tell from good parts.

Four kinds, after the published recipes for learning without real defects:

- ``scar``: a thin anti-aliased stroke, darker or brighter than the surface (scratches, cracks);
- ``pit``: a small soft blob (pits, inclusions, spatter);
- ``cutpaste``: a patch of the same part, flipped and re-lit, pasted elsewhere (CutPaste, Li et al. 2021);
- ``blob``: a region cut out of smooth noise and filled with another place of the part, re-lit (DRAEM's
  Perlin-noise regions, Zavrtanik et al. 2021, with the part's own texture instead of a texture database).

``severity`` (1..5) is how hard the hardest defect is: each defect draws a level in 1..severity, and a higher
level is smaller and fainter. So severity 3 teaches obvious and subtle defects together. Sizes are drawn on a
log scale down to 3 px scars and sub-pixel pits: real lines' defects are often a few pixels at the model's input.

The ``defects`` view family sits next to lighting, angle and blur with the same severity knob, but it changes a
good part into a defective one: it belongs in ``anomaly.synthetic_defects``, never in the label-preserving weak
and strong views (``kit.views.build`` refuses the name there with a line saying so).
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np


KINDS = ("scar", "pit", "cutpaste", "blob")


def _level(rng: np.random.Generator, severity: int) -> float:
    """0 (obvious) .. 1 (subtle), drawn up to the severity."""
    return float(rng.integers(1, severity + 1) - 1) / 4.0


def _contrast(rng: np.random.Generator, level: float) -> float:
    """Signed intensity change in grey levels: 40-100 when obvious, 15-35 when subtle."""
    magnitude = rng.uniform(40, 100) * (1 - level) + rng.uniform(15, 35) * level
    return float(magnitude if rng.random() < 0.5 else -magnitude)


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """Sizes drawn evenly on a log scale: as many 2-4 px defects as 20-40 px ones (real lines have both)."""
    return float(np.exp(rng.uniform(np.log(low), np.log(max(high, low * 1.01)))))


def _scar(rng: np.random.Generator, h: int, w: int, level: float) -> np.ndarray:
    side = min(h, w)
    length = _log_uniform(rng, 3.0, side * (0.35 - 0.2 * level))
    width = max(1, int(round(rng.uniform(1.0, 2.5) * (1 - 0.5 * level) * side / 128)))
    x, y = rng.uniform(0.05 * w, 0.95 * w), rng.uniform(0.05 * h, 0.95 * h)
    angle = rng.uniform(0, np.pi)
    points, scale = [], 8  # drawn 8x larger, then area-resized: anti-aliased
    for i in range(4):
        t = (i / 3 - 0.5) * length
        bend = rng.normal(0, length * 0.06)
        points.append(((x + t * np.cos(angle) - bend * np.sin(angle)) * scale,
                       (y + t * np.sin(angle) + bend * np.cos(angle)) * scale))
    big = np.zeros((h * scale, w * scale), np.uint8)
    cv2.polylines(big, [np.round(points).astype(np.int32)], False, 255, thickness=width * scale, lineType=cv2.LINE_AA)
    return cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def _pit(rng: np.random.Generator, h: int, w: int, level: float) -> np.ndarray:
    side = min(h, w)
    radius = _log_uniform(rng, 0.7, side * (0.06 - 0.03 * level))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = rng.uniform(0.05 * w, 0.95 * w), rng.uniform(0.05 * h, 0.95 * h)
    ratio = rng.uniform(0.6, 1.0)
    d2 = ((xx - cx) / radius) ** 2 + ((yy - cy) / (radius * ratio)) ** 2
    return np.exp(-d2).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    grid = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _blob_region(rng: np.random.Generator, h: int, w: int, level: float) -> np.ndarray:
    """A few smooth-noise islands covering 1-6 % of the part (0.3-1.5 % when subtle)."""
    noise = _smooth_noise(rng, h, w, int(rng.integers(4, 9)))
    share = rng.uniform(0.01, 0.06) * (1 - level) + rng.uniform(0.003, 0.015) * level
    cut = np.quantile(noise, 1 - share)
    return np.clip((noise - cut) / max(1e-6, 0.15 * float(noise.std())), 0, 1).astype(np.float32)


def _other_place(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """The same part, shifted, flipped and re-lit: a texture that belongs to the part but not here."""
    h, w = image.shape[:2]
    moved = np.roll(image, (int(rng.integers(h // 4, 3 * h // 4)), int(rng.integers(w // 4, 3 * w // 4))), axis=(0, 1))
    if rng.random() < 0.5:
        moved = moved[::-1]
    if rng.random() < 0.5:
        moved = moved[:, ::-1]
    gain = rng.uniform(0.6, 1.4)
    return np.clip(moved.astype(np.float32) * gain + rng.uniform(-30, 30), 0, 255)


def _cutpaste(rng: np.random.Generator, image: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    side = min(h, w)
    ph = max(2, int(_log_uniform(rng, 3.0, side * (0.2 - 0.1 * level))))
    pw = max(2, int(ph * rng.uniform(0.3, 3.0)))
    pw = min(pw, w - 2)
    sy, sx = int(rng.integers(0, h - ph)), int(rng.integers(0, w - pw))
    ty, tx = int(rng.integers(0, h - ph)), int(rng.integers(0, w - pw))
    patch = image[sy:sy + ph, sx:sx + pw].astype(np.float32)
    if rng.random() < 0.5:
        patch = patch[::-1, ::-1]
    patch = np.clip(patch * rng.uniform(0.7, 1.3) + _contrast(rng, level) * 0.5, 0, 255)
    out = image.astype(np.float32)
    out[ty:ty + ph, tx:tx + pw] = patch
    mask = np.zeros((h, w), np.float32)
    mask[ty:ty + ph, tx:tx + pw] = 1.0
    return out, mask


def synthesize_defect(image: np.ndarray, rng: np.random.Generator, severity: int = 3,
                      kind: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A good part (uint8 HxWxC) -> (the part with one synthetic defect, its mask HxW float32 in [0, 1])."""
    if image.ndim != 3 or image.dtype != np.uint8:
        raise ValueError(f"synthesize_defect needs a uint8 HxWxC image (got {image.dtype} {image.shape})")
    h, w = image.shape[:2]
    kind = kind or KINDS[int(rng.integers(len(KINDS)))]
    level = _level(rng, severity)
    if kind == "cutpaste":
        out, mask = _cutpaste(rng, image, level)
    elif kind == "blob":
        mask = _blob_region(rng, h, w, level)
        out = image.astype(np.float32) * (1 - mask[..., None]) + _other_place(rng, image) * mask[..., None]
    elif kind in ("scar", "pit"):
        mask = (_scar if kind == "scar" else _pit)(rng, h, w, level)
        out = image.astype(np.float32) + _contrast(rng, level) * mask[..., None]
    else:
        raise ValueError(f"unknown synthetic defect {kind!r}; choose from {', '.join(KINDS)}")
    return np.clip(np.round(out), 0, 255).astype(np.uint8), mask


class SyntheticDefects(A.ImageOnlyTransform):
    """One synthetic defect per image (the ``defects`` view family), for previews and ``kit views``."""

    def __init__(self, severity: int = 3, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.severity = severity

    def apply(self, img: np.ndarray, **params: object) -> np.ndarray:
        squeeze = img.ndim == 2
        image = img[:, :, None] if squeeze else img
        rng = np.random.default_rng(int(self.random_generator.integers(0, 2**31)))
        out, _mask = synthesize_defect(image, rng, self.severity)
        return out[:, :, 0] if squeeze else out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("severity",)


def defects_view(severity: int, p: float = 1.0) -> A.Compose:
    """The family as a view of its own (previews, ``kit views``): never mixed into the label-preserving presets,
    whose severity means "harsher", where this one's means "subtler"."""
    return A.Compose([SyntheticDefects(severity=severity, p=p)], seed=0)
