"""The one preprocessing implementation of the kit.

Training-time evaluation, INT8/TensorRT calibration and the edge runtime all call these
functions, driven by a ``PreprocessSpec`` that travels in the bundle manifest, so the
exported model can never see a differently prepared image than the one it was validated on.
Training views (albumentations) act between ``prepare_image`` and ``to_tensor``: on the same
uint8 image the evaluation path sees, before the same normalisation.

Pipeline: ``read_image`` (decode, colour/bit-depth conversion) -> ``prepare_image`` (ROI crop,
resize; uint8 HxWxC) -> ``to_tensor`` (float32 CxHxW, (x/255 - mean) / std).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import cv2
import numpy as np

from deploy.errors import ImageReadError

Channels = Literal["gray", "rgb"]
Interpolation = Literal["area", "linear", "cubic", "nearest"]

_CV2_INTERPOLATION = {
    "area": cv2.INTER_AREA,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "nearest": cv2.INTER_NEAREST,
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


@dataclass(frozen=True)
class PreprocessSpec:
    """How a raw camera image becomes the model's input; serialised into ``model.json``."""

    image_size: tuple[int, int]  # (height_px, width_px)
    channels: Channels = "gray"
    roi: tuple[int, int, int, int] | None = None  # (x, y, width, height) in source pixels
    interpolation: Interpolation = "area"
    mean: tuple[float, ...] = field(default=(0.449,))
    std: tuple[float, ...] = field(default=(0.226,))

    def __post_init__(self) -> None:
        n = self.num_channels
        if len(self.mean) != n or len(self.std) != n:
            raise ValueError(f"mean/std need {n} value(s) for channels={self.channels!r}")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be > 0")

    @property
    def num_channels(self) -> int:
        return 1 if self.channels == "gray" else 3

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        d["roi"] = list(self.roi) if self.roi is not None else None
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["colour_order"] = "gray" if self.channels == "gray" else "RGB"
        d["layout"] = "NCHW"
        d["scale"] = "x / 255"
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessSpec":
        return cls(
            image_size=tuple(d["image_size"]),
            channels=d["channels"],
            roi=tuple(d["roi"]) if d.get("roi") is not None else None,
            interpolation=d.get("interpolation", "area"),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
        )


def read_image(path: str | Path, channels: Channels) -> np.ndarray:
    """Decode an image file into uint8 HxWxC (C = 1 for gray, 3 for RGB).

    16-bit images are scaled to 8 bits, alpha is dropped, colour is converted as asked.
    Decoding goes through ``np.fromfile`` so paths with unicode characters work everywhere.
    """
    path = Path(path)
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    if raw.size == 0:
        raise ImageReadError(f"{path}: file is empty (0 bytes)")
    img = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageReadError(f"{path}: not a decodable image (corrupt, truncated or not an image)")
    return convert_image(img, channels, source=str(path))


def convert_image(img: np.ndarray, channels: Channels, source: str = "image") -> np.ndarray:
    """Bring an OpenCV-decoded array (BGR order, any bit depth) to uint8 HxWxC.

    16 -> 8 bit is ``floor(v / 257 + 0.5)``, done by OpenCV in one pass into a uint8 array (no float copy: a
    float32 copy of a 16-bit RGBA image is 16 bytes a pixel, and the old ``astype(float32) / 257 + 0.5``
    made three). ``tests/test_intake.py`` checks it against that formula for all 65536 values. Alpha is dropped
    by the colour conversion itself (BGRA -> RGB or gray), without a copy of the three colour planes."""
    if img.dtype == np.uint16:
        img = cv2.convertScaleAbs(img, alpha=1.0 / 257.0)  # rounds to nearest; v / 257 is never halfway
    elif img.dtype in (np.float32, np.float64):
        scaled = img * 255.0
        scaled += 0.5
        img = np.clip(scaled, 0, 255, out=scaled).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageReadError(f"{source}: unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        img = img[:, :, None]
    n = img.shape[2]
    if n not in (1, 3, 4):
        raise ImageReadError(f"{source}: unsupported number of channels ({n})")
    if channels == "gray":
        if n > 1:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY if n == 3 else cv2.COLOR_BGRA2GRAY)[:, :, None]
    else:
        img = cv2.cvtColor(img, {1: cv2.COLOR_GRAY2RGB, 3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGB}[n])
    return np.ascontiguousarray(img)


def prepare_image(img: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """ROI crop and resize a uint8 HxWxC image to the model's input size (still uint8)."""
    if spec.roi is not None:
        x, y, w, h = spec.roi
        height, width = img.shape[:2]
        if x < 0 or y < 0 or x + w > width or y + h > height:
            raise ImageReadError(
                f"ROI (x={x}, y={y}, w={w}, h={h}) lies outside the {width}x{height} image"
            )
        img = img[y : y + h, x : x + w]
    out_h, out_w = spec.image_size
    if img.shape[0] != out_h or img.shape[1] != out_w:
        img = cv2.resize(img, (out_w, out_h), interpolation=_CV2_INTERPOLATION[spec.interpolation])
    if img.ndim == 2:
        img = img[:, :, None]
    return np.ascontiguousarray(img)


def to_tensor(img: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 HxWxC (or NxHxWxC) -> normalised float32 CxHxW (or NxCxHxW)."""
    mean = np.asarray(spec.mean, dtype=np.float32) * 255.0
    inv_std = 1.0 / (np.asarray(spec.std, dtype=np.float32) * 255.0)
    x = (img.astype(np.float32) - mean) * inv_std
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def preprocess(img: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Decoded uint8 image -> model input float32 CxHxW."""
    return to_tensor(prepare_image(img, spec), spec)


def preprocess_batch(images: Sequence[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """Decoded uint8 images (any sizes) -> model input float32 NxCxHxW."""
    return to_tensor(np.stack([prepare_image(im, spec) for im in images]), spec)


def load_and_preprocess(path: str | Path, spec: PreprocessSpec) -> np.ndarray:
    return preprocess(read_image(path, spec.channels), spec)
