"""Inspection deployment kit: one recipe per camera line -> a small, robust, verified edge model.

The public names load lazily, so ``kit --help`` does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Recipe": "kit.recipe", "load_recipe": "kit.recipe",
    "run_line": "kit.run", "export_bundle": "kit.export",
    "crld_loss": "kit.distill", "kd_loss": "kit.distill",
    "build_view": "kit.views", "list_presets": "kit.views",
    "KitError": "kit.errors", "RecipeError": "kit.errors", "DataError": "kit.errors", "CheckpointError": "kit.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'kit' has no attribute {name!r}")
