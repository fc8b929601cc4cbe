"""Turn recipe view lists into albumentations pipelines, rejecting anything unclear.

Each step is a one-key mapping: a preset (``{blur: {severity: 2}}``) or an albumentations
class by name with its keyword arguments (``{MotionBlur: {blur_limit: 7, p: 0.3}}``).
``OneOf``/``SomeOf``/``Sequential`` take a nested ``transforms:`` list. Names are looked up
only among albumentations' own transform classes, so a recipe can never import code.
Albumentations warns and silently repairs some bad arguments; here every such warning is
an error, because a line engineer must get the view they wrote or be told why not.
"""

from __future__ import annotations

import difflib
import inspect
import warnings
from typing import Any

import albumentations as A
import numpy as np

from kit.errors import RecipeError
from kit.views.presets import MAX_SEVERITY, get_preset, list_presets

# Steps that would break the contract "views act on uint8 images of the model's size".
_FORBIDDEN = {"Normalize", "ToTensorV2", "ToTensor3D", "ToFloat", "FromFloat", "Lambda", "ToRGB", "ToGray", "ToSepia"}
_COMPOSES = ("OneOf", "SomeOf", "Sequential")  # compositions a recipe may nest, with a transforms: list
_PRESET_ARGS = {"severity", "p"}
LABEL_CHANGING = "defects"  # kit.views.defects: a view family that makes a defect, never a training view


def _albumentations_transforms() -> dict[str, type]:
    names = {}
    for name in dir(A):
        obj = getattr(A, name)
        if inspect.isclass(obj) and issubclass(obj, A.BasicTransform) and not inspect.isabstract(obj):
            if name not in _FORBIDDEN and not name.startswith("_"):
                names[name] = obj
    for name in _COMPOSES:
        names[name] = getattr(A, name)
    return names


_TRANSFORMS = _albumentations_transforms()


def list_transforms() -> list[str]:
    return sorted(_TRANSFORMS)


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in choices}
        close = [lowered[name.lower()]] if name.lower() in lowered else []
    return f" (did you mean {close[0]}?)" if close else ""


def _build_step(step: Any, where: str) -> list[A.BasicTransform | A.BaseCompose]:
    if not isinstance(step, dict) or len(step) != 1:
        raise RecipeError(f"{where}: each view step is a one-key mapping like {{blur: {{severity: 2}}}} (got {step!r})")
    (name, kwargs), = step.items()
    if kwargs is None:
        kwargs = {}
    if not isinstance(name, str) or not isinstance(kwargs, dict):
        raise RecipeError(f"{where}: arguments of {name!r} must be a mapping (got {kwargs!r})")
    if name == LABEL_CHANGING:
        raise RecipeError(f"{where}: {name} turns a good part into a defective one, so it cannot be a weak or strong "
                          "view (views keep the label); anomaly mode draws it itself: set anomaly.synthetic_defects")
    if name in list_presets():
        return _build_preset(name, kwargs, where)
    if name in _FORBIDDEN:
        raise RecipeError(
            f"{where}: {name} is not allowed in a view; normalisation and tensor conversion come from data: settings"
        )
    if name not in _TRANSFORMS:
        hint = _suggest(name, list_presets() + list_transforms())
        raise RecipeError(f"{where}: unknown transform {name!r}{hint}")
    return [_build_transform(name, dict(kwargs), where)]


def _build_preset(name: str, kwargs: dict[str, Any], where: str) -> list[A.BasicTransform]:
    unknown = set(kwargs) - _PRESET_ARGS
    if unknown:
        bad = sorted(unknown)[0]
        hint = _suggest(bad, sorted(_PRESET_ARGS))
        raise RecipeError(f"{where}: preset {name!r} has no argument {bad!r}{hint}; it takes severity and p")
    severity = kwargs.get("severity", 2)
    p = kwargs.get("p", 0.5)
    if isinstance(severity, bool) or not isinstance(severity, int) or not 1 <= severity <= MAX_SEVERITY:
        raise RecipeError(f"{where}: {name}.severity must be an integer from 1 to {MAX_SEVERITY} (got {severity!r})")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise RecipeError(f"{where}: {name}.p must be a probability between 0 and 1 (got {p!r})")
    return get_preset(name)(severity, float(p))


def _build_transform(name: str, kwargs: dict[str, Any], where: str) -> A.BasicTransform | A.BaseCompose:
    cls = _TRANSFORMS[name]
    params = inspect.signature(cls.__init__).parameters
    known = [n for n in params if n != "self"]
    if name in _COMPOSES:
        nested = kwargs.get("transforms")
        if not isinstance(nested, list) or not nested:
            raise RecipeError(f"{where}: {name} needs a non-empty 'transforms:' list")
        kwargs["transforms"] = [t for i, s in enumerate(nested) for t in _build_step(s, f"{where}.transforms[{i}]")]
    for key in kwargs:
        if key not in known:
            raise RecipeError(f"{where}: {name} has no argument {key!r}{_suggest(key, known)}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            return cls(**kwargs)
        except (ValueError, TypeError, UserWarning) as exc:
            raise RecipeError(f"{where}: bad argument to {name}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    """Albumentations wraps its pydantic ValidationError in a ValueError; show its first error."""
    for candidate in (exc, exc.__cause__):
        errors = getattr(candidate, "errors", None)
        if callable(errors) and errors():
            first = errors()[0]
            loc = ".".join(str(p) for p in first.get("loc", ()))
            msg = first["msg"].removeprefix("Value error, ")
            return f"{loc}: {msg}" if loc else msg
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split(" Range automatically adjusted")[0]


def build_view(steps: list[dict[str, Any]], where: str, image_size_hw: tuple[int, int], num_channels: int) -> A.Compose:
    """Build one view pipeline; it must keep the image's size, channels and dtype."""
    transforms = [t for i, step in enumerate(steps) for t in _build_step(step, f"{where}[{i}]")]
    pipeline = A.Compose(transforms, seed=0)
    probe = np.full((*image_size_hw, num_channels), 128, dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for seed in range(3):
            pipeline.set_random_seed(seed)
            out = pipeline(image=probe)["image"]
            if out.shape != probe.shape or out.dtype != np.uint8:
                raise RecipeError(
                    f"{where}: the view turns a {probe.shape} uint8 image into {out.shape} {out.dtype}; "
                    f"views must keep size and type (use e.g. RandomResizedCrop with size {list(image_size_hw)}: "
                    "data.image_size, or teacher.image_size when set, the size views are drawn at)"
                )
    return pipeline


def apply_view(pipeline: A.Compose, image: np.ndarray, seed: int) -> np.ndarray:
    """Apply a view with its own per-sample seed: the same seed gives the same image in any worker."""
    pipeline.set_random_seed(seed)
    out = pipeline(image=image)["image"]
    return out if out.ndim == 3 else out[:, :, None]


def photometric_only(pipeline: A.Compose) -> A.Compose:
    """The view's steps that change pixel values but not where things are (lighting, blur, noise, compression):
    an anomaly student compares two views location by location, so they must stay aligned. Geometric steps
    (flips, affine, crops) are dropped; a composition keeps its photometric members."""

    def keep(t: Any) -> Any:
        if isinstance(t, A.ImageOnlyTransform):
            return t
        if isinstance(t, A.BaseCompose):
            inner = [k for k in (keep(c) for c in t.transforms) if k is not None]
            if not inner:
                return None
            if isinstance(t, A.OneOf):
                return A.OneOf(inner, p=t.p)
            if isinstance(t, A.SomeOf):
                return A.SomeOf(inner, n=min(t.n, len(inner)), replace=t.replace, p=t.p)
            return A.Sequential(inner, p=t.p)
        return None

    return A.Compose([k for k in (keep(t) for t in pipeline.transforms) if k is not None], seed=0)
