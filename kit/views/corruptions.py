"""Corruption families of the robustness suite: what real lines do to images, at 5 severities.

Each family is one albumentations pipeline with its random ranges pinned to a single value per
severity (a darker image is 30 % darker, not "up to" 30 %), so severity 4 is always harsher than
severity 3. What stays random (noise pattern, shadow position, blur direction) is drawn from a
per-image seed: every model sees the identical corrupted image, on every run.

A family is *in-recipe* when the recipe's strong view already contains a transform that
produces it, and *held-out* otherwise; the summary keeps the two apart.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable, Iterator

import albumentations as A
import cv2
import numpy as np

from kit.seeds import SEED_CORRUPTION, derive_seed
from kit.views.build import apply_view

GROUPS = ("lighting", "angle", "blur", "sensor")


@dataclass(frozen=True)
class CorruptionFamily:
    name: str
    group: str  # lighting | angle | blur | sensor
    unit: str  # what a severity value means, for the severity table
    severities: tuple[float, float, float, float, float]  # default table, mild to harsh
    build: Callable[[float], list[A.BasicTransform]]  # severity value -> transforms (p = 1)
    covered_by: Callable[[A.BasicTransform], bool]  # does this strong-view transform produce it?


_FAMILIES: dict[str, CorruptionFamily] = {}


def register_corruption(family: CorruptionFamily) -> CorruptionFamily:
    if family.name in _FAMILIES:
        raise ValueError(f"corruption family {family.name!r} is registered twice")
    if family.group not in GROUPS:
        raise ValueError(f"corruption family {family.name!r}: group must be one of {GROUPS}")
    _FAMILIES[family.name] = family
    return family


def get_corruption(name: str) -> CorruptionFamily:
    try:
        return _FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown corruption family {name!r}; choose from {', '.join(list_corruptions())}") from None


def list_corruptions() -> list[str]:
    return list(_FAMILIES)  # registration order: grouped lighting, angle, blur, sensor


def _is(*names: str) -> Callable[[A.BasicTransform], bool]:
    return lambda t: type(t).__name__ in names


def _affine_moves(attr: str) -> Callable[[A.BasicTransform], bool]:
    """Affine covers rotation / shift only when that range is not pinned at zero."""

    def check(t: A.BasicTransform) -> bool:
        name = type(t).__name__
        if name in ("ShiftScaleRotate",):
            return True
        if name in ("Rotate", "SafeRotate"):
            return attr == "rotate"
        if name != "Affine":
            return False
        value = getattr(t, attr, None)
        ranges = value.values() if isinstance(value, dict) else [value] if value is not None else []
        return any(tuple(r) != (0.0, 0.0) for r in ranges)

    return check


_REFLECT = cv2.BORDER_REFLECT_101


def _register_defaults() -> None:
    reg = register_corruption
    reg(CorruptionFamily("darker", "lighting", "brightness drop (fraction of full scale)", (0.1, 0.2, 0.3, 0.4, 0.5),
                         lambda v: [A.RandomBrightnessContrast(brightness_limit=(-v, -v), contrast_limit=(0, 0), p=1)],
                         _is("RandomBrightnessContrast", "ColorJitter")))
    reg(CorruptionFamily("brighter", "lighting", "brightness rise (fraction of full scale)", (0.1, 0.2, 0.3, 0.4, 0.5),
                         lambda v: [A.RandomBrightnessContrast(brightness_limit=(v, v), contrast_limit=(0, 0), p=1)],
                         _is("RandomBrightnessContrast", "ColorJitter")))
    reg(CorruptionFamily("gamma", "lighting", "gamma exponent", (1.25, 1.5, 1.75, 2.0, 2.5),
                         lambda v: [A.RandomGamma(gamma_limit=(100 * v, 100 * v), p=1)],
                         _is("RandomGamma")))
    reg(CorruptionFamily("uneven_illumination", "lighting", "illumination gradient intensity (max 0.2)", (0.04, 0.08, 0.12, 0.16, 0.2),
                         lambda v: [A.Illumination(mode="linear", intensity_range=(v, v), effect_type="both", p=1)],
                         _is("Illumination", "RandomShadow", "PlasmaShadow", "PlasmaBrightnessContrast")))
    reg(CorruptionFamily("shadow", "lighting", "shadow intensity", (0.15, 0.3, 0.45, 0.6, 0.75),
                         lambda v: [A.RandomShadow(shadow_roi=(0, 0, 1, 1), num_shadows_limit=(1, 1), shadow_dimension=5,
                                                   shadow_intensity_range=(v, v), p=1)],
                         _is("RandomShadow", "PlasmaShadow")))
    reg(CorruptionFamily("rotation", "angle", "degrees", (3, 6, 10, 15, 20),
                         lambda v: [A.Affine(rotate=(v, v), border_mode=_REFLECT, p=1)],
                         _affine_moves("rotate")))
    reg(CorruptionFamily("perspective", "angle", "corner displacement (fraction of side)", (0.02, 0.04, 0.06, 0.08, 0.1),
                         lambda v: [A.Perspective(scale=(v, v), keep_size=True, border_mode=_REFLECT, p=1)],
                         _is("Perspective", "ElasticTransform", "GridDistortion", "OpticalDistortion")))
    reg(CorruptionFamily("shift", "angle", "translation (fraction of side)", (0.03, 0.06, 0.09, 0.12, 0.15),
                         lambda v: [A.Affine(translate_percent=(v, v), border_mode=_REFLECT, p=1)],
                         _affine_moves("translate_percent")))
    reg(CorruptionFamily("defocus", "blur", "defocus radius (px)", (1, 2, 3, 4, 6),
                         lambda v: [A.Defocus(radius=(int(v), int(v)), alias_blur=(0.1, 0.1), p=1)],
                         _is("Defocus", "ZoomBlur")))
    reg(CorruptionFamily("motion_blur", "blur", "kernel length (px, odd)", (3, 5, 7, 9, 13),
                         lambda v: [A.MotionBlur(blur_limit=(_odd(v), _odd(v)), allow_shifted=False, p=1)],
                         _is("MotionBlur")))
    reg(CorruptionFamily("gaussian_blur", "blur", "sigma (px)", (0.5, 1.0, 1.5, 2.0, 3.0),
                         lambda v: [A.GaussianBlur(blur_limit=0, sigma_limit=(v, v), p=1)],
                         _is("GaussianBlur", "AdvancedBlur", "Blur", "MedianBlur", "GlassBlur")))
    reg(CorruptionFamily("gaussian_noise", "sensor", "noise std (fraction of full scale)", (0.02, 0.04, 0.06, 0.08, 0.12),
                         lambda v: [A.GaussNoise(std_range=(v, v), p=1)],
                         _is("GaussNoise", "ISONoise", "ShotNoise", "MultiplicativeNoise")))
    reg(CorruptionFamily("jpeg", "sensor", "JPEG quality (lower is harsher)", (60, 40, 25, 15, 8),
                         lambda v: [A.ImageCompression(compression_type="jpeg", quality_range=(int(v), int(v)), p=1)],
                         _is("ImageCompression", "Downscale")))


def _odd(v: float) -> int:
    k = max(3, int(round(v)))
    return k if k % 2 else k + 1


_register_defaults()


def walk_transforms(pipeline: A.BaseCompose) -> Iterator[A.BasicTransform]:
    """Every leaf transform of a pipeline, through OneOf / SomeOf / Sequential."""
    for t in getattr(pipeline, "transforms", []):
        if isinstance(t, A.BaseCompose):
            yield from walk_transforms(t)
        else:
            yield t


def coverage(strong_view: A.BaseCompose, families: list[str]) -> dict[str, str]:
    """family -> ``in-recipe`` when the strong view produces that corruption, else ``held-out``."""
    leaves = [t for t in walk_transforms(strong_view) if t.p > 0]
    return {name: "in-recipe" if any(get_corruption(name).covered_by(t) for t in leaves) else "held-out" for name in families}


def severity_table(family: str, overrides: dict[str, list[float]] | None = None) -> list[float]:
    return list((overrides or {}).get(family, get_corruption(family).severities))


def corruption_pipeline(family: str, value: float) -> A.Compose:
    return A.Compose(get_corruption(family).build(value), seed=0)


def image_seed(run_seed: int, family: str, index: int) -> int:
    """Stable across runs and processes (crc32, not Python's salted ``hash``). The severity is not
    part of it: an image keeps its shadow position, blur direction and noise pattern at every
    severity, so only the magnitude changes from one severity to the next."""
    return derive_seed(run_seed, SEED_CORRUPTION, zlib.crc32(family.encode()), index)


def corrupt_images(images: np.ndarray, family: str, value: float, run_seed: int) -> np.ndarray:
    """uint8 NxHxWxC images -> the same images corrupted at one severity value, image i with its own seed."""
    pipeline = corruption_pipeline(family, value)
    return np.stack([apply_view(pipeline, img, image_seed(run_seed, family, i)) for i, img in enumerate(images)])
