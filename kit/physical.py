"""What a corruption severity is on the line, in physical units a plant manager can check with a camera.

"Severity 3" means nothing on the shop floor; "+77 grey levels" or "a 2 px blur" does. Every figure here is
derived from the transform the robustness suite actually applies (``kit.views.corruptions``) at the image size
the model reads, never from a table of its own:

- lighting families (darker, brighter, gamma, uneven illumination, shadow) run their pinned pipeline on a flat
  mid-grey (128 of 255) image of the model's input size and read what that surface becomes: the grey levels a
  light meter on the part would show changing;
- geometric and blur families turn their pinned value into pixels of the model's input (a shift of 0.06 of the
  side is 4 px of a 64 px image; perspective's corner jitter is a normal draw of that fraction of the side);
- gaussian noise: albumentations' ``std_range`` is a fraction of full scale, so sigma = value x 255 grey levels;
- JPEG: the encoder's quality setting is already the line's own unit.

One definition serves the classifier's report (page one's breaking conditions) and the anomaly report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable

import numpy as np

MID_GREY = 128
FULL_SCALE = 255

# English wording per family; ``{...}`` are the ``PhysicalLevel.values``. The report's Japanese carries the same keys.
TEMPLATES_EN: dict[str, str] = {
    "darker": "−{delta} grey levels (mid-grey 128 → {grey})",
    "brighter": "+{delta} grey levels (mid-grey 128 → {grey})",
    "gamma": "gamma {gamma} (mid-grey 128 → {grey})",
    "uneven_illumination": "uneven light: mid-grey 128 reads {low}–{high} across the part",
    "shadow": "a shadow taking {depth_pct} % of the light (mid-grey 128 → {grey})",
    "rotation": "{degrees}° rotation",
    "perspective": "camera tilt: corners moved by about {px} px (of {side} px)",
    "shift": "part {px} px off position (of {side} px)",
    "defocus": "defocus, blur radius {px} px (of {side} px)",
    "motion_blur": "motion smear over {px} px (of {side} px)",
    "gaussian_blur": "blur, sigma {px} px (of {side} px)",
    "gaussian_noise": "sensor noise, sigma {sigma} grey levels",
    "jpeg": "JPEG quality {quality}",
}


@dataclass(frozen=True)
class PhysicalLevel:
    """One severity of one family, in the line's units: ``values`` fill ``TEMPLATES_EN[family]`` (and the report's
    Japanese template); ``amount`` is the one number that grows with the severity (for sorting and tests)."""

    family: str
    amount: float
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return TEMPLATES_EN[self.family].format(**self.values)


def _flat_response(family: str, value: float, image_size: tuple[int, int]) -> np.ndarray:
    """The family's pinned pipeline on a flat mid-grey image of the model's input size (image seed 0)."""
    from kit.views.corruptions import corrupt_images

    flat = np.full((1, image_size[0], image_size[1], 1), MID_GREY, dtype=np.uint8)
    return corrupt_images(flat, family, value, run_seed=0)[0].astype(np.float64)


def _grey(v: float) -> int:
    return int(round(v))


def _px(v: float) -> str:
    return f"{v:.1f}".removesuffix(".0")


def _lighting(family: str, value: float, size: tuple[int, int]) -> PhysicalLevel:
    out = _flat_response(family, value, size)
    if family == "uneven_illumination":
        low, high = _grey(out.min()), _grey(out.max())
        return PhysicalLevel(family, high - low, {"low": low, "high": high})
    if family == "shadow":  # the shadow is the darkest region; the rest of the part keeps its light
        grey = _grey(out.min())
        return PhysicalLevel(family, MID_GREY - grey, {"depth_pct": _grey(100 * (MID_GREY - grey) / MID_GREY), "grey": grey})
    grey = _grey(out.mean())
    if family == "gamma":
        return PhysicalLevel(family, MID_GREY - grey, {"gamma": f"{value:g}", "grey": grey})
    return PhysicalLevel(family, abs(grey - MID_GREY), {"delta": abs(grey - MID_GREY), "grey": grey})


def _pixels(fraction_of_side: bool) -> Callable[[str, float, tuple[int, int]], PhysicalLevel]:
    def level(family: str, value: float, size: tuple[int, int]) -> PhysicalLevel:
        side = min(size)
        px = value * side if fraction_of_side else float(value)
        return PhysicalLevel(family, px, {"px": _px(px), "side": side})

    return level


def _motion(family: str, value: float, size: tuple[int, int]) -> PhysicalLevel:
    from kit.views.corruptions import _odd  # the kernel length the pipeline really uses (odd, at least 3)

    return PhysicalLevel(family, _odd(value), {"px": _odd(value), "side": min(size)})


_LEVELS: dict[str, Callable[[str, float, tuple[int, int]], PhysicalLevel]] = {
    "darker": _lighting, "brighter": _lighting, "gamma": _lighting, "uneven_illumination": _lighting, "shadow": _lighting,
    "rotation": lambda f, v, s: PhysicalLevel(f, float(v), {"degrees": f"{v:g}"}),
    "perspective": _pixels(True), "shift": _pixels(True),
    "defocus": lambda f, v, s: PhysicalLevel(f, int(v), {"px": int(v), "side": min(s)}),
    "motion_blur": _motion,
    "gaussian_blur": _pixels(False),
    "gaussian_noise": lambda f, v, s: PhysicalLevel(f, v * FULL_SCALE, {"sigma": _px(v * FULL_SCALE)}),
    # lower quality is harsher: the amount grows as the quality falls
    "jpeg": lambda f, v, s: PhysicalLevel(f, 100 - int(v), {"quality": int(v)}),
}


@lru_cache(maxsize=512)
def physical_level(family: str, value: float, image_size: tuple[int, int]) -> PhysicalLevel:
    """``family`` at pinned ``value`` on an image of ``image_size`` (height, width px, the model's input), in the
    line's units. A family registered without a physical reading raises ``KeyError`` naming it."""
    try:
        level = _LEVELS[family]
    except KeyError:
        raise KeyError(f"corruption family {family!r} has no physical reading; add one to kit.physical") from None
    return level(family, float(value), (int(image_size[0]), int(image_size[1])))


def physical_families() -> list[str]:
    return list(_LEVELS)


# -- how far a view preset reaches into a corruption family ------------------------------------------------------

PRESET_OF: dict[str, str] = {  # the view preset (kit.views.presets) that trains each family; None: no preset does
    "darker": "lighting", "brighter": "lighting", "gamma": "lighting", "uneven_illumination": "lighting",
    "rotation": "angle", "shift": "angle", "defocus": "blur", "motion_blur": "blur", "gaussian_blur": "blur",
    "gaussian_noise": "noise", "jpeg": "compression",
}
LOWER_IS_HARSHER = {"jpeg"}

# family -> (transform class, how to read the harshest pinned value that transform can draw)
_REACH: dict[str, tuple[str, Callable[[Any], float]]] = {
    "darker": ("RandomBrightnessContrast", lambda t: -t.brightness_limit[0]),
    "brighter": ("RandomBrightnessContrast", lambda t: t.brightness_limit[1]),
    "gamma": ("RandomGamma", lambda t: t.gamma_limit[1] / 100),
    "uneven_illumination": ("Illumination", lambda t: t.intensity_range[1]),
    "rotation": ("Affine", lambda t: t.rotate[1]),
    "shift": ("Affine", lambda t: t.translate_percent["x"][1]),
    "defocus": ("Defocus", lambda t: t.radius[1]),
    "motion_blur": ("MotionBlur", lambda t: t.blur_limit[1]),
    "gaussian_blur": ("GaussianBlur", lambda t: t.sigma_limit[1]),
    "gaussian_noise": ("GaussNoise", lambda t: t.std_range[1]),
    "jpeg": ("ImageCompression", lambda t: t.quality_range[0]),
}


def preset_reach(family: str, severity: int) -> float | None:
    """The harshest value of ``family`` (in its corruption table's unit) that the family's preset draws at
    ``severity``, read from the transforms the preset really builds; None when no preset trains the family, or this
    severity does not yet (uneven illumination joins ``lighting`` at severity 3)."""
    import albumentations as A

    from kit.views.presets import get_preset

    preset = PRESET_OF.get(family)
    if preset is None:
        return None
    kind, read = _REACH[family]
    stack, leaves = list(get_preset(preset)(int(severity), 1.0)), []
    while stack:
        t = stack.pop()
        stack.extend(t.transforms) if isinstance(t, A.BaseCompose) else leaves.append(t)
    values = [float(read(t)) for t in leaves if type(t).__name__ == kind]
    return (min(values) if family in LOWER_IS_HARSHER else max(values)) if values else None


def covering_severity(family: str, value: float, max_severity: int = 5) -> int | None:
    """The mildest preset severity whose training draws reach ``value`` of ``family``; None beyond the preset's
    harshest severity (or when no preset trains the family): then only the line itself can hold it."""
    for severity in range(1, max_severity + 1):
        reach = preset_reach(family, severity)
        if reach is not None and (reach <= value if family in LOWER_IS_HARSHER else reach >= value - 1e-9):
            return severity
    return None
