"""Named, factory-oriented view presets with one ``severity`` knob (1 = mild ... 5 = harsh).

A line engineer writes ``{lighting: {severity: 3}}`` instead of tuning five albumentations
arguments. Each preset expands into real albumentations transforms; the robustness suite
reuses the same building blocks at fixed severities, so training views and test corruptions
speak one vocabulary.
"""

from __future__ import annotations

from typing import Callable

import albumentations as A
import cv2

PresetFactory = Callable[[int, float], list[A.BasicTransform]]
_PRESETS: dict[str, PresetFactory] = {}
_DESCRIPTIONS: dict[str, str] = {}
MAX_SEVERITY = 5


def register_preset(name: str, description: str) -> Callable[[PresetFactory], PresetFactory]:
    def decorator(factory: PresetFactory) -> PresetFactory:
        if name in _PRESETS:
            raise ValueError(f"view preset {name!r} is registered twice")
        _PRESETS[name] = factory
        _DESCRIPTIONS[name] = description
        return factory

    return decorator


def get_preset(name: str) -> PresetFactory:
    try:
        return _PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown view preset {name!r}; choose from {', '.join(list_presets())}") from None


def list_presets() -> list[str]:
    return sorted(_PRESETS)


def describe_preset(name: str) -> str:
    return _DESCRIPTIONS[name]


@register_preset("lighting", "brightness, contrast and gamma drift; uneven illumination from severity 3")
def lighting(severity: int, p: float) -> list[A.BasicTransform]:
    s = severity
    steps: list[A.BasicTransform] = [
        A.RandomBrightnessContrast(brightness_limit=round(0.07 * s, 3), contrast_limit=round(0.07 * s, 3), p=p),
        A.RandomGamma(gamma_limit=(100 - 7 * s, 100 + 7 * s), p=p),
    ]
    if s >= 3:
        steps.append(A.Illumination(mode="linear", intensity_range=(0.02, round(0.04 * s, 3)), p=p / 2))
    return steps


@register_preset("angle", "camera pose: rotation, shift and scale of the part under the lens")
def angle(severity: int, p: float) -> list[A.BasicTransform]:
    s = severity
    return [
        A.Affine(
            rotate=(-4 * s, 4 * s),
            translate_percent=(round(-0.02 * s, 3), round(0.02 * s, 3)),
            scale=(round(1 - 0.03 * s, 3), round(1 + 0.03 * s, 3)),
            border_mode=cv2.BORDER_REFLECT_101,
            p=p,
        )
    ]


@register_preset("blur", "focus and motion: defocus, motion blur or Gaussian blur")
def blur(severity: int, p: float) -> list[A.BasicTransform]:
    s = severity
    return [
        A.OneOf(
            [
                A.Defocus(radius=(1, 1 + s // 2), alias_blur=(0.1, 0.2), p=1.0),
                A.MotionBlur(blur_limit=(3, 3 + 2 * (s // 2)), p=1.0),
                A.GaussianBlur(blur_limit=0, sigma_limit=(0.2, round(0.3 * s, 3)), p=1.0),
            ],
            p=p,
        )
    ]


@register_preset("noise", "sensor noise: additive Gaussian noise")
def noise(severity: int, p: float) -> list[A.BasicTransform]:
    return [A.GaussNoise(std_range=(0.01, round(0.02 * severity, 3)), p=p)]


@register_preset("compression", "JPEG artefacts from a camera or a frame grabber")
def compression(severity: int, p: float) -> list[A.BasicTransform]:
    s = severity
    return [A.ImageCompression(compression_type="jpeg", quality_range=(max(5, 95 - 18 * s), 100 - 10 * s), p=p)]
