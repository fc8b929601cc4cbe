"""Weak and strong training views: albumentations pipelines built from the recipe."""

from kit.views import defects  # noqa: F401  registers the ``defects`` family
from kit.views.build import apply_view, build_view, list_transforms, photometric_only
from kit.views.presets import get_preset, list_presets, register_preset

__all__ = ["apply_view", "build_view", "get_preset", "list_presets", "list_transforms", "photometric_only", "register_preset"]
