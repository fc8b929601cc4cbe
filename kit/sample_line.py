"""Deterministic synthetic camera lines: grayscale rolled-metal surfaces, made by the same camera.

The kit ships its own small data set so that a fresh clone can run, test and demo the whole
flow without any download. The images imitate what makes a real line hard: a brushed/rolled
texture, uneven lighting, slight rotation and shift, focus blur and sensor noise. Each image's
global gain is randomised, so no class can be told apart by mean brightness alone.

Two lines (``SAMPLE_LINES``):

- ``sample``: six balanced-ish classes of large defects at 96 px; committed under
  ``sample_data/sample_line`` (regenerate it with ``kit sample-data sample_data/sample_line``).
- ``sparse``: what real lines look like (issue 19): 90 % good parts and defects a few pixels
  across in 256 px images, so shrinking the images to a CPU-sized input can erase them. Made on
  the fly (``kit sample-data --line sparse sample_data/sparse_line``), never committed (40 MB).

Both write each defective image's mask next to the images, in ``<out>_masks`` (``masks_dir``) with the
images' layout: the folder a recipe's ``data.masks`` names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from kit.errors import ArgumentError
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


def _scratch(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = img.shape[0]
    x0, y0 = _point(rng, size, size // 6)
    angle = rng.uniform(0, np.pi)
    length = rng.uniform(0.35, 0.7) * size
    dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
    layer = np.zeros_like(img)
    cv2.line(layer, (int(x0 - dx), int(y0 - dy)), (int(x0 + dx), int(y0 + dy)), 1.0, int(rng.integers(2, 5)), cv2.LINE_AA)
    sign = rng.choice([-1.0, 1.0])
    img += sign * rng.uniform(60, 90) * cv2.GaussianBlur(layer, (0, 0), 0.6)
    return layer


def _crack(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
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
    return layer


def _dent(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = img.shape[0]
    cx, cy = _point(rng, size, size // 4)
    r = rng.uniform(10, 16)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    bump = np.exp(-(((xx - cx) ** 2) / (2 * r**2) + ((yy - cy) ** 2) / (2 * (r * rng.uniform(0.6, 1.4)) ** 2)))
    light = rng.uniform(0, 2 * np.pi)
    shade = np.cos(light) * np.gradient(bump, axis=1) + np.sin(light) * np.gradient(bump, axis=0)
    img += rng.uniform(600, 900) * shade
    return (bump >= DENT_MASK_LEVEL).astype(np.float32)  # the shading is visible to about two sigmas


def _stain(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
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
    return mask


def _inclusion(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = img.shape[0]
    cx, cy = _point(rng, size, size // 5)
    layer = np.zeros_like(img)
    for _dot in range(int(rng.integers(2, 6))):
        px, py = cx + rng.normal(0, 7), cy + rng.normal(0, 2)
        axes = (int(rng.integers(3, 7)), int(rng.integers(2, 5)))
        cv2.ellipse(layer, (int(px), int(py)), axes, 0, 0, 360, 1.0, -1, cv2.LINE_AA)
    img -= rng.uniform(60, 90) * cv2.GaussianBlur(layer, (0, 0), 0.7)
    return layer


# Each defect draws itself into the work image and returns its own layer (float32, 1 = fully defect):
# the stroke coverage of scratches, cracks and inclusions, the film of a stain, the disc of a dent.
_DEFECTS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "scratch": _scratch, "dent": _dent, "stain": _stain, "crack": _crack, "inclusion": _inclusion}
DENT_MASK_LEVEL = float(np.exp(-2.0))  # a dent's bump: within two sigmas of its centre
SAMPLE_MASK_LEVEL = 0.5  # a pixel is defect where the (posed) layer is at least half on


def _pose(rng: np.random.Generator, size: int) -> np.ndarray:
    """Where the part lies under the camera: a 2x3 affine of a few px shift, +-8 deg and +-5 % scale."""
    centre = (size / 2 + rng.uniform(-3, 3), size / 2 + rng.uniform(-3, 3))
    return cv2.getRotationMatrix2D(centre, rng.uniform(-8, 8), rng.uniform(0.95, 1.05))


def _apply_pose(img: np.ndarray, pose: np.ndarray, out_size: int, border: int = cv2.BORDER_REFLECT) -> np.ndarray:
    """Warp the oversized work image by ``pose`` and keep its centre ``out_size`` square."""
    size = img.shape[0]
    img = cv2.warpAffine(img, pose, (size, size), flags=cv2.INTER_LINEAR, borderMode=border)
    start = (size - out_size) // 2
    return img[start : start + out_size, start : start + out_size]


def _camera(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The optics and sensor: uneven lighting, random gain, focus blur, sensor noise; uint8 out."""
    out_size = img.shape[0]
    yy, xx = np.mgrid[0:out_size, 0:out_size].astype(np.float32) / out_size - 0.5
    lighting = 1.0 + rng.uniform(-0.35, 0.35) * xx + rng.uniform(-0.35, 0.35) * yy
    lighting -= rng.uniform(0.0, 0.4) * (xx**2 + yy**2)
    gain = rng.uniform(0.7, 1.25)
    img = (128.0 + img) * lighting * gain + rng.uniform(-15, 15)
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.1))
    img += rng.normal(0.0, rng.uniform(1.5, 6.0), img.shape).astype(np.float32)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _blank_part(label: str, index: int, seed: int, size_px: int, class_counts: dict[str, int],
                line: str) -> tuple[np.random.Generator, int, np.ndarray]:
    """The image's own generator (from seed, class and index, so every image is reproducible alone), the
    working size (a margin for pose jitter) and the defect-free texture drawn from that generator."""
    if label not in class_counts:
        raise ValueError(f"unknown {line} class {label!r}; choose from {sorted(class_counts)}")
    rng = np.random.default_rng([seed, sorted(class_counts).index(label), index])
    work = int(size_px * 1.25)
    return rng, work, _texture(rng, work)


def render_sample_image(label: str, index: int, seed: int = 0, size_px: int = 96) -> np.ndarray:
    """One deterministic uint8 HxW image of class ``label``."""
    return render_sample_part(label, index, seed, size_px)[0]


def render_sample_part(label: str, index: int, seed: int = 0, size_px: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """One deterministic uint8 HxW image of class ``label`` and its bool HxW defect mask (all False
    for ``ok``). The mask is the defect's own layer taken through the same pose as the image, so it
    marks where the defect is in the picture: ground truth for heatmap evaluation (``data.masks``).
    The random draws are the image's alone, so the images are the ones rendered before masks existed."""
    image, posed_layer = render_sample_layer(label, index, seed, size_px)
    return image, posed_layer >= SAMPLE_MASK_LEVEL


def render_sample_layer(label: str, index: int, seed: int = 0, size_px: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """The image and its defect layer as float32 after the pose (before thresholding it into the mask), so a
    test can tell a mask pixel that sits on the threshold (decided by the last bit of OpenCV's interpolation,
    which differs between SIMD paths) from a real difference."""
    rng, work, img = _blank_part(label, index, seed, size_px, CLASS_COUNTS, "sample")
    layer = _DEFECTS[label](img, rng) if label != "ok" else np.zeros_like(img)
    pose = _pose(rng, work)
    posed_layer = _apply_pose(layer, pose, size_px, border=cv2.BORDER_CONSTANT)
    return _camera(_apply_pose(img, pose, size_px), rng), posed_layer


# The sparse line: what a real line looks like (issue 19). Mostly good parts, and defects a few
# pixels across, so that shrinking a 256 px image to a CPU-friendly input can erase them.
SPARSE_CLASS_COUNTS = {"ok": 900, "scratch": 34, "pit": 33, "crack": 33}
SPARSE_MASK_LEVEL = 0.5  # a pixel is defect when the anti-aliased stroke covers at least half of it


def _anchor(rng: np.random.Generator, work: int, out_size: int) -> tuple[float, float]:
    """A random point well inside the part of the work image the camera keeps, so that pose
    jitter (up to ~35 px at the corners of 256 px) never pushes the defect out of view."""
    start = (work - out_size) // 2
    margin = out_size // 6
    low, high = start + margin, start + out_size - margin
    return float(rng.uniform(low, high)), float(rng.uniform(low, high))


def _stroke(layer: np.ndarray, points: list[tuple[float, float]], width_px: float) -> None:
    """Paint an anti-aliased polyline of true sub-pixel width into ``layer`` (one point: a disk).

    Coverage is 1 within ``width_px / 2`` of the path and falls off over one pixel, so a 1 px
    defect really is 1 px wide; ``cv2.line`` rounds widths to whole pixels and its anti-aliasing
    makes a 1 px line about 2 px wide.
    """
    segments = list(zip(points, points[1:])) or [(points[0], points[0])]
    reach = width_px / 2 + 1
    for (x0, y0), (x1, y1) in segments:
        left, top = int(max(min(x0, x1) - reach, 0)), int(max(min(y0, y1) - reach, 0))
        right = int(min(max(x0, x1) + reach + 1, layer.shape[1]))
        bottom = int(min(max(y0, y1) + reach + 1, layer.shape[0]))
        yy, xx = np.mgrid[top:bottom, left:right].astype(np.float32)
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / max(dx * dx + dy * dy, 1e-9), 0.0, 1.0)
        distance = np.hypot(xx - (x0 + t * dx), yy - (y0 + t * dy))
        cover = np.clip(width_px / 2 + 0.5 - distance, 0.0, 1.0)
        np.maximum(layer[top:bottom, left:right], cover, out=layer[top:bottom, left:right])


def _small_scratch(rng: np.random.Generator, work: int, out_size: int) -> tuple[np.ndarray, float]:
    """A short straight line, 8-16 px long and 1-2 px wide, bright or dark (a tool mark catches or
    shadows the light)."""
    x, y = _anchor(rng, work, out_size)
    angle, length = rng.uniform(0, np.pi), rng.uniform(8, 16)
    dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
    layer = np.zeros((work, work), np.float32)
    _stroke(layer, [(x - dx, y - dy), (x + dx, y + dy)], rng.uniform(1.0, 2.0))
    return layer, float(rng.choice([-1.0, 1.0]) * rng.uniform(35, 55))


def _small_pit(rng: np.random.Generator, work: int, out_size: int) -> tuple[np.ndarray, float]:
    """A dark spot 2.5-4 px across, or a cluster of 2-3 tinier ones (2-3 px) within a few px."""
    x, y = _anchor(rng, work, out_size)
    layer = np.zeros((work, work), np.float32)
    if rng.random() < 0.5:
        _stroke(layer, [(x, y)], rng.uniform(2.5, 4.0))
    else:
        for _spot in range(int(rng.integers(2, 4))):
            _stroke(layer, [(x + rng.uniform(-3, 3), y + rng.uniform(-3, 3))], rng.uniform(2.0, 3.0))
    return layer, -float(rng.uniform(40, 65))


def _small_crack(rng: np.random.Generator, work: int, out_size: int) -> tuple[np.ndarray, float]:
    """A short dark branching polyline, about 10-20 px overall, 1-2 px wide."""
    x, y = _anchor(rng, work, out_size)
    heading = rng.uniform(0, 2 * np.pi)
    trunk = [(x, y)]
    for _step in range(int(rng.integers(3, 5))):
        heading += rng.normal(0, 0.5)
        step = rng.uniform(3.0, 4.5)
        trunk.append((trunk[-1][0] + np.cos(heading) * step, trunk[-1][1] + np.sin(heading) * step))
    fork = trunk[int(rng.integers(1, len(trunk) - 1))]
    branch_heading = heading + rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.2)
    branch_length = rng.uniform(4, 8)
    branch = [fork, (fork[0] + np.cos(branch_heading) * branch_length, fork[1] + np.sin(branch_heading) * branch_length)]
    layer = np.zeros((work, work), np.float32)
    width_px = rng.uniform(1.0, 2.0)
    for path in (trunk, branch):
        _stroke(layer, path, width_px)
    return layer, -float(rng.uniform(35, 55))


_SMALL_DEFECTS = {"scratch": _small_scratch, "pit": _small_pit, "crack": _small_crack}


def render_sparse_image(label: str, index: int, seed: int = 0, size_px: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """One deterministic uint8 HxW image of the sparse line and its bool HxW defect mask.

    The mask follows the part through the camera's pose jitter, so it marks where the defect is in
    the image (all False for ``ok``): ground truth for defect size checks and heatmap evaluation.
    """
    rng, work, img = _blank_part(label, index, seed, size_px, SPARSE_CLASS_COUNTS, "sparse")
    layer = np.zeros_like(img)
    if label != "ok":
        layer, contrast = _SMALL_DEFECTS[label](rng, work, size_px)
        img += contrast * layer
    pose = _pose(rng, work)
    mask = _apply_pose(layer, pose, size_px, border=cv2.BORDER_CONSTANT) >= SPARSE_MASK_LEVEL
    return _camera(_apply_pose(img, pose, size_px), rng), mask


def _write_png(path: Path, image: np.ndarray) -> None:
    """One PNG, written atomically (an interrupted run leaves no half file)."""
    ok, png = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert ok, "OpenCV failed to encode a PNG it produced itself"
    write_atomic(path, lambda tmp, data=png: tmp.write_bytes(data.tobytes()))


def _write_line(out_dir: Path, counts: dict[str, int],
                render_part: Callable[[str, int], tuple[np.ndarray, np.ndarray]]) -> None:
    """``out_dir/<class>/<class>_NNNN.png``, and each defective image's mask (uint8, 255 = defect) as
    ``<out_dir>_masks/<class>/<class>_NNNN.png``; ``render_part`` returns the image and its bool mask."""
    for label, n in counts.items():
        for i in range(n):
            image, mask = render_part(label, i)
            _write_png(out_dir / label / f"{label}_{i:04d}.png", image)
            if label != "ok":
                _write_png(masks_dir(out_dir) / label / f"{label}_{i:04d}.png", mask.astype(np.uint8) * 255)


def masks_dir(out_dir: str | Path) -> Path:
    """Where a generated line's defect masks go: ``<out_dir>_masks``, next to the images (the sample
    line's are ``sample_data/sample_line_masks``), with the images' relative layout."""
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + "_masks")


def generate_sample_line(
    out_dir: str | Path,
    counts: dict[str, int] | None = None,
    seed: int = 0,
    size_px: int = 96,
) -> dict[str, int]:
    """Write ``out_dir/<class>/<class>_NNNN.png``, and each defective image's mask (uint8, 255 = defect)
    as ``<out_dir>_masks/<class>/<class>_NNNN.png``; return the count per class."""
    counts = dict(CLASS_COUNTS if counts is None else counts)
    _write_line(Path(out_dir), counts, lambda label, i: render_sample_part(label, i, seed=seed, size_px=size_px))
    return counts


def generate_sparse_line(
    out_dir: str | Path,
    counts: dict[str, int] | None = None,
    seed: int = 0,
    size_px: int = 256,
) -> dict[str, int]:
    """Write the sparse line (90 % good parts, defects a few px across) as ``out_dir/<class>/<class>_NNNN.png``,
    and each defective image's mask as ``<out_dir>_masks/<class>/<class>_NNNN.png`` like the sample line's (uint8,
    255 where the posed stroke covers at least ``SPARSE_MASK_LEVEL`` of the pixel); return the count per class."""
    counts = dict(SPARSE_CLASS_COUNTS if counts is None else counts)
    _write_line(Path(out_dir), counts, lambda label, i: render_sparse_image(label, i, seed=seed, size_px=size_px))
    return counts


@dataclass(frozen=True)
class SampleLine:
    """A synthetic line the kit can make: its generator, default classes and size, and where the
    repository keeps a copy (``None``: made on the fly, never committed)."""

    generate: Callable[..., dict[str, int]]
    class_counts: dict[str, int]
    size_px: int
    committed_dir: str | None


SAMPLE_LINES = {
    "sample": SampleLine(generate_sample_line, CLASS_COUNTS, 96, "sample_data/sample_line"),
    "sparse": SampleLine(generate_sparse_line, SPARSE_CLASS_COUNTS, 256, None),
}


def generate_line(
    line: str,
    out_dir: str | Path | None = None,
    counts: dict[str, int] | None = None,
    seed: int = 0,
    size_px: int | None = None,
) -> dict[str, int]:
    """Generate the synthetic line named ``line`` (see ``SAMPLE_LINES``) at its own size unless
    ``size_px`` is given. Without ``out_dir`` only a committed line has a home: its committed folder."""
    if line not in SAMPLE_LINES:
        raise ArgumentError("line", f"unknown line {line!r}; choose from {', '.join(SAMPLE_LINES)}")
    spec = SAMPLE_LINES[line]
    if out_dir is None:
        if spec.committed_dir is None:
            raise ArgumentError("line", f"the {line!r} line is made on the fly and never committed; name the folder to write it into")
        out_dir = spec.committed_dir
    return spec.generate(out_dir, counts=counts, seed=seed, size_px=spec.size_px if size_px is None else size_px)
