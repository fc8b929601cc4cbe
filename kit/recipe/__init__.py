"""Recipes: one YAML file per camera line."""

from kit.recipe.load import load_recipe, parse_recipe, read_recipe_lock, recipe_hash, write_recipe_lock
from kit.recipe.schema import Recipe

__all__ = ["Recipe", "load_recipe", "parse_recipe", "read_recipe_lock", "recipe_hash", "write_recipe_lock"]
