"""Inspection deployment kit: one recipe per camera line -> a small, robust, verified edge model."""

from kit.distill import crld_loss, kd_loss
from kit.errors import CheckpointError, DataError, KitError, RecipeError
from kit.recipe import Recipe, load_recipe
from kit.run import run_line
from kit.views import build_view, list_presets

__all__ = [
    "CheckpointError", "DataError", "KitError", "Recipe", "RecipeError",
    "build_view", "crld_loss", "kd_loss", "list_presets", "load_recipe", "run_line",
]
__version__ = "0.1.0"
