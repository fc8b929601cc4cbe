"""Distillation: losses and the method registry.

The public names load lazily: the recipe schema reads the method registry (``kit.distill.methods``)
without importing torch, which the losses need."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "crld_loss": "kit.distill.losses", "kd_loss": "kit.distill.losses", "kd_per_sample": "kit.distill.losses",
    "DistillMethod": "kit.distill.methods", "get_method": "kit.distill.methods", "list_methods": "kit.distill.methods", "register_method": "kit.distill.methods",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
